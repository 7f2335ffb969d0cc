"""The CPU path's speed work keeps the numbers: the segment sum, int32 sort keys, huge pages and
the output pool change how memory is used, never a value (issue 13)."""

from __future__ import annotations

import gc

import pytest
import torch

import sparsemb
from sparsemb import _memory
from sparsemb.torch_backend import grad as torch_grad


def _index_add_reference(grad, indices, num_weights, padding_idx, scale):
    """The previous formulation: zeros(U, D).index_add_ in batch order (sequential sums)."""
    unique, inverse, counts = torch.unique(
        indices.to(torch.int64), sorted=True, return_inverse=True, return_counts=True
    )
    acc = torch.float64 if grad.dtype == torch.float64 else torch.float32
    values = torch.zeros(unique.numel(), grad.shape[1], dtype=acc)
    values.index_add_(0, inverse, grad.to(acc))
    if scale:
        values /= counts.unsqueeze(1).to(acc)
    keep = (unique >= 0) & (unique < num_weights)
    if padding_idx >= 0:
        keep &= unique != padding_idx
    return unique[keep], values[keep].to(grad.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("scale", [False, True])
def test_segment_sum_dedup_is_bit_identical_to_index_add(dtype, index_dtype, scale):
    gen = torch.Generator().manual_seed(7)
    for n, v, d in [(2000, 50, 16), (513, 5000, 3), (1, 4, 7), (300, 8, 0)]:
        zipf = (torch.rand(n, generator=gen) ** 3 * v).to(index_dtype)  # many duplicates
        grad = torch.randn(n, d, generator=gen).to(dtype)
        padding_idx = 2 if v > 2 else -1
        got = torch_grad.dedup_grad(grad.clone(), zipf.clone(), v, padding_idx, scale)
        want = _index_add_reference(grad.clone(), zipf.clone(), v, padding_idx, scale)
        assert torch.equal(got[0], want[0])
        assert got[1].dtype == dtype
        assert torch.equal(got[1], want[1]), (n, v, d)


def test_segment_sum_takes_strided_and_expanded_gradients():
    gen = torch.Generator().manual_seed(3)
    idx = torch.randint(0, 20, (64,), generator=gen)
    base = torch.randn(16, 64, generator=gen)
    for grad in (base.t(), torch.randn(1, 16, generator=gen).expand(64, 16)):
        got = torch_grad.dedup_grad(grad, idx.clone(), 20, -1, False)
        want = _index_add_reference(grad.contiguous(), idx.clone(), 20, -1, False)
        assert torch.equal(got[1], want[1])


def test_empty_batch():
    unique, values = torch_grad.dedup_grad(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long),
                                           10, -1, False)
    assert unique.shape == (0,) and values.shape == (0, 5)


def test_int64_indices_outside_the_table_never_alias_a_row():
    """int32 sort keys: 2**32 + 3 truncated would be row 3, -2**32 row 0. They must be dropped."""
    huge = torch.tensor([2**32 + 3, -(2**32), 3, 2**40, 5, -1, 10], dtype=torch.int64)
    grad = torch.arange(7 * 2, dtype=torch.float32).view(7, 2)
    unique, values = torch_grad.dedup_grad(grad, huge, 10, -1, False)
    assert unique.tolist() == [3, 5]
    assert torch.equal(values, grad[[2, 4]])
    keys = torch_grad.sort_keys(huge, 10)
    assert keys.dtype == torch.int32
    assert keys.tolist() == [10, -1, 3, 10, 5, -1, 10]


def test_bounds_check_none_drops_wild_rows_through_the_whole_step():
    """The promise through lookup, backward and optimizer: a row outside the table updates
    nothing (CPU: the gather of an outside row raises in torch, so feed the backward directly)."""
    table = sparsemb.Embedding(10, 2, sparse=True, bounds_check="none")
    before = table.weight.detach().clone()
    wild = torch.tensor([2**32 + 3, 4], dtype=torch.int64)
    grad = torch.ones(2, 2)
    unique, values = sparsemb._ops.EAGER.dedup_grad(grad, wild, 10, -1, False)
    opt = sparsemb.optim.SparseSGD(table.parameters(), lr=1.0)
    table.weight.grad = torch.sparse_coo_tensor(unique.unsqueeze(0), values, (10, 2))
    opt.step()
    changed = (table.weight.detach() != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [4]


# ----- memory: huge pages and the output pool change no value


def test_huge_page_advice_and_collapse_keep_contents():
    x = torch.randn(3 << 20)  # 12 MiB
    copy = x.clone()
    assert _memory.advise_huge_pages(x) is x
    _memory.collapse_to_huge_pages(x)  # may or may not apply here; must not change a value
    assert torch.equal(x, copy)
    z = _memory.zeros(1024, 2048, dtype=torch.float32, device="cpu")
    assert z.shape == (1024, 2048) and not z.any()


def test_output_pool_reuses_only_released_buffers():
    pool = _memory._OutputPool()
    a = pool.empty(1024, 1024, torch.float32)  # 4 MiB
    a.fill_(1)
    b = pool.empty(1024, 1024, torch.float32)  # a is alive: a new buffer
    assert b.data_ptr() != a.data_ptr()
    view = a[10:]  # a view keeps the storage alive too
    ptr = a.data_ptr()
    del a
    gc.collect()
    c = pool.empty(1024, 1024, torch.float32)
    assert c.data_ptr() not in (ptr, b.data_ptr())
    assert torch.equal(view, torch.ones(1014, 1024))  # untouched
    c_ptr = c.data_ptr()
    del view, c
    gc.collect()
    d = pool.empty(1024, 1024, torch.float32)  # b still alive; a's or c's buffer again
    assert d.data_ptr() in (ptr, c_ptr)


def test_lookup_outputs_held_at_once_never_share_memory():
    table = sparsemb.Embedding(1000, 256, sparse=True)
    idx = torch.randint(0, 1000, (8192,))  # 8 MiB outputs: pooled
    first = table(idx)
    second = table(idx.flip(0))
    assert first.data_ptr() != second.data_ptr()
    ref = torch.nn.functional.embedding(idx.clone(), table.weight.detach().clone())
    assert torch.equal(first, ref)
    assert torch.equal(second, ref.flip(0))
    released = first.data_ptr()
    del first
    gc.collect()
    third = table(idx)  # the released buffer is used again: no fresh pages to fault in
    assert third.data_ptr() == released
    assert torch.equal(third, ref)


def test_output_pool_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("SPARSEMB_OUTPUT_POOL", "0")
    out = _memory.output(2048, 1024, torch.float32)
    assert out.shape == (2048, 1024)
    assert all(s.data_ptr() != out.data_ptr() for s in _memory._pool._storages)


def test_giant_outputs_are_not_kept(monkeypatch):
    monkeypatch.setattr(_memory, "POOL_MAX_BUFFER", 8 << 20)
    before = [id(s) for s in _memory._pool._storages]
    out = _memory.output(4096, 1024, torch.float32)  # 16 MiB > the cap
    assert out.shape == (4096, 1024)
    assert [id(s) for s in _memory._pool._storages] == before


@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.0, float("inf")])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_max_norm_one_pass_equals_torch_over_steps(index_dtype, norm_type):
    """The blocked gather + norm check, on outputs large enough for the pool and several blocks:
    first call renorms most rows, the second finds none over; both equal torch bit for bit
    (weights and outputs; float32: the renorm scale is divided in double, as torch's), with
    duplicates and a strided index view."""
    gen = torch.Generator().manual_seed(11)
    weight = torch.randn(3000, 256, generator=gen) * (torch.rand(3000, 1, generator=gen) * 2)
    ours = sparsemb.Embedding.from_pretrained(weight.clone(), max_norm=5.0, norm_type=norm_type)
    theirs = torch.nn.Embedding.from_pretrained(weight.clone(), max_norm=5.0, norm_type=norm_type)
    base = (torch.rand(2, 20000, generator=gen) ** 2 * 3000).to(index_dtype)
    idx = base[:, ::2]  # strided: (2, 10000) -> 20,000 rows, 20 MB of output, 3 blocks
    for _ in range(2):
        out = ours(idx.clone())
        ref = theirs(idx.clone().long())
        assert torch.equal(out, ref)
        assert torch.equal(ours.weight, theirs.weight)


def test_inf_norm_equals_torchs_vector_norm():
    """p = inf rows are normed as max(amax, -amin): the very values of torch's vector_norm,
    NaN, inf, -0.0 and all-negative rows included, in every float dtype."""
    from sparsemb.torch_backend import renorm as torch_renorm

    gen = torch.Generator().manual_seed(5)
    rows = torch.randn(300, 33, generator=gen, dtype=torch.float64) * 10
    rows[3, 4], rows[5, 0], rows[6] = float("nan"), float("inf"), -0.0
    rows[7, :], rows[8, 2] = -torch.rand(33, generator=gen, dtype=torch.float64), float("-inf")
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        table = rows.to(dtype)
        ours = torch_renorm.row_norms(table, float("inf"))
        theirs = torch.linalg.vector_norm(table.to(ours.dtype), float("inf"), dim=1)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("norm_type", [0.5, 1.0, 2.0, 3.0, float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_one_pass_renorm_equals_two_steps_at_max_norm(norm_type, dtype):
    """Rows whose norm lies a few ulp either side of max_norm (where rows sit once renormed):
    the one-pass lookup renorms exactly the rows the two-step renorm + gather does, bit for
    bit, in weights and outputs."""
    from sparsemb.torch_backend import renorm as torch_renorm

    gen = torch.Generator().manual_seed(int(min(norm_type, 99) * 10))
    max_norm, dim = 1.7, 128
    rows = torch.randn(400, dim, generator=gen, dtype=torch.float64)
    exact = torch_renorm.row_norms(rows.to(dtype), norm_type).double()
    steps = torch.randint(-6, 7, (400, 1), generator=gen).double()
    ulp = torch.finfo(dtype).eps
    rows = (rows * (max_norm / exact).unsqueeze(1) * (1 + steps * ulp)).to(dtype)
    over = torch_renorm.row_norms(rows, norm_type) > max_norm
    assert over.any() and (~over).any()  # the rows straddle max_norm
    idx = torch.randint(0, 400, (900,), generator=gen)
    one_pass, two_step = rows.clone(), rows.clone()
    out = torch_renorm.gather_renormed_(one_pass, idx, max_norm, norm_type)
    torch_renorm.renorm_(two_step, idx, max_norm, norm_type)
    assert torch.equal(one_pass, two_step) and torch.equal(out, two_step[idx])
