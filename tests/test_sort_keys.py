"""The Triton dedup's sort (issue 12, item 3-4): int32 keys below 2^31 rows, one sort per step.

``kernels.grad.sort_keys`` sorts int32 keys when the table has fewer than 2^31 rows; an int64
index outside the table is clamped to -1 or V first, so a huge value (2**32 + 3) can never wrap
onto a valid row (3) even with ``bounds_check="none"``. Under max_norm the renorm's sort is
handed to backward, so a step sorts once.
"""

import pytest
import torch
from dispatch_count import StepCounter

import sparsemb
from helpers import dense, random_indices, twin_tables
from sparsemb._backend import kernel_module
from sparsemb.torch_backend import grad as torch_grad

V = 6
# each huge value would alias a valid row if truncated to int32: 2**32 + 3 -> 3, -2**32 -> 0,
# 2**33 + 5 -> 5, 2**31 + 1 -> a negative int32
HUGE = [2**32 + 3, -(2**32), 2**33 + 5, 2**31 + 1, -(2**40) + 3]


def mixed_indices():
    """In-range rows 0..5 (with duplicates) shuffled with the huge values above."""
    inside = [3, 0, 5, 3, 1, 3, 0]
    idx = torch.tensor(inside + HUGE, dtype=torch.int64)
    return idx[torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(0))]


def integer_grad(n, dim, seed=1):
    """Small integers: every sum is exact, so results compare with torch.equal."""
    return torch.randint(-3, 4, (n, dim), generator=torch.Generator().manual_seed(seed)).float()


def test_sort_keys_are_int32_and_outside_values_stay_outside(triton_backend):
    idx = mixed_indices().to(triton_backend.device)
    keys, perm = kernel_module("grad").sort_keys(idx, V)
    assert keys.dtype == torch.int32 and perm.dtype == torch.int64
    expected = idx.clamp(-1, V)  # -1 below the table, V above it: never a valid row
    assert torch.equal(keys.long().cpu(), expected.sort(stable=True).values.cpu())
    assert torch.equal(expected[perm].cpu(), keys.long().cpu())  # perm orders the batch


def test_int64_keys_stay_when_the_table_passes_2_to_31_rows(triton_backend):
    idx = torch.tensor([5, 2**31 + 7, 5], device=triton_backend.device)
    keys, perm = kernel_module("grad").sort_keys(idx, 2**31 + 10)
    assert keys.dtype == torch.int64 and keys.tolist() == [5, 5, 2**31 + 7]


@pytest.mark.parametrize("padding_idx", [-1, 3])
@pytest.mark.parametrize("scale", [False, True])
def test_huge_outside_indices_are_dropped_not_aliased(triton_backend, padding_idx, scale):
    """Sparse, padded and dense results equal torch's on the in-range positions alone."""
    device = triton_backend.device
    idx = mixed_indices()
    grad = integer_grad(idx.numel(), 4)
    inside = (idx >= 0) & (idx < V)
    ref_rows, ref_values = torch_grad.dedup_grad(grad[inside], idx[inside], V, padding_idx, scale)
    kernels = kernel_module("grad")
    rows, values = kernels.dedup_grad(grad.to(device), idx.to(device), V, padding_idx, scale)
    assert torch.equal(rows.cpu(), ref_rows) and torch.equal(values.cpu(), ref_values)
    rows, values = kernels.dedup_grad_padded(grad.to(device), idx.to(device), V, padding_idx,
                                             scale)
    k = ref_rows.numel()
    assert torch.equal(rows[:k].cpu(), ref_rows) and bool((rows[k:] == V).all())
    assert torch.equal(values[:k].cpu(), ref_values)
    out = kernels.dense_grad(grad.to(device), idx.to(device), V, padding_idx, scale)
    assert torch.equal(out.cpu(), torch_grad.dense_grad(grad[inside], idx[inside], V,
                                                        padding_idx, scale))


def test_huge_outside_indices_through_a_training_step(triton_backend):
    """bounds_check="none": the huge values read zeros and no row they alias is updated."""
    device = triton_backend.device
    table = sparsemb.Embedding(V, 3, sparse=True, bounds_check="none", device=device)
    idx = torch.tensor([1, 2**32 + 3, -(2**32), 2**33 + 5, 1], device=device)
    out = table(idx)
    assert torch.equal(out[1:4].cpu(), torch.zeros(3, 3))
    out.sum().backward()
    assert table.weight.grad._indices()[0].tolist() == [1]
    before = table.weight.detach().clone()
    sparsemb.optim.SparseAdam(table.parameters(), lr=0.1).step()
    changed = (table.weight.detach() != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [1]


def test_huge_outside_indices_do_not_renormalize_aliased_rows(triton_backend):
    device = triton_backend.device
    weight = torch.full((V, 3), 5.0, device=device)
    idx = torch.tensor([2**32 + 3, -(2**32), 1, 2**32 + 3], device=device)
    sparsemb.embedding(idx, weight, max_norm=1.0, bounds_check="none")
    norms = weight.norm(dim=1).cpu()
    assert norms[1] < 1.0 + 1e-6  # the looked-up row was renormalized
    assert torch.equal(weight[[0, 2, 3, 4, 5]].cpu(), torch.full((5, 3), 5.0))


@pytest.mark.parametrize("scale", [False, True])
def test_int32_keys_are_bit_identical_to_int64_keys(triton_backend, scale):
    """In-range input: the int32-key reduce equals the int64-key one (the sort before this
    change, handed in as ``presorted``) bit for bit, with real-valued (inexact) sums."""
    device = triton_backend.device
    idx = random_indices(50, (260,), hot=7, device=device)  # row 7: 86 hits over 6+ windows
    grad = torch.randn(260, 20, generator=torch.Generator().manual_seed(2)).to(device)
    kernels = kernel_module("grad")
    old = torch.sort(idx, stable=True)
    assert old.values.dtype == torch.int64
    args = (grad.clone(), idx.clone(), 50, 4, scale)
    for run in (kernels.dedup_grad, kernels.dedup_grad_padded):
        rows, values = run(*args)
        old_rows, old_values = run(*args, presorted=old)
        kept = old_rows < 50  # the padded result's unused slots hold unset values
        assert torch.equal(rows, old_rows) and torch.equal(values[kept], old_values[kept])
    assert torch.equal(kernels.dense_grad(*args), kernels.dense_grad(*args, presorted=old))


# ----- max_norm: the renorm's sort serves backward


def sorts(counter):
    """Sorts an op list made: aten sort and the unique ops (each sorts internally)."""
    names = ("sort", "_unique", "_unique2", "unique_consecutive", "unique_dim")
    return sum(counter.launches[n] + counter.syncs[n] for n in names)


def count_max_norm_lookup(device, fused, **options):
    torch.manual_seed(0)
    table = sparsemb.Embedding(500, 8, sparse=True, max_norm=1.0, device=device, **options)
    opt = sparsemb.optim.SparseAdam(table.parameters(), lr=0.01)
    if fused:
        opt.enable_fused_backward()
    idx = random_indices(500, (300,), hot=11, device=device)
    forward, backward = StepCounter(), StepCounter()
    with forward.counting_triton():
        out = table(idx)
    with backward.counting_triton():
        out.backward(torch.randn(300, 8, device=device))
    return forward, backward


@pytest.mark.parametrize("fused", [False, True])
def test_max_norm_step_sorts_once(triton_backend, monkeypatch, fused):
    """The forward sorts once (no ``unique``: no host sync for it); backward does not sort."""
    if triton_backend.device.type == "cpu":  # the CUDA branch: padded rows, no CPU-only check
        monkeypatch.setattr(sparsemb._ops, "pads_fused_rows", lambda grad: True)
        monkeypatch.setattr(sparsemb.optim.base, "check_grad_rows", lambda *args: None)
    forward, backward = count_max_norm_lookup(triton_backend.device, fused)
    assert sorts(forward) == 1 and forward.launches["sort"] == 1, forward.report()
    assert sorts(backward) == 0, backward.report()
    assert forward.launches["triton:_renorm_kernel"] == 1
    assert backward.launches["triton:_window_kernel"] == 1  # backward did reduce


@pytest.mark.parametrize("options", [{}, {"padding_idx": 4}, {"scale_grad_by_freq": True}])
def test_max_norm_reused_sort_matches_torch(triton_backend, options):
    """Renormed weights and gradients equal torch's, with duplicates and a hot row."""
    device = triton_backend.device
    ours, theirs = twin_tables(40, 5, device=device, max_norm=1.5, **options)
    with torch.no_grad():
        ours.weight.mul_(3)
        theirs.weight.mul_(3)
    ours_sparse = sparsemb.Embedding.from_pretrained(ours.weight.detach().clone(),
                                                     freeze=False, sparse=True, max_norm=1.5,
                                                     **options)
    idx = random_indices(40, (6, 9), hot=4, device=device)
    grad_out = torch.randn(6, 9, 5, device=device)
    theirs(idx.clone()).backward(grad_out.clone())
    for table in (ours, ours_sparse):
        table(idx.clone()).backward(grad_out.clone())
        torch.testing.assert_close(table.weight.detach(), theirs.weight.detach())
        torch.testing.assert_close(dense(table.weight.grad), dense(theirs.weight.grad))
