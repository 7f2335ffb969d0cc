"""Function transforms and odd devices, against F.embedding under the same transform.

Forward-mode AD (with max_norm), torch.func jvp / vmap / grad (per-sample gradients) / jacrev /
hessian, autograd's batched paths (jacobian(vectorize=True), is_grads_batched, gradcheck with
check_batched_grad), meta tensors and a non-tensor weight, each on both backends. Every call gets
its own clones, so torch and sparsemb never share a tensor.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import forward_ad
from torch.func import grad, hessian, jacrev, jvp, vmap

import sparsemb
from helpers import torch_embedding

LOOKUPS = {"sparsemb": sparsemb.embedding, "torch": torch_embedding}  # F.embedding, right on CUDA


def tensors(device, dtype=torch.float32, seed=0):
    """(weight (6, 3), indices (2, 5) with duplicates, tangent like weight), fresh every call."""
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(6, 3, generator=g, dtype=torch.float64) * 2).to(dtype).to(device)
    idx = torch.randint(0, 6, (2, 5), generator=g).to(device)
    tangent = torch.randn(6, 3, generator=g, dtype=torch.float64).to(dtype).to(device)
    return weight, idx, tangent


def both(run):
    """``run(lookup)`` for sparsemb and for torch: (ours, theirs)."""
    return run(LOOKUPS["sparsemb"]), run(LOOKUPS["torch"])


def assert_same(ours, theirs, **tolerance):
    torch.testing.assert_close(ours, theirs, equal_nan=True, **tolerance)


@pytest.mark.parametrize("max_norm", [None, 1.0])
@pytest.mark.parametrize("norm_type", [2.0, float("inf")])
def test_forward_ad_with_max_norm(backend, max_norm, norm_type):
    """The tangent is gathered from the caller's tangent, which must stay untouched."""

    def run(fn):
        weight, idx, tangent = tensors(backend.device)
        before = tangent.clone()
        with forward_ad.dual_level():
            dual = forward_ad.make_dual(weight, tangent)
            out = fn(idx, dual, max_norm=max_norm, norm_type=norm_type)
            primal, out_tangent = forward_ad.unpack_dual(out)
        assert torch.equal(tangent, before), f"{fn.__module__} overwrote the caller's tangent"
        return primal, out_tangent, weight

    assert_same(*both(run))


@pytest.mark.parametrize("padding_idx", [None, 2])
def test_func_jvp(backend, padding_idx):
    def run(fn):
        weight, idx, tangent = tensors(backend.device)
        return jvp(lambda w: fn(idx, w, padding_idx=padding_idx), (weight,), (tangent,))

    assert_same(*both(run), rtol=0, atol=0)


def test_vmap_over_indices_and_over_weights(backend):
    def run(fn):
        weight, idx, _ = tensors(backend.device)
        weights = torch.stack([weight, -weight, 2 * weight])
        over_idx = vmap(lambda i: fn(i, weight), in_dims=0)(idx)
        over_weights = vmap(lambda w: fn(idx, w), in_dims=0)(weights)
        return over_idx, over_weights

    assert_same(*both(run), rtol=0, atol=0)


@pytest.mark.parametrize("options", [{}, {"padding_idx": 1}, {"scale_grad_by_freq": True}], ids=str)
def test_per_sample_gradients(backend, options):
    """vmap(grad(...)): one weight gradient per sample of a batch of index rows."""

    def run(fn):
        weight, idx, _ = tensors(backend.device)
        idx[:, 0] = idx[:, 1]  # a duplicate in every sample
        targets = torch.arange(2 * 5 * 3, dtype=weight.dtype, device=weight.device)
        targets = targets.view(2, 5, 3) % 4 - 1.5

        def loss(w, i, target):
            return (fn(i, w, **options) * target).sum()

        return vmap(grad(loss), in_dims=(None, 0, 0))(weight, idx, targets)

    ours, theirs = both(run)
    assert ours.shape == (2, 6, 3)
    assert_same(ours, theirs, rtol=1e-6, atol=1e-6)


def test_jacrev_and_hessian(backend):
    def run(fn):
        weight, idx, _ = tensors(backend.device)
        jac = jacrev(lambda w: fn(idx, w))(weight)
        hess = hessian(lambda w: (fn(idx, w) ** 2).sum())(weight)
        return jac, hess

    assert_same(*both(run), rtol=0, atol=0)


def test_autograd_jacobian_vectorized(backend):
    def run(fn):
        weight, idx, _ = tensors(backend.device)
        return torch.autograd.functional.jacobian(lambda w: fn(idx, w), weight, vectorize=True)

    assert_same(*both(run), rtol=0, atol=0)


def test_autograd_grad_is_grads_batched(backend):
    def run(fn):
        weight, idx, _ = tensors(backend.device)
        weight.requires_grad_()
        out = fn(idx, weight)
        grads = torch.arange(4 * out.numel(), dtype=out.dtype, device=out.device)
        grads = grads.view(4, *out.shape) % 5 - 2
        (batched,) = torch.autograd.grad(out, weight, grads, is_grads_batched=True)
        return batched

    ours, theirs = both(run)
    assert ours.shape == (4, 6, 3)
    assert_same(ours, theirs, rtol=0, atol=0)


def test_gradcheck_with_batched_grad(backend):
    weight, idx, _ = tensors(backend.device, torch.float64)
    weight.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda w: sparsemb.embedding(idx, w), (weight,), check_batched_grad=True
    )


@pytest.mark.parametrize("options", [{}, {"max_norm": 1.0}, {"sparse": True}], ids=str)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_meta_tensors(backend, options, index_dtype):
    """Meta inputs give a meta output of the right shape and dtype, as torch does."""
    results = []
    for fn in LOOKUPS.values():
        weight = torch.empty(10, 4, dtype=torch.bfloat16, device="meta")
        idx = torch.empty(3, 7, dtype=index_dtype, device="meta")
        out = fn(idx, weight, **options)
        results.append((out.device, out.shape, out.dtype))
    assert results[0] == results[1] == (torch.device("meta"), (3, 7, 4), torch.bfloat16)


@pytest.mark.parametrize("weight", [[[1.0, 2.0]], None, 3.0])
def test_non_tensor_weight_raises_type_error(backend, weight):
    with pytest.raises(TypeError):
        F.embedding(torch.tensor([0]), weight)
    with pytest.raises(TypeError, match="weight"):
        sparsemb.embedding(torch.tensor([0], device=backend.device), weight)
