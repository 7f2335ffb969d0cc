"""Reproducers of defects found by trying sparsemb as its users would (issue 9), on both
backends: each failed before its fix. Broader sweeps live in test_layouts.py / test_functorch.py.
"""

import pytest
import torch
import torch.nn.functional as F

import sparsemb
from helpers import dense, torch_embedding


def _table(backend, rows=12, dim=3, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, dim, generator=g) * 3).to(dtype=dtype, device=backend.device)


# ----- 1. strided and expanded 1-D indices


@pytest.mark.parametrize(
    "make_indices",
    [
        lambda d: torch.tensor([[1, 9], [2, 9], [3, 9]], device=d)[:, 0],  # stride 2
        lambda d: torch.tensor([5], device=d).expand(7),  # stride 0
        lambda d: torch.arange(12, device=d).view(3, 4).t(),  # transposed 2-D
        lambda d: torch.tensor([4, 0], device=d).view(2, 1).expand(2, 3),  # expanded 2-D
        lambda d: torch.arange(12, device=d, dtype=torch.int32)[1::3],
    ],
)
def test_strided_and_expanded_indices_read_the_right_rows(backend, make_indices):
    weight = _table(backend)
    idx = make_indices(backend.device)
    ours = weight.clone().requires_grad_()
    theirs = weight.clone().requires_grad_()
    out = sparsemb.embedding(idx, ours)
    ref = F.embedding(idx.clone(), theirs)
    assert torch.equal(out, ref)
    grad = torch.arange(out.numel(), dtype=out.dtype, device=out.device).view(out.shape)
    out.backward(grad)
    ref.backward(grad.clone())
    assert torch.equal(ours.grad, theirs.grad)


def test_bad_index_at_a_strided_position_is_caught(backend):
    weight = _table(backend)
    idx = torch.tensor([[1, 0], [99, 0]], device=backend.device)[:, 0]  # 99 at position 1
    with pytest.raises(IndexError, match="99"):
        sparsemb.embedding(idx, weight)


# ----- 2. bounds_check="none" never lets an outside row reach a gradient


@pytest.mark.parametrize("padding_idx", [None, 2])
def test_unchecked_outside_index_never_reaches_the_sparse_gradient(backend, padding_idx):
    if backend.name == "torch":
        pytest.skip("the CPU path's index_select raises on an outside index before any write")
    weight = _table(backend).requires_grad_()
    idx = torch.tensor([3, 40, -7, 3, 2], device=backend.device)
    out = sparsemb.embedding(idx, weight, padding_idx, sparse=True, bounds_check="none")
    zeros = torch.zeros(3, device=backend.device)
    assert torch.equal(out[1], zeros) and torch.equal(out[2], zeros)
    out.sum().backward()
    rows = weight.grad._indices()[0]
    expected = [3] if padding_idx == 2 else [2, 3]
    assert rows.tolist() == expected
    before = weight.detach().clone()
    opt = sparsemb.optim.SparseAdam([weight], lr=0.1)
    opt.step()
    changed = (weight.detach() != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == expected


# ----- 3. in-place renorm bumps the version counter on both paths


def test_renorm_bumps_version_so_a_tied_graph_raises(backend):
    weight = _table(backend).requires_grad_()
    h = torch.randn(2, 3, device=backend.device, requires_grad=True)
    logits = h @ weight.t()  # saves weight for backward (a tied output layer)
    sparsemb.embedding(torch.tensor([1, 4], device=backend.device), weight, max_norm=0.5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        logits.sum().backward()


# ----- 5. rows holding NaN are left alone by max_norm, as torch does


@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.5, float("inf"), 0.5])
def test_nan_rows_are_not_renormalized(backend, norm_type):
    weight = _table(backend, rows=6, dim=5)
    weight[2, 1] = float("nan")
    weight[4, 3] = float("inf")
    ours, theirs = weight.clone(), weight.clone()
    idx = torch.tensor([2, 4, 1, 2], device=backend.device)
    out = sparsemb.embedding(idx, ours, max_norm=1.0, norm_type=norm_type)
    ref = torch_embedding(idx.clone(), theirs, max_norm=1.0, norm_type=norm_type)
    torch.testing.assert_close(ours, theirs, equal_nan=True)
    torch.testing.assert_close(out, ref, equal_nan=True)


# ----- 6. integer tables with max_norm raise, table untouched


def test_integer_table_with_max_norm_raises(backend):
    weight = torch.full((4, 3), 10, dtype=torch.int64, device=backend.device)
    with pytest.raises(TypeError, match="floating-point"):
        sparsemb.embedding(torch.tensor([0, 1], device=backend.device), weight, max_norm=1.0)
    assert (weight == 10).all()


# ----- 7. int32 indices with max_norm, float64 tables


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_max_norm_with_int32_indices_and_float64_tables(backend, dtype, index_dtype):
    weight = torch.full((4, 3), 10.0, dtype=dtype, device=backend.device)
    ours, theirs = weight.clone(), weight.clone()
    idx = torch.tensor([0, 1, 1], dtype=index_dtype, device=backend.device)
    out = sparsemb.embedding(idx, ours, max_norm=1.0)
    ref = F.embedding(idx.clone(), theirs, max_norm=1.0)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(out, ref)


# ----- 8. forward-mode AD with max_norm: torch's tangents, the caller's tangent untouched


def test_forward_ad_with_max_norm(backend):
    import torch.autograd.forward_ad as fwAD

    weight = _table(backend, dtype=torch.float64)
    tangent = torch.randn_like(weight)
    idx = torch.tensor([1, 4, 1, 7], device=backend.device)
    results = []
    for fn in (sparsemb.embedding, F.embedding):
        w, t = weight.clone(), tangent.clone()
        with fwAD.dual_level():
            out = fn(idx.clone(), fwAD.make_dual(w, t), max_norm=1.0)
            primal, out_tangent = fwAD.unpack_dual(out)
        assert torch.equal(t, tangent), "the caller's tangent was modified"
        results.append((primal, out_tangent, w))
    for ours, theirs in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(ours, theirs)


# ----- 9-10. torch.func transforms and batched gradients


@pytest.mark.parametrize("options", [{}, {"padding_idx": 1}, {"scale_grad_by_freq": True}])
def test_func_transforms_match_torch(backend, options):
    weight = _table(backend, dtype=torch.float64)
    idx = torch.tensor([[1, 4, 1], [7, 7, 0]], device=backend.device)

    def loss(fn, sparse):
        return lambda w, i: fn(i, w, sparse=sparse, **options).pow(2).sum()

    for sparse in (False, True):
        ours, theirs = loss(sparsemb.embedding, sparse), loss(F.embedding, False)
        per_sample = torch.func.vmap(torch.func.grad(ours), in_dims=(None, 0))(weight, idx)
        expected = torch.func.vmap(torch.func.grad(theirs), in_dims=(None, 0))(weight, idx)
        torch.testing.assert_close(per_sample, expected)
        torch.testing.assert_close(
            torch.func.jacrev(ours)(weight, idx), torch.func.jacrev(theirs)(weight, idx)
        )
        torch.testing.assert_close(
            torch.func.hessian(ours)(weight, idx), torch.func.hessian(theirs)(weight, idx)
        )
    tangent = torch.randn_like(weight)
    for fn in (sparsemb.embedding, F.embedding):
        out = torch.func.jvp(lambda w, fn=fn: fn(idx, w, **options), (weight,), (tangent,))
        if fn is sparsemb.embedding:
            ours_jvp = out
    torch.testing.assert_close(ours_jvp, out)
    batched = torch.func.vmap(lambda i: sparsemb.embedding(i, weight, **options))(idx)
    torch.testing.assert_close(batched, F.embedding(idx, weight, **options))


@pytest.mark.parametrize("sparse", [False, True])
def test_batched_grads_and_batched_gradcheck(backend, sparse):
    weight = _table(backend, dtype=torch.float64)
    idx = torch.tensor([1, 4, 1, 0], device=backend.device)
    w1, w2 = weight.clone().requires_grad_(), weight.clone().requires_grad_()
    out1 = sparsemb.embedding(idx, w1, padding_idx=0, sparse=sparse)
    out2 = F.embedding(idx.clone(), w2, padding_idx=0)
    grads = torch.randn(3, *out1.shape, dtype=out1.dtype, device=out1.device)
    (g1,) = torch.autograd.grad(out1, w1, grads, is_grads_batched=True)
    (g2,) = torch.autograd.grad(out2, w2, grads.clone(), is_grads_batched=True)
    torch.testing.assert_close(dense(g1), g2)
    jac1 = torch.autograd.functional.jacobian(
        lambda w: sparsemb.embedding(idx, w), weight, vectorize=True
    )
    jac2 = torch.autograd.functional.jacobian(lambda w: F.embedding(idx, w), weight, vectorize=True)
    torch.testing.assert_close(jac1, jac2)
    w = weight.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda w: sparsemb.embedding(idx, w), (w,), check_batched_grad=True
    )


# ----- 11. meta device and non-tensor weights


@pytest.mark.parametrize("max_norm", [None, 1.0])
def test_meta_tensors_give_meta_results(backend, max_norm):
    weight = torch.empty(10, 3, device="meta", requires_grad=True)
    idx = torch.zeros(4, 2, dtype=torch.int64, device="meta")
    out = sparsemb.embedding(idx, weight, max_norm=max_norm)
    assert out.is_meta and out.shape == (4, 2, 3) and out.dtype == weight.dtype
    table = sparsemb.Embedding(1000, 8, device="meta", sparse=True)
    assert table(idx).shape == (4, 2, 8)


def test_non_tensor_weight_is_a_type_error():
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        sparsemb.embedding(torch.tensor([0]), [[1.0, 2.0]])


def test_optimizer_trusts_only_the_gradient_sparsemb_produced(backend):
    """step() skips the row-range read for the very gradient sparsemb's backward produced (its
    rows are inside the table by construction) and checks any other, before writing."""
    from sparsemb._autograd import grad_is_sparsemb_output

    weight = _table(backend).requires_grad_()
    opt = sparsemb.optim.SparseSGD([weight], lr=0.1)
    idx = torch.tensor([1, 3], device=backend.device)
    sparsemb.embedding(idx, weight, sparse=True).sum().backward()
    assert grad_is_sparsemb_output(weight)
    opt.step()
    bad = torch.sparse_coo_tensor(
        torch.tensor([[1, 40]], device=backend.device), torch.ones(2, 3, device=backend.device),
        weight.shape,
    )
    weight.grad = bad
    assert not grad_is_sparsemb_output(weight)
    before = weight.detach().clone()
    with pytest.raises(IndexError, match="40"):
        opt.step()
    assert torch.equal(weight.detach(), before)
