"""sparsemb.EmbeddingBag / embedding_bag against torch.nn.EmbeddingBag, the oracle, on both
backends (the Triton kernels under the interpreter on CPU).

Random configurations (mode x layout x padding x per_sample_weights x max_norm x dtypes x index
layouts) print their seed; 16-bit tables are compared with torch run on a float32 copy and
rounded once, since sparsemb pools and sums gradients in float32 (float32_grad_accumulation).
Each side gets its own clones.
"""

import random

import pytest
import torch
import torch.nn.functional as F

import sparsemb
from helpers import TOLERANCES, dense

SEEDS = range(24)
MODES = ["sum", "mean", "max"]


def random_config(seed):
    """One random pooled lookup: (description, call arguments, table dtype)."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    num_rows, dim = rng.choice([7, 30]), rng.choice([1, 3, 17, 130])
    mode = rng.choice(MODES)
    layout = rng.choice(["2d", "offsets", "last_offset"])
    dtype = rng.choice([torch.float32, torch.float32, torch.float64, torch.bfloat16])
    index_dtype = rng.choice([torch.int64, torch.int32])
    kwargs = {
        "mode": mode,
        "padding_idx": rng.choice([None, 0, -1, 2]),
        "max_norm": rng.choice([None, None, 1.5]),
        "sparse": rng.random() < 0.5 and mode != "max",
    }
    if layout == "2d":
        indices = torch.randint(0, num_rows, (rng.randint(0, 5), rng.randint(1, 6)), generator=g)
        offsets = None
    else:
        n = rng.randint(0, 25)
        indices = torch.randint(0, num_rows, (n,), generator=g)
        cuts = sorted(rng.randint(0, n) for _ in range(rng.randint(0, 6)))  # empty bags too
        offsets = torch.tensor([0, *cuts], dtype=rng.choice([torch.int64, torch.int32]))
        if layout == "last_offset":
            offsets = torch.cat([offsets, offsets.new_tensor([n])])
            kwargs["include_last_offset"] = True
    if mode == "sum" and rng.random() < 0.5:
        kwargs["per_sample_weights"] = torch.randn(indices.shape, generator=g).to(dtype)
    weight = torch.randn(num_rows, dim, generator=g).to(dtype)
    desc = f"seed={seed} V={num_rows} D={dim} {layout} {dtype} {index_dtype} {kwargs}"
    return desc, weight, indices.to(index_dtype), offsets, kwargs


def run_bag(fn, weight, indices, offsets, kwargs, grad_seed, device):
    """(output, weight after, weight grad, per_sample_weights grad) on this side's clones."""
    weight = weight.detach().clone().to(device).requires_grad_()
    kwargs = dict(kwargs)
    psw = kwargs.get("per_sample_weights")
    if psw is not None:
        kwargs["per_sample_weights"] = psw.detach().clone().to(device).requires_grad_()
    offs = None if offsets is None else offsets.clone().to(device)
    out = fn(indices.clone().to(device), weight, offs, **kwargs)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed))
    out.backward(grad.to(out.dtype).to(device))
    psw_grad = None if psw is None else kwargs["per_sample_weights"].grad
    return out.detach(), weight.detach(), dense(weight.grad), psw_grad


@pytest.mark.parametrize("seed", SEEDS)
def test_random_configurations_match_torch(backend, seed):
    desc, weight, indices, offsets, kwargs = random_config(seed)
    print(desc)
    ours = run_bag(sparsemb.embedding_bag, weight, indices, offsets, kwargs, seed, backend.device)
    dtype = weight.dtype
    oracle_kwargs = dict(kwargs)
    if dtype in (torch.bfloat16, torch.float16):  # torch in float32, rounded once
        weight = weight.float()
        if "per_sample_weights" in kwargs:
            oracle_kwargs["per_sample_weights"] = kwargs["per_sample_weights"].float()
    theirs = run_bag(F.embedding_bag, weight, indices, offsets, oracle_kwargs, seed, "cpu")
    atol, rtol = TOLERANCES[dtype]
    if dtype == torch.bfloat16:  # a bag sums rows rounded from float32: a few ulps of the sum
        atol, rtol = 3e-2, 3e-2
    names = ("output", "weight", "weight grad", "psw grad")
    for name, a, b in zip(names, ours, theirs, strict=True):
        if b is None:
            assert a is None, f"{desc}: {name}"
            continue
        torch.testing.assert_close(
            a.cpu(), b.to(dtype), atol=atol, rtol=rtol, msg=lambda m, n=name: f"{desc}: {n}\n{m}"
        )


@pytest.mark.parametrize("mode", MODES)
def test_module_matches_torch_module(backend, mode):
    torch.manual_seed(0)
    ours = sparsemb.EmbeddingBag(40, 6, mode=mode, padding_idx=3).to(backend.device)
    theirs = torch.nn.EmbeddingBag(40, 6, mode=mode, padding_idx=3).to(backend.device)
    theirs.load_state_dict(ours.state_dict())
    idx = torch.randint(0, 40, (30,), generator=torch.Generator().manual_seed(1))
    idx[::4] = 3
    offsets = torch.tensor([0, 0, 5, 11, 30])
    outs = [
        table(idx.clone().to(backend.device), offsets.clone().to(backend.device))
        for table in (ours, theirs)
    ]
    torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=1e-5)
    grad = torch.randn(outs[0].shape, generator=torch.Generator().manual_seed(2))
    for out in outs:
        out.backward(grad.to(backend.device))
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, atol=1e-6, rtol=1e-5)
    assert isinstance(ours, torch.nn.EmbeddingBag)
    assert repr(ours) == repr(theirs).replace("torch.nn", "sparsemb")


def test_max_ties_send_the_gradient_to_the_first_row(backend):
    """Integer-valued rows tie often: the arg-max (and so the gradient) must be torch's."""
    weight = torch.randint(-2, 3, (6, 5)).float()
    idx = torch.tensor([1, 2, 3, 1, 4, 5, 0, 0, 2])
    offsets = torch.tensor([0, 4, 4, 7])
    ours = run_bag(sparsemb.embedding_bag, weight, idx, offsets, {"mode": "max"}, 0, backend.device)
    theirs = run_bag(F.embedding_bag, weight, idx, offsets, {"mode": "max"}, 0, "cpu")
    for a, b in zip(ours[:3], theirs[:3], strict=True):
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=0)


@pytest.mark.parametrize("padding_idx", [None, 2])
def test_max_mode_with_sparse_gradient(backend, padding_idx):
    """Beyond torch (which refuses it): max mode's sparse gradient equals torch's dense one."""
    weight = torch.randn(20, 4, generator=torch.Generator().manual_seed(3))
    idx = torch.randint(0, 20, (4, 6), generator=torch.Generator().manual_seed(4))
    kwargs = {"mode": "max", "padding_idx": padding_idx}
    table = weight.clone().to(backend.device).requires_grad_()
    out = sparsemb.embedding_bag(idx.to(backend.device), table, sparse=True, **kwargs)
    out.sum().backward()
    assert table.grad.is_sparse and table.grad.is_coalesced()
    expected = run_bag(F.embedding_bag, weight, idx, None, kwargs, 0, "cpu")
    torch_out = weight.clone().requires_grad_()
    F.embedding_bag(idx, torch_out, **kwargs).sum().backward()
    torch.testing.assert_close(dense(table.grad).cpu(), torch_out.grad, rtol=0, atol=0)
    torch.testing.assert_close(out.detach().cpu(), expected[0], rtol=0, atol=0)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(5)
    weight = torch.randn(9, 3, dtype=torch.float64, generator=g, requires_grad=True)
    psw = torch.randn(8, dtype=torch.float64, generator=g, requires_grad=True)
    idx = torch.tensor([1, 2, 2, 8, 0, 4, 4, 3])
    offsets = torch.tensor([0, 3, 3, 6])
    for mode in MODES:
        def pooled(w, mode=mode):
            return sparsemb.embedding_bag(idx, w, offsets, mode=mode, padding_idx=4)

        assert torch.autograd.gradcheck(pooled, (weight,))

    def weighted(w, p):
        return sparsemb.embedding_bag(idx, w, offsets, mode="sum", per_sample_weights=p)

    assert torch.autograd.gradcheck(weighted, (weight, psw))


# ----- bad input: a clear exception, and nothing written


BAD_OFFSETS = [
    (torch.tensor([1, 3]), {}, ValueError),  # does not start at 0
    (torch.tensor([0, 4, 2]), {}, ValueError),  # decreasing
    (torch.tensor([0, 9]), {}, ValueError),  # past the input's end
    (torch.tensor([0.0, 2.0]), {}, TypeError),  # not integers
    (torch.tensor([[0, 2]]), {}, ValueError),  # not 1-D
    (torch.tensor([], dtype=torch.int64), {"include_last_offset": True}, ValueError),
    (torch.tensor([0, 2]), {"include_last_offset": True}, ValueError),  # a tail after the end
]


@pytest.mark.parametrize("offsets, extra, error", BAD_OFFSETS)
def test_bad_offsets_raise_before_the_renorm(backend, offsets, extra, error):
    weight = torch.full((10, 3), 5.0, device=backend.device)
    before = weight.clone()
    idx = torch.tensor([1, 2, 3, 4, 5], device=backend.device)
    with pytest.raises(error):
        sparsemb.embedding_bag(idx, weight, offsets.to(backend.device), max_norm=1.0, **extra)
    assert torch.equal(weight, before)


def test_bad_index_raises_before_the_renorm(backend):
    weight = torch.full((10, 3), 5.0, device=backend.device)
    before = weight.clone()
    idx = torch.tensor([[1, 2], [3, 10]], device=backend.device)
    with pytest.raises(IndexError, match="10"):
        sparsemb.embedding_bag(idx, weight, max_norm=1.0)
    assert torch.equal(weight, before)
    with pytest.raises(IndexError):
        sparsemb.embedding_bag(idx, weight)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"mode": "median"}, ValueError),
        ({"mode": "max", "scale_grad_by_freq": True}, ValueError),
        ({"mode": "mean", "per_sample_weights": torch.ones(2, 2)}, NotImplementedError),
        ({"mode": "sum", "per_sample_weights": torch.ones(4)}, ValueError),
        ({"offsets": torch.tensor([0, 1])}, ValueError),  # offsets with 2-D input
        ({"bounds_check": "maybe"}, ValueError),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises(error):
        sparsemb.embedding_bag(torch.tensor([[1, 2], [3, 4]]), torch.randn(10, 3), **kwargs)


def test_one_dimensional_input_needs_offsets():
    with pytest.raises(ValueError, match="offsets"):
        sparsemb.embedding_bag(torch.tensor([1, 2]), torch.randn(10, 3))
    with pytest.raises(ValueError, match="1D or 2D"):
        sparsemb.embedding_bag(torch.zeros(1, 1, 1, dtype=torch.int64), torch.randn(10, 3))


def test_constructor_and_from_pretrained():
    with pytest.raises(ValueError):
        sparsemb.EmbeddingBag(10, 3, mode="median")
    with pytest.raises(ValueError):
        sparsemb.EmbeddingBag(10, 3, padding_idx=10)
    pretrained = torch.randn(5, 2)
    table = sparsemb.EmbeddingBag.from_pretrained(pretrained, mode="sum", padding_idx=1)
    assert not table.weight.requires_grad and torch.equal(table.weight, pretrained)
    out = table(torch.tensor([[0, 1, 4]]))
    torch.testing.assert_close(out, (pretrained[0] + pretrained[4]).unsqueeze(0))
    trainable = sparsemb.EmbeddingBag.from_pretrained(pretrained, freeze=False)
    assert trainable.weight.requires_grad
