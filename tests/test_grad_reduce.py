"""The Triton gradient reduce on hot rows (issue 12, items 1-2): parallel, fixed order, exact.

A hot row of thousands of hits spans more windows than the tail kernel sums in one tile, so its
tile loop runs several times; rows seen fewer than CHUNK times are written by the window kernel
directly.
"""

import pytest
import torch

from helpers import TOLERANCES
from sparsemb._backend import kernel_module
from sparsemb.torch_backend import grad as torch_grad


def hot_batch(device, dim):
    """A hot row spanning more than two tiles of the tail kernel's partials, plus cold rows."""
    kernels = kernel_module("grad")
    n_hot = 2 * kernels.CHUNK * kernels._tiles(dim)[1].rows + 5
    g = torch.Generator().manual_seed(3)
    idx = torch.cat([torch.full((n_hot,), 7), torch.randint(0, 50, (300,), generator=g)])
    idx = idx[torch.randperm(idx.numel(), generator=g)]
    return idx.to(device)


@pytest.mark.parametrize("dim", [1, 130])
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("scale", [False, True])
def test_hot_row_matches_torch_and_is_deterministic(triton_backend, monkeypatch, dim, dense,
                                                    scale):
    # two windows' partials per tile: the tile loop runs several times at interpreter sizes
    monkeypatch.setattr(kernel_module("grad"), "MAX_TILE", 2)
    device = triton_backend.device
    idx = hot_batch(device, dim)
    g = torch.Generator().manual_seed(4)
    grad = torch.randn(idx.numel(), dim, generator=g).to(device)
    kernels = kernel_module("grad")
    run = kernels.dense_grad if dense else kernels.dedup_grad
    ref = (torch_grad.dense_grad if dense else torch_grad.dedup_grad)(
        grad.clone(), idx.clone(), 50, 3, scale
    )
    first = run(grad.clone(), idx.clone(), 50, 3, scale)
    second = run(grad.clone(), idx.clone(), 50, 3, scale)
    atol, rtol = TOLERANCES[torch.float32]
    if dense:
        assert torch.equal(first, second)  # bit-identical run to run
        torch.testing.assert_close(first, ref, atol=atol * 100, rtol=rtol)
    else:
        assert torch.equal(first[0], ref[0]) and torch.equal(first[0], second[0])
        assert torch.equal(first[1], second[1])
        torch.testing.assert_close(first[1], ref[1], atol=atol * 100, rtol=rtol)


def test_single_and_multi_chunk_rows_together(triton_backend):
    """Exact sums (integer gradients) for rows of 1, CHUNK, CHUNK + 1 and many windows."""
    device = triton_backend.device
    chunk = kernel_module("grad").CHUNK
    counts = {0: 1, 1: chunk, 2: chunk + 1, 3: 5 * chunk + 7, 4: 2}
    idx = torch.cat([torch.full((c,), r) for r, c in counts.items()])
    idx = idx[torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(5))]
    grad = torch.randint(-3, 4, (idx.numel(), 9), generator=torch.Generator().manual_seed(6))
    grad = grad.float()
    unique, values = kernel_module("grad").dedup_grad(
        grad.to(device), idx.to(device), 5, -1, False
    )
    ref_unique, ref_values = torch_grad.dedup_grad(grad, idx, 5, -1, False)
    assert torch.equal(unique.cpu(), ref_unique) and torch.equal(values.cpu(), ref_values)


@pytest.mark.parametrize("n,dim", [(0, 4), (5, 0), (0, 0)])
def test_empty_batch_or_rows(triton_backend, n, dim):
    device = triton_backend.device
    idx = torch.tensor([3, 1, 3, 9, 2][:n], dtype=torch.int64)
    grad = torch.randn(n, dim)
    kernels = kernel_module("grad")
    rows, values = kernels.dedup_grad(grad.to(device), idx.to(device), 5, 2, False)
    ref_rows, ref_values = torch_grad.dedup_grad(grad, idx, 5, 2, False)
    assert torch.equal(rows.cpu(), ref_rows) and values.shape == ref_values.shape
    dense = kernels.dense_grad(grad.to(device), idx.to(device), 5, 2, True)
    assert torch.equal(dense.cpu(), torch_grad.dense_grad(grad, idx, 5, 2, True))


def test_padded_result_for_the_fused_step(triton_backend):
    """N slots without a host read: kept rows ascending, then row num_weights (skipped by the
    optimizer kernels); int32 indices sort as int32 and give int64 rows."""
    device = triton_backend.device
    idx = torch.tensor([3, 1, 3, 9, 2, 1], dtype=torch.int32)
    grad = torch.randint(-3, 4, (6, 3)).float()
    rows, values = kernel_module("grad").dedup_grad_padded(
        grad.to(device), idx.to(device), 5, 2, True
    )
    ref_rows, ref_values = torch_grad.dedup_grad(grad, idx.long(), 5, 2, True)
    k = ref_rows.numel()
    assert rows.dtype == torch.int64 and rows.shape == (6,) and values.shape == (6, 3)
    assert torch.equal(rows[:k].cpu(), ref_rows) and bool((rows[k:] == 5).all())
    assert torch.equal(values[:k].cpu(), ref_values)
