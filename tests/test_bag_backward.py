"""The pure-PyTorch bag backward that never expands the bag gradient to (N, D)
(``torch_backend.bag.pooled_dedup_grad``, sum and mean without per-sample weights).

Two oracles, each on its own clones: the expand-then-dedup path it replaces (bit for bit, also
with positions after the last bag, which the public API refuses), and ``torch.nn.EmbeddingBag``'s
sparse gradient through the public API on the torch backend, on integer-valued data: exact for
sum (with or without per-sample weights) in every dtype, bfloat16 against torch in float32
rounded once (torch's coalesce adds a row's duplicates in another order, so random data would
differ in the last bits); to the dtype's tolerance for mean, whose torch gradient multiplies by
1/count where sparsemb divides, and for scale_grad_by_freq, whose sparse gradient torch
refuses.
"""

import random

import pytest
import torch
import torch.nn.functional as F

import sparsemb
from helpers import TOLERANCES, dense, integer_grad
from sparsemb import _ops
from sparsemb.torch_backend import bag as torch_bag
from sparsemb.torch_backend import grad as torch_grad

SEEDS = range(16)
DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def random_bags(seed, tail=False):
    """(indices, (B + 1,) int64 offsets, padding_idx, num_rows, dim): empty bags, heavy
    duplication, and with ``tail`` positions after the last bag."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    num_rows, dim = rng.choice([5, 40]), rng.choice([1, 3, 17, 130])
    n = rng.choice([0, 1, rng.randint(2, 200)])
    indices = torch.randint(0, num_rows, (n,), generator=g)
    indices[: n // 3] = rng.randrange(num_rows)  # a hot row
    indices = indices[torch.randperm(n, generator=g)]
    end = rng.randint(0, n) if tail else n
    cuts = sorted(rng.randint(0, end) for _ in range(rng.randint(0, 8)))
    offsets = torch.tensor([0, *cuts, end], dtype=torch.int64)
    padding_idx = rng.choice([-1, 0, num_rows - 1])
    index_dtype = rng.choice([torch.int64, torch.int32])
    return indices.to(index_dtype), offsets, padding_idx, num_rows, dim


@pytest.mark.parametrize("tail", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", [torch_bag.SUM, torch_bag.MEAN])
@pytest.mark.parametrize("seed", SEEDS)
def test_equals_expand_then_dedup_bit_for_bit(seed, mode, dtype, tail):
    indices, offsets, padding_idx, num_rows, dim = random_bags(seed, tail)
    grad = torch.randn(offsets.numel() - 1, dim, generator=torch.Generator().manual_seed(seed))
    grad = grad.to(dtype)
    scale_by_freq = seed % 2 == 1
    no_argmax = torch.empty(0, dtype=torch.int64)
    expanded = torch_bag.expand_grad(
        grad.clone(), indices.clone(), offsets.clone(), None, no_argmax, mode, padding_idx
    )
    args = (num_rows, padding_idx, scale_by_freq)
    want = torch_grad.dedup_grad(expanded, indices.clone(), *args)
    got = torch_bag.pooled_dedup_grad(grad.clone(), indices.clone(), offsets.clone(), mode, *args)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    got_dense = torch_bag.pooled_dense_grad(
        grad.clone(), indices.clone(), offsets.clone(), mode, *args
    )
    want_dense = torch_grad.dense_grad(expanded, indices.clone(), *args)
    torch.testing.assert_close(got_dense, want_dense, rtol=0, atol=0)


def public_bag_grad(fn, weight, indices, offsets, kwargs, grad, sparse):
    """The weight gradient (dense) and per-sample-weights gradient of one side, on its clones."""
    weight = weight.detach().clone().requires_grad_()
    kwargs = dict(kwargs)
    if kwargs.get("per_sample_weights") is not None:
        kwargs["per_sample_weights"] = kwargs["per_sample_weights"].clone().requires_grad_()
    out = fn(indices.clone(), weight, offsets.clone(), sparse=sparse, **kwargs)
    out.backward(grad.clone().to(out.dtype))
    psw = kwargs.get("per_sample_weights")
    return dense(weight.grad), None if psw is None else psw.grad


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["sum", "mean", "sum+psw"])
@pytest.mark.parametrize("seed", range(12))
def test_matches_torch_embedding_bag(monkeypatch, seed, mode, dtype, sparse):
    monkeypatch.setenv("SPARSEMB_BACKEND", "torch")
    indices, offsets, padding_idx, num_rows, dim = random_bags(seed)
    g = torch.Generator().manual_seed(seed)
    include_last = seed % 2 == 0
    kwargs = {
        "mode": mode.removesuffix("+psw"),
        "padding_idx": None if padding_idx < 0 else padding_idx,
        "scale_grad_by_freq": seed % 3 == 0,
        "include_last_offset": include_last,
    }
    if mode == "sum+psw":
        kwargs["per_sample_weights"] = torch.randint(-3, 4, indices.shape, generator=g).float()
    offsets = offsets if include_last else offsets[:-1]
    weight = torch.randint(-3, 4, (num_rows, dim), generator=g).float()
    grad = integer_grad((offsets.numel() - include_last, dim), torch.float32, seed=seed)
    ours_kwargs = dict(kwargs)
    if mode == "sum+psw":
        ours_kwargs["per_sample_weights"] = kwargs["per_sample_weights"].to(dtype)
    ours = public_bag_grad(
        sparsemb.embedding_bag, weight.to(dtype), indices, offsets, ours_kwargs, grad, sparse
    )
    oracle_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
    theirs_kwargs = dict(kwargs)
    if mode == "sum+psw":
        theirs_kwargs["per_sample_weights"] = kwargs["per_sample_weights"].to(oracle_dtype)
    # torch's sparse gradient: per-position rows, summed in order. torch refuses it with
    # scale_grad_by_freq (and its dense bag gradient then miscounts on CPU once a bag holds more
    # than a few indices, torch 2.13), so that case divides by each row's count afterwards.
    by_freq = kwargs["scale_grad_by_freq"]
    theirs_kwargs["scale_grad_by_freq"] = False
    theirs = public_bag_grad(
        F.embedding_bag, weight.to(oracle_dtype), indices, offsets, theirs_kwargs, grad, True
    )
    if by_freq:
        counts = torch.bincount(indices.long(), minlength=num_rows).clamp(min=1)
        theirs = (theirs[0] / counts.unsqueeze(1).to(oracle_dtype), theirs[1])
    atol, rtol = 0, 0  # integer sums are exact in every order, rounded once to ``dtype``
    if mode == "mean" or by_freq:
        atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(ours[0], theirs[0].to(dtype), atol=atol, rtol=rtol)
    if mode == "sum+psw":
        torch.testing.assert_close(ours[1], theirs[1].to(dtype), atol=0, rtol=0)
    else:
        assert ours[1] is None


@pytest.mark.parametrize("mode", [torch_bag.SUM, torch_bag.MEAN, torch_bag.MAX])
def test_bag_grad_ops_pass_opcheck(mode):
    """The weight-gradient ops' schemas and fake impls agree with their real impls."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(10, 3, generator=g)
    idx = torch.tensor([1, 2, 2, 9, 0, 4, 4])
    offsets = torch.tensor([0, 2, 2, 6])  # position 6 after the last bag
    psw = torch.randn(7, generator=g) if mode == torch_bag.SUM else None
    _, argmax = _ops.bag_forward(weight, idx, offsets, psw, mode, 4, True)
    grad = torch.randn(3, 3, generator=g)
    for op in (_ops.bag_dedup_grad, _ops.bag_dense_grad):
        torch.library.opcheck(op, (grad, idx, offsets, psw, argmax, mode, 4, 10, False))
        torch.library.opcheck(op, (grad, idx, offsets, None, argmax, mode, -1, 10, True))
