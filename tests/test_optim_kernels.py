"""The fused optimizer kernels (``sparsemb.kernels.optim``) against the pure-PyTorch rules.

Every test takes the ``triton_backend`` fixture: the tensors live on the GPU where there is one,
else on CPU under Triton's interpreter (conftest sets TRITON_INTERPRET). Each launcher is called
with the same arguments as its ``sparsemb.torch_backend.optim`` twin (run on the same device);
the optimizers are then driven end to end with SPARSEMB_BACKEND=triton against torch.optim.
"""

import pytest
import torch
from torch import nn

import sparsemb.optim as so
from sparsemb._backend import kernel_module
from sparsemb.torch_backend import optim as rules

# (weight tolerance, state tolerance) as (rtol, atol): float32 differs from the CPU rule by an
# ulp where torch fuses a multiply-add; a 16-bit table can then round the other way (one ulp)
TOLERANCES = {
    torch.float32: ((1e-6, 1e-6), (1e-6, 1e-6)),
    torch.bfloat16: ((2**-7, 1e-6), (1e-6, 1e-6)),
    torch.float16: ((2**-10, 1e-6), (1e-6, 1e-6)),
}

V = 37


def case(rule, dim, device, seed=0):
    """(float32 state tensors, keyword scalars) of one rule on a V x dim table."""
    gen = torch.Generator().manual_seed(seed)
    if rule == "sgd":
        return (), dict(neg_lr=-0.1, weight_decay=0.05)
    if rule == "adagrad":
        states = (torch.rand(V, dim, generator=gen),)
        scalars = dict(neg_clr=-0.1, eps=1e-10, weight_decay=0.05)
    elif rule == "rowwise_adagrad":
        states = (torch.rand(V, generator=gen),)
        scalars = dict(neg_lr=-0.1, eps=1e-10, weight_decay=0.05)
    else:
        states = (torch.randn(V, dim, generator=gen), torch.rand(V, dim, generator=gen))
        scalars = dict(one_minus_beta1=0.1, one_minus_beta2=0.001, eps=1e-8,
                       neg_step_size=-0.01, decay=0.999)  # fmt: skip
    return tuple(x.to(device) for x in states), scalars


RULES = ["sgd", "adagrad", "rowwise_adagrad", "adam"]


def run_both(rule, weight, rows, values, states, scalars, sr_seed=None):
    """(weight, states) after the CPU rule and after the kernel, from copies of the inputs."""
    kernels = kernel_module("optim")
    out = []
    for module in (rules, kernels):
        w = weight.clone()
        s = [x.clone() for x in states]
        getattr(module, f"{rule}_update_")(w, rows, values, *s, sr_seed=sr_seed, **scalars)
        out.append((w, s))
    return out


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [1, 3, 17])
def test_kernel_matches_rule(rule, dtype, dim, triton_backend):
    dev = triton_backend.device
    gen = torch.Generator().manual_seed(dim)
    weight = torch.randn(V, dim, generator=gen).to(dev, dtype)
    rows = torch.tensor([0, 3, 4, 5, 11, 20, 36], device=dev)  # unique, as when coalesced
    values = torch.randn(rows.numel(), dim, generator=gen).to(dev, dtype)
    states, scalars = case(rule, dim, dev)
    (w_ref, s_ref), (w_ker, s_ker) = run_both(rule, weight, rows, values, states, scalars)
    (w_tol, s_tol) = TOLERANCES[dtype]
    torch.testing.assert_close(w_ker, w_ref, rtol=w_tol[0], atol=w_tol[1])
    for a, b in zip(s_ker, s_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=s_tol[0], atol=s_tol[1])
    untouched = torch.ones(V, dtype=torch.bool, device=dev)
    untouched[rows] = False
    assert torch.equal(w_ker[untouched], weight[untouched])
    for a, b in zip(s_ker, states, strict=True):
        assert torch.equal(a[untouched], b[untouched])


@pytest.mark.parametrize("rule", RULES)
def test_kernel_strided_inputs_and_dim_past_one_block(rule, triton_backend):
    """A weight that is a column slice of a wider tensor, transposed gradient values, and a dim
    above MAX_BLOCK_D (several chunks; row-wise Adagrad's two-pass path)."""
    dev = triton_backend.device
    kernels = kernel_module("optim")
    dim = kernels.MAX_BLOCK_D + 5
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(V, dim + 3, generator=gen).to(dev)
    rows = torch.tensor([2, 9, 30], device=dev)
    values = torch.randn(dim, 3, generator=gen).to(dev).t()  # non-contiguous (3, dim)
    states, scalars = case(rule, dim, dev)
    results = []
    for module in (rules, kernels):
        table = base.clone()
        s = [x.clone() for x in states]
        getattr(module, f"{rule}_update_")(table[:, :dim], rows, values, *s, sr_seed=None,
                                           **scalars)
        results.append((table, s))
    (t_ref, s_ref), (t_ker, s_ker) = results
    torch.testing.assert_close(t_ker, t_ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(t_ker[:, dim:], base[:, dim:])  # the columns past the view untouched
    for a, b in zip(s_ker, s_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_nearest_rounding_matches_torch_cast(dtype, triton_backend):
    """The kernel's float32 -> 16-bit rounding is round-to-nearest-even (the interpreter's own
    bfloat16 cast truncates; the kernel rounds on the bit pattern)."""
    gen = torch.Generator().manual_seed(2)
    values = torch.randn(V, 64, generator=gen) * 3
    values[0, :4] = torch.tensor([1.00390625, 1.01171875, 1.9999999, -3.99999])  # ties, carries
    values[1, :3] = torch.tensor([float("inf"), float("-inf"), float("nan")])
    values = values.to(triton_backend.device)
    weight = torch.zeros(V, 64, dtype=dtype, device=values.device)
    rows = torch.arange(V, device=values.device)
    kernel_module("optim").sgd_update_(weight, rows, values, neg_lr=-1.0, weight_decay=0.0,
                                       sr_seed=None)
    expected = (-values).to(dtype)
    assert torch.equal(weight.isnan(), expected.isnan())
    assert torch.equal(weight.nan_to_num(), expected.nan_to_num())


def test_kernel_stochastic_rounding_is_exact_for_representable_values(triton_backend):
    dev = triton_backend.device
    weight = torch.zeros(V, 8, dtype=torch.bfloat16, device=dev)
    values = torch.full((V, 8), 0.5, device=dev)
    kernel_module("optim").sgd_update_(weight, torch.arange(V, device=dev), values, neg_lr=-1.0,
                                       weight_decay=0.0, sr_seed=5)
    assert torch.equal(weight, torch.full_like(weight, -0.5))


# ----- the optimizers on the kernels, end to end


TWINS = {
    "sgd": (lambda p: so.SparseSGD(p, lr=0.05), lambda p: torch.optim.SGD(p, lr=0.05)),
    "adagrad": (
        lambda p: so.SparseAdagrad(p, lr=0.1, lr_decay=0.01),
        lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0.01),
    ),
    "adam": (lambda p: so.SparseAdam(p, lr=0.02), lambda p: torch.optim.SparseAdam(p, lr=0.02)),
}


@pytest.mark.parametrize("rule", sorted(TWINS))
def test_optimizer_on_kernels_matches_torch(rule, triton_backend, monkeypatch):
    """20 steps with SPARSEMB_BACKEND=triton; gradients from torch's nn.Embedding (uncoalesced,
    with duplicates), the same data for both sides."""
    dev = triton_backend.device
    kernels = kernel_module("optim")
    calls = []
    launcher = f"{'adam' if rule == 'adam' else rule}_update_"
    original = getattr(kernels, launcher)
    monkeypatch.setattr(kernels, launcher, lambda *a, **k: calls.append(1) or original(*a, **k))
    make_ours, make_theirs = TWINS[rule]
    init = torch.randn(V, 6, generator=torch.Generator().manual_seed(0))
    ours, theirs = (nn.Embedding(V, 6, sparse=True, _weight=init.clone().to(dev)) for _ in "ab")
    opt_ours, opt_theirs = make_ours(ours.parameters()), make_theirs(theirs.parameters())
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        idx = torch.randint(0, V, (12,), generator=gen)
        idx[1] = idx[0]
        idx, up = idx.to(dev), torch.randn(12, 6, generator=gen).to(dev)
        for table, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            (table(idx) * up).sum().backward()
            opt.step()
    assert len(calls) == 20
    assert not torch.equal(ours.weight.cpu(), init)
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-6, atol=1e-6)


def test_fused_update_on_kernels_equals_step(triton_backend):
    """The fused-backward entry point (deduplicated rows and values) on the kernels, bfloat16
    table with float32 state, against the two-step path."""
    dev = triton_backend.device
    a = nn.Parameter(torch.randn(V, 17).to(dev, torch.bfloat16))
    b = nn.Parameter(a.detach().clone())
    opt_a, opt_b = so.SparseAdamW([a], lr=0.05), so.SparseAdamW([b], lr=0.05)
    gen = torch.Generator().manual_seed(4)
    for _ in range(5):
        rows = torch.randperm(V, generator=gen)[:9].sort().values.to(dev)
        values = torch.randn(9, 17, generator=gen).to(dev, torch.bfloat16)
        a.grad = torch.sparse_coo_tensor(rows[None], values, (V, 17), is_coalesced=True)
        opt_a.step()
        opt_b.fused_update(b, rows, values)
    assert torch.equal(a, b)
    assert opt_b.state[b]["exp_avg"].dtype == torch.float32
    assert torch.equal(opt_a.state[a]["exp_avg_sq"], opt_b.state[b]["exp_avg_sq"])
