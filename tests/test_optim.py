"""sparsemb.optim: the sparse rules against torch.optim and float64 references, the SparseAware
wrapper (routing, checkpoints, schedulers, fused backward, GradScaler), clipping, bad input.

Trajectories run sparsemb.Embedding(sparse=True) (coalesced gradients) against
torch.nn.Embedding(sparse=True) (uncoalesced ones). Tests taking the ``backend`` fixture run twice:
on the pure-PyTorch path and on the Triton kernels (under the interpreter on CPU).
"""

import io
import math

import pytest
import torch
from torch import nn

import sparsemb
import sparsemb.optim as so

V, D = 40, 5


def twin_tables(dtype=torch.float32, seed=0, device="cpu"):
    """sparsemb and torch tables with the same initial weight."""
    weight = torch.randn(V, D, generator=torch.Generator().manual_seed(seed)).to(device, dtype)
    ours = sparsemb.Embedding(V, D, sparse=True, _weight=weight.clone())
    theirs = nn.Embedding(V, D, sparse=True, _weight=weight.clone())
    return ours, theirs


def batches(steps, seed=1, shape=(3, 6), device="cpu"):
    """(indices, upstream gradient) per step; every batch repeats an index."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        idx = torch.randint(0, V, shape, generator=gen)
        idx.view(-1)[1] = idx.view(-1)[0]
        out.append((idx.to(device), torch.randn(*shape, D, generator=gen).to(device)))
    return out


def train(table, opt, data):
    for idx, up in data:
        opt.zero_grad()
        (table(idx) * up.to(table.weight.dtype)).sum().backward()
        opt.step()


TORCH_TWINS = {
    "sgd": (lambda p: so.SparseSGD(p, lr=0.05), lambda p: torch.optim.SGD(p, lr=0.05), ()),
    "adagrad": (
        lambda p: so.SparseAdagrad(p, lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1),
        lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1),
        ("sum",),
    ),
    "adam": (
        lambda p: so.SparseAdam(p, lr=0.02, betas=(0.8, 0.99), eps=1e-6),
        lambda p: torch.optim.SparseAdam(p, lr=0.02, betas=(0.8, 0.99), eps=1e-6),
        ("exp_avg", "exp_avg_sq"),
    ),
}


@pytest.mark.parametrize("rule", sorted(TORCH_TWINS))
def test_trajectory_matches_torch(rule, backend):
    make_ours, make_theirs, state_names = TORCH_TWINS[rule]
    ours, theirs = twin_tables(device=backend.device)
    opt_ours, opt_theirs = make_ours(ours.parameters()), make_theirs(theirs.parameters())
    data = batches(20, device=backend.device)
    train(ours, opt_ours, data)
    train(theirs, opt_theirs, data)
    # torch adds the duplicates of its uncoalesced SGD gradient one by one: 1-ulp differences
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-6, atol=1e-6)
    for name in state_names:
        torch.testing.assert_close(
            opt_ours.state[ours.weight][name], opt_theirs.state[theirs.weight][name],
            rtol=1e-6, atol=1e-7,
        )


# ----- float64 references for the rules torch does not have (or has without weight decay)


def reference_step(rule, w, state, rows, g, step, opts):
    """One update of the touched ``rows`` of float64 ``w`` with coalesced gradient ``g``."""
    wr = w[rows]
    if rule in ("sgd", "adagrad", "rowwise_adagrad") and opts.get("weight_decay", 0):
        g = g + opts["weight_decay"] * wr
    if rule == "sgd":
        w[rows] = wr - opts["lr"] * g
    elif rule == "adagrad":
        state["sum"][rows] += g * g
        clr = opts["lr"] / (1 + (step - 1) * opts.get("lr_decay", 0))
        w[rows] = wr - clr * g / (state["sum"][rows].sqrt() + opts["eps"])
    elif rule == "rowwise_adagrad":
        state["sum"][rows] += (g * g).mean(dim=1)
        w[rows] = wr - opts["lr"] * g / (state["sum"][rows].sqrt() + opts["eps"])[:, None]
    elif rule == "adamw":
        b1, b2 = opts["betas"]
        m = state["exp_avg"][rows] = b1 * state["exp_avg"][rows] + (1 - b1) * g
        v = state["exp_avg_sq"][rows] = b2 * state["exp_avg_sq"][rows] + (1 - b2) * g * g
        step_size = opts["lr"] * math.sqrt(1 - b2**step) / (1 - b1**step)
        wr = wr * (1 - opts["lr"] * opts["weight_decay"])
        w[rows] = wr - step_size * m / (v.sqrt() + opts["eps"])


REFERENCE_CASES = {
    "rowwise_adagrad": (so.RowWiseAdagrad, dict(lr=0.1, eps=1e-8), {"sum": (V,)}),
    "rowwise_adagrad_wd": (
        so.RowWiseAdagrad, dict(lr=0.1, eps=1e-8, weight_decay=0.05), {"sum": (V,)}
    ),
    "adamw": (
        so.SparseAdamW, dict(lr=0.02, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.1),
        {"exp_avg": (V, D), "exp_avg_sq": (V, D)},
    ),
    "sgd_wd": (so.SparseSGD, dict(lr=0.05, weight_decay=0.1), {}),
    "adagrad_wd": (
        so.SparseAdagrad, dict(lr=0.1, lr_decay=0.02, weight_decay=0.05, eps=1e-8),
        {"sum": (V, D)},
    ),
}


@pytest.mark.parametrize("case", sorted(REFERENCE_CASES))
def test_trajectory_matches_float64_reference(case):
    cls, opts, state_shapes = REFERENCE_CASES[case]
    rule = case.removesuffix("_wd")
    table, _ = twin_tables()
    opt = cls(table.parameters(), **opts)
    w = table.weight.detach().double().clone()
    state = {name: torch.zeros(shape, dtype=torch.float64) for name, shape in state_shapes.items()}
    for step, (idx, up) in enumerate(batches(20), start=1):
        opt.zero_grad()
        (table(idx) * up).sum().backward()
        opt.step()
        rows = idx.reshape(-1).unique()
        dense = torch.zeros(V, D, dtype=torch.float64).index_add_(
            0, idx.reshape(-1), up.reshape(-1, D).double()
        )
        reference_step(rule, w, state, rows, dense[rows], step, opts)
    torch.testing.assert_close(table.weight.double(), w, rtol=1e-5, atol=1e-6)
    for name in state_shapes:
        torch.testing.assert_close(opt.state[table.weight][name].double(), state[name],
                                   rtol=1e-5, atol=1e-6)


# ----- untouched rows, on both backends (gradients set by hand)

ALL_RULES = {
    "sgd": lambda p: so.SparseSGD(p, lr=0.1, weight_decay=0.1),
    "adagrad": lambda p: so.SparseAdagrad(p, lr=0.1, weight_decay=0.1),
    "rowwise_adagrad": lambda p: so.RowWiseAdagrad(p, lr=0.1, weight_decay=0.1),
    "adam": lambda p: so.SparseAdam(p, lr=0.1),
    "adamw": lambda p: so.SparseAdamW(p, lr=0.1, weight_decay=0.1),
}


def sparse_grad(rows, values, shape=(V, D), coalesced=True):
    rows = torch.as_tensor(rows, device=values.device)
    return torch.sparse_coo_tensor(rows[None], values, shape, is_coalesced=coalesced)


def snapshot(opt, p):
    state = {k: v.clone() for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)}
    return p.detach().clone(), state


@pytest.mark.parametrize("rule", sorted(ALL_RULES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_untouched_rows_are_bit_identical(rule, dtype, backend):
    dev = backend.device
    p = nn.Parameter(torch.randn(V, D).to(dev, dtype))
    opt = ALL_RULES[rule]([p])
    gen = torch.Generator().manual_seed(3)
    p.grad = sparse_grad(range(0, V, 2), torch.randn(V // 2, D, generator=gen).to(dev, dtype))
    opt.step()  # every even row now has non-trivial state
    before_w, before_state = snapshot(opt, p)
    touched = torch.tensor([2, 7, 8, 31], device=dev)
    p.grad = sparse_grad(touched, torch.randn(4, D, generator=gen).to(dev, dtype))
    opt.step()
    untouched = torch.ones(V, dtype=torch.bool, device=dev)
    untouched[touched] = False
    assert torch.equal(p.detach()[untouched], before_w[untouched])
    assert not torch.equal(p.detach()[touched], before_w[touched])
    for name, value in opt.state[p].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value[untouched], before_state[name][untouched]), name
            assert value.dtype == torch.float32  # float32 state for bfloat16 tables too


@pytest.mark.parametrize("rule", sorted(ALL_RULES))
def test_uncoalesced_gradient_equals_coalesced(rule, backend):
    """Duplicate rows in an uncoalesced gradient are summed before the (non-linear) update."""
    a = nn.Parameter(torch.randn(V, D, device=backend.device))
    b = nn.Parameter(a.detach().clone())
    opt_a, opt_b = ALL_RULES[rule]([a]), ALL_RULES[rule]([b])
    values = torch.randn(4, D, device=backend.device)
    a.grad = sparse_grad([5, 1, 5, 9], values, coalesced=False)
    b.grad = sparse_grad([1, 5, 9], torch.stack([values[1], values[0] + values[2], values[3]]))
    opt_a.step()
    opt_b.step()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rule", sorted(ALL_RULES))
def test_empty_gradient_counts_a_step_and_changes_nothing(rule, backend):
    p = nn.Parameter(torch.randn(V, D, device=backend.device))
    opt = ALL_RULES[rule]([p])
    before = p.detach().clone()
    p.grad = sparse_grad(torch.zeros(0, dtype=torch.int64), torch.zeros(0, D, device=p.device))
    opt.step()
    assert torch.equal(p.detach(), before)
    assert opt.state[p]["step"] == 1  # as torch.optim.SparseAdam counts it


# ----- mixed precision and stochastic rounding


def test_bfloat16_table_keeps_float32_state_and_rounds_to_nearest():
    p = nn.Parameter(torch.randn(V, D).to(torch.bfloat16))
    opt = so.SparseAdam([p], lr=0.01)
    values = torch.randn(3, D).to(torch.bfloat16)
    w32 = p.detach().float().clone()
    p.grad = sparse_grad([0, 4, 9], values)
    opt.step()
    g = values.float()
    m, v = 0.1 * g, 0.001 * g * g
    step_size = 0.01 * math.sqrt(1 - 0.999) / (1 - 0.9)
    expected = (w32[[0, 4, 9]] - step_size * m / (v.sqrt() + 1e-8)).to(torch.bfloat16)
    assert opt.state[p]["exp_avg"].dtype == torch.float32
    torch.testing.assert_close(p.detach()[[0, 4, 9]], expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stochastic_rounding_is_unbiased(dtype, backend):
    """Updates below half an ulp: nearest rounding loses them all, stochastic rounding keeps the
    mean within a few standard errors of the exact float64 trajectory."""
    rows, steps = 64, 40
    lr = 1e-3 if dtype == torch.bfloat16 else 1e-4  # below half the ulp under 1.0
    start = torch.ones(rows, 32, dtype=dtype, device=backend.device)
    results = {}
    for stochastic in (False, True):
        p = nn.Parameter(start.clone())
        opt = so.SparseSGD([p], lr=lr, stochastic_rounding=stochastic, seed=1234)
        for _ in range(steps):
            p.grad = sparse_grad(range(rows), torch.ones_like(start), shape=(rows, 32))
            opt.step()
        results[stochastic] = p.detach().double()
    exact = 1.0 - steps * lr
    assert torch.equal(results[False], torch.ones_like(results[False]))  # all updates lost
    sr = results[True].flatten()
    stderr = sr.std().item() / math.sqrt(sr.numel())
    assert stderr > 0
    assert abs(sr.mean().item() - exact) < 4 * stderr + 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stochastic_rounding_picks_one_of_the_two_neighbours(dtype, backend):
    p = nn.Parameter(torch.full((V, D), -1.0, dtype=dtype, device=backend.device))
    lr = 1e-3 if dtype == torch.bfloat16 else 1e-4
    opt = so.SparseSGD([p], lr=lr, stochastic_rounding=True, seed=9)
    p.grad = sparse_grad(range(V), -torch.ones_like(p))  # exact: -1 + lr
    opt.step()
    below_one = 1 - 2.0 ** (-8 if dtype == torch.bfloat16 else -11)
    assert set(p.detach().double().unique().tolist()) == {-1.0, -below_one}


def test_stochastic_rounding_is_reproducible_and_seeded():
    def run(seed):
        p = nn.Parameter(torch.ones(V, D, dtype=torch.bfloat16))
        opt = so.SparseSGD([p], lr=1e-3, stochastic_rounding=True, seed=seed)
        for _ in range(3):
            p.grad = sparse_grad(torch.arange(V), torch.ones(V, D, dtype=torch.bfloat16))
            opt.step()
        return p.detach().clone()

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


# ----- the wrapper


class Model(nn.Module):
    def __init__(self, dtype=torch.float32, device="cpu"):
        super().__init__()
        gen = torch.Generator().manual_seed(7)
        self.emb = sparsemb.Embedding(
            V, D, sparse=True, _weight=torch.randn(V, D, generator=gen).to(dtype)
        )
        self.lin = nn.Linear(D, 1).to(dtype)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(1, D, generator=gen))
            self.lin.bias.zero_()
        self.to(device)

    def forward(self, idx):
        return self.lin(self.emb(idx)).square().mean()


def model_batches(steps, seed=11, device="cpu"):
    return [idx for idx, _ in batches(steps, seed=seed, shape=(4, 5), device=device)]


def run_wrapper(model, opt, data, scaler=None, scheduler=None):
    for idx in data:
        opt.zero_grad()
        loss = model(idx)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        if scheduler is not None:
            scheduler.step()


def test_wrapper_routes_sparse_tables_and_dense_parameters():
    model = nn.ModuleDict({
        "ours": sparsemb.Embedding(V, D, sparse=True),
        "ours_dense": sparsemb.Embedding(V, D),
        "torch_sparse": nn.Embedding(V, D, sparse=True),
        "frozen": sparsemb.Embedding(V, D, sparse=True, _freeze=True),
        "lin": nn.Linear(D, 2),
    })
    opt = so.SparseAware(model, sparse="rowwise_adagrad", dense=torch.optim.SGD, lr=0.1)
    sparse = {id(p) for g in opt.sparse_optimizer.param_groups for p in g["params"]}
    dense = {id(p) for g in opt.dense_optimizer.param_groups for p in g["params"]}
    assert sparse == {id(model["ours"].weight), id(model["torch_sparse"].weight)}
    assert dense == {id(model["ours_dense"].weight), id(model["lin"].weight),
                     id(model["lin"].bias)}
    assert isinstance(opt.sparse_optimizer, so.RowWiseAdagrad)
    assert isinstance(opt.dense_optimizer, torch.optim.SGD)
    assert len(opt.param_groups) == 2 and all(g["lr"] == 0.1 for g in opt.param_groups)
    idx = torch.tensor([[1, 2, 2]])
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    out = sum(model[k](idx).sum() for k in ("ours", "ours_dense", "torch_sparse", "frozen"))
    (out + model["lin"](model["ours"](idx)).sum()).backward()
    opt.step()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) == name.startswith("frozen"), name


@pytest.mark.parametrize("sparse, dtype", [("adam", torch.float32), ("adagrad", torch.bfloat16)])
def test_checkpoint_resume_is_bit_identical(sparse, dtype):
    data = model_batches(10)
    options = {"stochastic_rounding": True, "seed": 3} if dtype == torch.bfloat16 else None
    model = Model(dtype)
    opt = so.SparseAware(model, sparse=sparse, dense=torch.optim.AdamW, lr=0.05,
                         sparse_options=options)
    run_wrapper(model, opt, data[:5])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    run_wrapper(model, opt, data[5:])

    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = Model(dtype)
    resumed.load_state_dict(saved["model"])
    opt2 = so.SparseAware(resumed, sparse=sparse, dense=torch.optim.AdamW, lr=0.05,
                          sparse_options=options)
    opt2.load_state_dict(saved["opt"])
    for state in opt2.sparse_optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                assert value.dtype == torch.float32
    run_wrapper(resumed, opt2, data[5:])
    for (name, a), b in zip(model.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), name
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        for key, value in opt.state[p].items():
            other = opt2.state[q][key]
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), key


def test_load_state_dict_rejects_a_mismatch():
    model = Model()
    opt = so.SparseAware(model, sparse="adam")
    run_wrapper(model, opt, model_batches(1))
    other = so.SparseAware(Model(), sparse="adagrad")
    with pytest.raises(ValueError, match="SparseAdam"):
        other.load_state_dict(opt.state_dict())
    table_only = so.SparseAware(Model().emb, sparse="adam")
    with pytest.raises(ValueError, match="dense part"):
        table_only.load_state_dict(opt.state_dict())


@pytest.mark.parametrize("sparse", ["sgd", "rowwise_adagrad", "adam"])
def test_fused_backward_equals_two_step(sparse, backend):
    data = model_batches(8, device=backend.device)
    two_step, fused = Model(device=backend.device), Model(device=backend.device)
    opt_a = so.SparseAware(two_step, sparse=sparse, lr=0.05)
    opt_b = so.SparseAware(fused, sparse=sparse, lr=0.05, fused_backward=True)
    sched_a = torch.optim.lr_scheduler.StepLR(opt_a, step_size=3, gamma=0.5)
    sched_b = torch.optim.lr_scheduler.StepLR(opt_b, step_size=3, gamma=0.5)
    run_wrapper(two_step, opt_a, data, scheduler=sched_a)
    for idx in data:
        opt_b.zero_grad()
        fused(idx).backward()
        assert fused.emb.weight.grad is None  # no gradient materialized
        assert fused.lin.weight.grad is not None
        opt_b.step()
        sched_b.step()
    for a, b in zip(two_step.parameters(), fused.parameters(), strict=True):
        assert torch.equal(a, b)
    opt_b.sparse_optimizer.disable_fused_backward()
    fused(data[0]).backward()
    assert fused.emb.weight.grad is not None and fused.emb.weight.grad.is_sparse


def test_lr_scheduler_drives_both_sides():
    model = Model()
    opt = so.SparseAware(model, sparse="sgd", dense=torch.optim.SGD, lr=0.4)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.25)
    idx = torch.tensor([[3, 3, 8]])
    run_wrapper(model, opt, [idx], scheduler=scheduler)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1]
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    model(idx).backward()
    grads = [p.grad.to_dense().clone() for p in model.parameters()]
    opt.step()
    for p, b, g in zip(model.parameters(), before, grads, strict=True):
        torch.testing.assert_close(p.detach(), b - 0.1 * g, rtol=1e-6, atol=1e-7)


def test_grad_scaler_unscales_sparse_gradients_and_skips_inf_steps():
    data = model_batches(6)
    plain, scaled = Model(), Model()
    opt_a = so.SparseAware(plain, sparse="adam", lr=0.05)
    opt_b = so.SparseAware(scaled, sparse="adam", lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    run_wrapper(plain, opt_a, data)
    run_wrapper(scaled, opt_b, data, scaler=scaler)
    for a, b in zip(plain.parameters(), scaled.parameters(), strict=True):
        assert torch.equal(a, b)  # power-of-two scaling is exact

    before_w = [p.detach().clone() for p in scaled.parameters()]
    before_state = snapshot(opt_b.sparse_optimizer, scaled.emb.weight)[1]
    opt_b.zero_grad()
    scaler.scale(scaled(data[0])).backward()
    scaled.emb.weight.grad._values()[0, 0] = float("inf")
    scaler.step(opt_b)
    scaler.update()
    assert scaler.get_scale() == 2.0**9
    for p, b in zip(scaled.parameters(), before_w, strict=True):
        assert torch.equal(p, b)
    for name, value in snapshot(opt_b.sparse_optimizer, scaled.emb.weight)[1].items():
        assert torch.equal(value, before_state[name])


# ----- clipping


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_torch_on_dense_twins(norm_type, max_norm):
    idx = torch.tensor([[1, 4, 4, 9], [2, 2, 30, 4]])

    def build(sparse):
        torch.manual_seed(0)
        return nn.ModuleDict({
            "ours": sparsemb.Embedding(V, D, sparse=sparse),
            "theirs": nn.Embedding(V, D, sparse=sparse),
            "lin": nn.Linear(D, 3),
        })

    def backward(m):
        out = m["lin"](m["ours"](idx) + m["theirs"](idx)).square().sum()
        out.backward()

    sparse, dense = build(True), build(False)
    backward(sparse)
    backward(dense)
    assert not sparse["theirs"].weight.grad.is_coalesced()  # torch's own, uncoalesced
    total = so.clip_grad_norm_(sparse.parameters(), max_norm, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(dense.parameters(), max_norm, norm_type)
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=0)
    for (name, p), q in zip(sparse.named_parameters(), dense.parameters(), strict=True):
        torch.testing.assert_close(p.grad.to_dense(), q.grad, rtol=1e-6, atol=1e-7, msg=name)


def test_clip_grad_norm_nonfinite():
    p = nn.Parameter(torch.zeros(V, D))
    p.grad = sparse_grad([1], torch.full((1, D), float("inf")))
    with pytest.raises(RuntimeError, match="non-finite"):
        so.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    assert math.isinf(so.clip_grad_norm_([p], 1.0).item())


# ----- bad input: a clear exception, nothing written


@pytest.mark.parametrize(
    "make",
    [
        lambda p: so.SparseAdam(p, lr=-1.0),
        lambda p: so.SparseAdam(p, lr=float("nan")),
        lambda p: so.SparseAdam(p, lr="0.1"),
        lambda p: so.SparseAdam(p, eps=-1e-8),
        lambda p: so.SparseAdam(p, betas=(1.0, 0.9)),
        lambda p: so.SparseAdam(p, betas=(0.9,)),
        lambda p: so.SparseAdamW(p, weight_decay=-0.1),
        lambda p: so.SparseSGD(p, lr=0.1, weight_decay=-1),
        lambda p: so.SparseAdagrad(p, lr_decay=-1),
        lambda p: so.SparseAdagrad(p, initial_accumulator_value=-1),
        lambda p: so.RowWiseAdagrad(p, eps=-1),
        lambda p: so.SparseSGD(p, lr=0.1, stochastic_rounding="yes"),
        lambda p: so.SparseSGD(p, lr=0.1, seed=1.5),
        lambda p: so.SparseSGD([{"params": p, "lr": -3}], lr=0.1),
    ],
)
def test_bad_options_raise_at_construction(make):
    with pytest.raises(ValueError):
        make([nn.Parameter(torch.zeros(V, D))])


@pytest.mark.parametrize("tensor", [torch.zeros(V), torch.zeros(V, D, dtype=torch.int64),
                                    torch.zeros(2, V, D)])
def test_non_table_parameter_is_rejected(tensor):
    with pytest.raises(ValueError, match="2-D floating-point"):
        so.SparseSGD([tensor], lr=0.1)


def test_dense_gradient_raises_naming_the_parameter_and_touches_nothing(backend):
    good = nn.Parameter(torch.randn(V, D, device=backend.device))
    bad = nn.Parameter(torch.randn(V, D, device=backend.device))
    opt = so.SparseAdam([("tables.good", good), ("tables.bad", bad)], lr=0.1)
    good.grad = sparse_grad([1, 2], torch.randn(2, D, device=backend.device))
    opt.step()
    before = snapshot(opt, good)
    good.grad = sparse_grad([2, 3], torch.randn(2, D, device=backend.device))
    bad.grad = torch.randn_like(bad)
    bad_before = bad.detach().clone()
    with pytest.raises(ValueError, match="dense gradient for 'tables.bad'"):
        opt.step()
    assert torch.equal(good, before[0]) and torch.equal(bad, bad_before)
    for name, value in before[1].items():
        assert torch.equal(opt.state[good][name], value)
    assert opt.state[good]["step"] == 1 and bad not in opt.state


def test_state_on_another_device_raises_and_touches_nothing():
    p = nn.Parameter(torch.randn(V, D))
    opt = so.SparseAdam([p], lr=0.1)
    p.grad = sparse_grad([1, 2], torch.randn(2, D))
    opt.step()
    opt.state[p]["exp_avg_sq"] = opt.state[p]["exp_avg_sq"].to("meta")
    before_w, before_m = p.detach().clone(), opt.state[p]["exp_avg"].clone()
    with pytest.raises(ValueError, match="exp_avg_sq.*is on meta"):
        opt.step()
    assert torch.equal(p, before_w) and torch.equal(opt.state[p]["exp_avg"], before_m)
    assert opt.state[p]["step"] == 1


def test_gradient_of_the_wrong_kind_raises():
    p = nn.Parameter(torch.randn(V, D))
    opt = so.SparseSGD([p], lr=0.1)
    p.grad = torch.sparse_coo_tensor(torch.tensor([[1], [2]]), torch.ones(1), (V, D))
    with pytest.raises(ValueError, match="1 sparse dim"):
        opt.step()
    with pytest.raises(ValueError, match="do not match"):
        opt.fused_update(p, torch.tensor([1, 2]), torch.ones(3, D))


def test_wrapper_bad_input():
    model = Model()
    with pytest.raises(ValueError, match="sparse must be one of"):
        so.SparseAware(model, sparse="lamb")
    with pytest.raises(ValueError, match="fused_backward"):
        so.SparseAware(model, sparse=torch.optim.SparseAdam, fused_backward=True)
    with pytest.raises(ValueError, match="lr"):
        so.SparseAware(model, lr=-1.0)
    # a sparse-gradient table put on the dense side: caught before either side writes
    table = nn.Embedding(V, D, sparse=True)
    lin = nn.Linear(D, 1)
    opt = so.SparseAware([table.weight, *lin.parameters()], dense=torch.optim.SGD, lr=0.1)
    lin(table(torch.tensor([1, 2]))).sum().backward()
    before = [p.detach().clone() for p in (table.weight, *lin.parameters())]
    with pytest.raises(ValueError, match="sparse gradient but is on the dense side"):
        opt.step()
    for p, b in zip((table.weight, *lin.parameters()), before, strict=True):
        assert torch.equal(p, b)


def test_wrapper_with_param_groups_and_a_torch_sparse_rule():
    table = nn.Embedding(V, D, sparse=True)
    lin = nn.Linear(D, 1)
    opt = so.SparseAware(
        [{"params": [table.weight], "sparse": True, "lr": 0.01}, {"params": lin.parameters()}],
        sparse=torch.optim.SparseAdam, dense=torch.optim.SGD, lr=0.1,
    )
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.1]
    lin(table(torch.tensor([1, 2, 2]))).sum().backward()
    opt.step()
    assert opt.state[table.weight]["step"] == 1
    extra = nn.Parameter(torch.randn(V, D))
    opt.add_param_group({"params": [extra], "sparse": True})
    assert any(extra is p for p in opt.sparse_optimizer.param_groups[-1]["params"])


# ----- the CPU rules run in cache-sized blocks of rows: blocking must not change a bit


@pytest.mark.parametrize("rule", sorted(ALL_RULES))
@pytest.mark.parametrize(
    "dtype, sr", [(torch.float32, False), (torch.float64, False), (torch.bfloat16, True)]
)
def test_cpu_rules_in_row_blocks_equal_one_block(rule, dtype, sr, monkeypatch):
    from sparsemb.torch_backend import optim as torch_rules

    def run(block_elements):
        monkeypatch.setattr(torch_rules, "_BLOCK_ELEMENTS", block_elements)
        gen = torch.Generator().manual_seed(11)
        p = nn.Parameter(torch.randn(V, D, generator=gen).to(dtype))
        opt = ALL_RULES[rule]([p])
        if sr:
            opt = type(opt)([p], **{**opt.defaults, "stochastic_rounding": True, "seed": 3})
        for _ in range(3):
            rows = torch.randperm(V, generator=gen)[:25].sort().values
            p.grad = sparse_grad(rows, torch.randn(25, D, generator=gen).to(dtype))
            opt.step()
        return [p.detach()] + [v for v in opt.state[p].values() if isinstance(v, torch.Tensor)]

    whole = run(1 << 30)
    for block_elements in (1, 2 * D):  # one row per block (per thread); a few rows per block
        for a, b in zip(run(block_elements), whole, strict=True):
            assert torch.equal(a, b)
