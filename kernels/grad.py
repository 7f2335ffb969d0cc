"""Deduplicated embedding gradient: sort, then a deterministic, sync-free segment reduce.

The batch's indices are sorted (stably, so equal rows keep batch order); a *segment* is the run
of one row. Sorted positions are cut into aligned *windows* of ``CHUNK`` positions, so a hot row
(thousands of hits under Zipf traffic) spans many windows and no program walks it alone. Four
launches after the sort, sized by N alone (no host sync is needed to size them):
  0. (before the sort) ``_keys_kernel``: int64 indices to int32 keys, see ``sort_keys``;
  1. ``_flags_kernel``: one int32 flag per position: the position starts a kept segment (a row
     inside ``[0, num_weights)`` other than the padding row);
  2. ``torch.cumsum`` of the flags: each kept segment's output slot (its rank among kept rows);
  3. ``_window_kernel``: one program per (window, column block) adds the window's gradient
     rows in sorted order (one row per step of an unrolled loop, so all the row loads issue up
     front), each run of equal rows into one running sum written where the run ends. A run
     that is its whole segment (most rows) is final: scaled (scale_grad_by_freq) and written
     straight to its output row. The first and last runs of a window that belong
     to longer segments go to a float32 buffer of two partials per window;
  4. ``_tail_kernel``: one program per (window, column block); the window where a long segment
     ends adds that segment's partials in tiles of up to ``MAX_TILE`` windows (``tl.sum``, a
     fixed tree order, tiles in order), so the hottest row costs a few steps.
Every sum runs in a fixed order, so the result is bit-identical run to run; there are no atomics.
The sort takes int32 keys when the table has fewer than 2^31 rows (``sort_keys``: half the
radix passes of int64 keys on a GPU); an index outside the table becomes -1 or ``num_weights``
first (step 0), so a huge int64 value can never wrap onto a valid row. A caller that sorted the
same indices already (the max_norm renorm in forward) hands ``presorted=(sorted keys, perm)``
and the sort is skipped.
Rows outside the table and the padding row are never written. All offsets are int64; divisions
are IEEE-rounded (``div_rn``), as the CPU path's. The sparse result needs the number of kept rows
on the host (one read, after step 2); ``dedup_grad_padded`` skips even that, for the fused
optimizer step, by returning N slots whose unused rows hold ``num_weights`` (outside the table,
skipped by the optimizer kernels).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparsemb.kernels.launch import on_device_of, tile_for
from sparsemb.kernels.rounding import round_nearest

CHUNK = 16  # sorted positions per window
KEYS_BLOCK = 1024  # indices per program of the int32 key conversion
MAX_BLOCK_D = 128  # columns per tail program; wider rows use more column blocks
WINDOW_BLOCK_D = 256  # columns per window program: it holds one (BLOCK_D,) running sum
TILE_ELEMENTS = 4096  # elements of a tile of partials the tail kernel sums at once
MAX_TILE = 64  # windows' partials the tail kernel sums at once


@triton.jit(do_not_specialize=["n"])  # changes every step: no recompiles
def _keys_kernel(
    indices_ptr,  # (N,) int64 indices, element stride stride_i
    keys_ptr,  # (N,) int32 out: the index, or -1 / num_rows where it lies outside the table
    n,  # N
    num_rows,  # V < 2^31
    stride_i,  # elements between indices
    BLOCK: tl.constexpr,  # positions per program
):
    pos = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    live = pos < n
    index = tl.load(indices_ptr + pos * stride_i, mask=live, other=0)
    key = tl.minimum(tl.maximum(index, -1), num_rows)  # in int64: no value wraps
    tl.store(keys_ptr + pos, key.to(tl.int32), mask=live)


@triton.jit(do_not_specialize=["n"])  # changes every step: no recompiles
def _flags_kernel(
    sorted_ptr,  # (N,) int32/int64 sorted indices
    flags_ptr,  # (N,) int32 out: 1 where a kept segment starts
    n,  # N
    num_rows,  # V
    padding_idx,  # the padding row, or -1
    BLOCK: tl.constexpr,  # positions per program
):
    pos = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    live = pos < n
    key = tl.load(sorted_ptr + pos, mask=live, other=0).to(tl.int64)
    prev = tl.load(sorted_ptr + pos - 1, mask=live & (pos > 0), other=0).to(tl.int64)
    start = (pos == 0) | (key != prev)
    kept = (key >= 0) & (key < num_rows) & (key != padding_idx)
    tl.store(flags_ptr + pos, (start & kept).to(tl.int32), mask=live)


@triton.jit(do_not_specialize=["n"])  # changes every step: no recompiles
def _window_kernel(
    grad_ptr,  # (N, D) output gradient, row stride stride_gn, unit column stride
    sorted_ptr,  # (N,) sorted indices
    perm_ptr,  # (N,) int64 batch position of each sorted index
    slot_ptr,  # (N,) int64 inclusive cumsum of the kept-start flags: slot + 1 of each position
    out_ptr,  # (K, D) sparse values or (V, D) dense gradient, contiguous
    rows_ptr,  # (K,) int64 out: the row of each slot (sparse only)
    seg_start_ptr,  # (K,) int64 out: first sorted position of each kept segment
    partial_ptr,  # (2 * windows, D) float32 out: first/last run of a window in a long segment
    n,  # N
    num_rows,  # V
    padding_idx,  # the padding row, or -1
    dim,  # D
    stride_gn,  # elements between gradient rows
    SCALE_BY_FREQ: tl.constexpr,  # divide by the row's count in the batch
    DENSE: tl.constexpr,  # write to row ``row`` of a (V, D) gradient instead of slot
    CHUNK: tl.constexpr,  # positions per window
    BLOCK_D: tl.constexpr,  # columns per program
):
    """One window's runs, summed in sorted order: one gradient row added per position (the
    loop is unrolled, so every row's load is issued up front), each run written where it ends:
    a run that is its whole segment, final, to its output row; the first or last run of a
    longer segment to the window's partials (slot 0 if it starts the window, else slot 1)."""
    # int64: position * dim and row * stride_gn overflow int32 on big batches and tables. Masks
    # of a scalar condition and the columns are tl.where(cond, in_row, False): the interpreter
    # (triton 3.9) gives `scalar & vector` an int64 mask, which its loads reject.
    window = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    in_row = cols < dim
    p0 = window * CHUNK  # < n: the grid has cdiv(n, CHUNK) windows
    key = tl.load(sorted_ptr + p0).to(tl.int64)
    prev = tl.load(sorted_ptr + p0 - 1, mask=p0 > 0, other=0).to(tl.int64)
    starts = (p0 == 0) | (key != prev)  # this position starts its segment
    run_is_segment_head = starts  # the current run starts its segment
    run_first = p0
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for i in tl.static_range(CHUNK):
        pos = p0 + i
        live = pos < n
        nxt = tl.load(sorted_ptr + pos + 1, mask=pos + 1 < n, other=0).to(tl.int64)
        kept = live & (key >= 0) & (key < num_rows) & (key != padding_idx)
        src = tl.load(perm_ptr + pos, mask=live, other=0).to(tl.int64)
        row = tl.load(grad_ptr + src * stride_gn + cols, mask=tl.where(kept, in_row, False),
                      other=0.0)
        acc += row.to(tl.float32)
        seg_end = (pos == n - 1) | (nxt != key)
        run_end = live & (seg_end | (i == CHUNK - 1))
        whole = run_end & seg_end & run_is_segment_head
        slot = tl.load(slot_ptr + pos, mask=live, other=1) - 1
        final = acc
        if SCALE_BY_FREQ:
            count = (pos - run_first + 1).to(tl.float32)
            final = tl.div_rn(acc, count + tl.zeros_like(acc))
        dest = key if DENSE else slot
        tl.store(out_ptr + dest * dim + cols, round_nearest(final, out_ptr.dtype.element_ty),
                 mask=tl.where(whole & kept, in_row, False))
        part = window * 2 + (run_first != p0).to(tl.int64)
        tl.store(partial_ptr + part * dim + cols, acc,
                 mask=tl.where(run_end & ~whole & kept, in_row, False))
        if tl.program_id(1) == 0:
            tl.store(seg_start_ptr + slot, pos, mask=starts & kept)
            if not DENSE:
                tl.store(rows_ptr + slot, key, mask=starts & kept)
        # the next position: a new run after a run's end, a new segment after a segment's end
        acc = tl.where(run_end, 0.0, acc)
        run_is_segment_head = tl.where(run_end, seg_end, run_is_segment_head)
        run_first = tl.where(run_end, pos + 1, run_first)
        starts = seg_end
        key = nxt


@triton.jit(do_not_specialize=["n"])  # changes every step: no recompiles
def _tail_kernel(
    sorted_ptr,  # (N,) sorted indices
    slot_ptr,  # (N,) int64 inclusive cumsum of the kept-start flags
    seg_start_ptr,  # (K,) int64 first sorted position of each kept segment
    partial_ptr,  # (2 * windows, D) float32 partials of the windows' first/last runs
    out_ptr,  # (K, D) sparse values or (V, D) dense gradient, contiguous
    n,  # N
    num_rows,  # V
    padding_idx,  # the padding row, or -1
    dim,  # D
    SCALE_BY_FREQ: tl.constexpr,
    DENSE: tl.constexpr,
    CHUNK: tl.constexpr,  # positions per window
    TILE: tl.constexpr,  # windows' partials summed at once
    BLOCK_D: tl.constexpr,
):
    """The window where a multi-window segment ends finishes it: the segment's head (its first
    window's last run), the middle windows and this window's first run, summed in order."""
    window = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    in_row = cols < dim
    p0 = window * CHUNK
    key = tl.load(sorted_ptr + p0).to(tl.int64)
    prev = tl.load(sorted_ptr + p0 - 1, mask=p0 > 0, other=0).to(tl.int64)
    pos = p0 + tl.arange(0, CHUNK).to(tl.int64)
    same = tl.load(sorted_ptr + pos, mask=pos < n, other=0).to(tl.int64) == key
    end = p0 + tl.sum((same & (pos < n)).to(tl.int64), 0) - 1  # last position of the first run
    nxt = tl.load(sorted_ptr + end + 1, mask=end + 1 < n, other=0).to(tl.int64)
    continued = (p0 > 0) & (prev == key)
    ends_here = (end + 1 >= n) | (nxt != key)
    kept = (key >= 0) & (key < num_rows) & (key != padding_idx)
    if continued & ends_here & kept:
        slot = tl.load(slot_ptr + p0) - 1
        start = tl.load(seg_start_ptr + slot)
        first_window = start // CHUNK
        head = first_window * 2 + (start % CHUNK != 0).to(tl.int64)
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for w0 in range(first_window, window + 1, TILE):
            ws = w0 + tl.arange(0, TILE).to(tl.int64)
            part = tl.where(ws == first_window, head, ws * 2)
            acc += tl.sum(
                tl.load(
                    partial_ptr + part[:, None] * dim + cols[None, :],
                    mask=(ws <= window)[:, None] & in_row[None, :],
                    other=0.0,
                ),
                0,
            )
        if SCALE_BY_FREQ:
            acc = tl.div_rn(acc, (end - start + 1).to(tl.float32) + tl.zeros_like(acc))
        dest = key if DENSE else slot
        tl.store(out_ptr + dest * dim + cols, round_nearest(acc, out_ptr.dtype.element_ty),
                 mask=in_row)


@on_device_of(0)
def sort_keys(indices, num_weights: int):
    """(sorted keys, int64 permutation): a stable sort of the indices, as int32 keys when the
    table has fewer than 2^31 rows. An int64 index outside ``[0, num_weights)`` is first clamped
    to -1 or ``num_weights`` (``_keys_kernel``, one launch), so it stays outside the table rather
    than wrapping onto a valid row; every kernel reads the keys widened to int64."""
    keys = indices
    n = indices.shape[0]
    if indices.dtype == torch.int64 and num_weights < 2**31 and n:
        keys = torch.empty(n, dtype=torch.int32, device=indices.device)
        _keys_kernel[(triton.cdiv(n, KEYS_BLOCK),)](
            indices, keys, n, num_weights, indices.stride(0), BLOCK=KEYS_BLOCK, num_warps=4
        )
    return torch.sort(keys, stable=True)


def _tiles(dim: int):
    """(window tile, tail tile) launch shapes for embedding dim ``dim``."""
    window = tile_for(dim, max_block_d=WINDOW_BLOCK_D, elements=WINDOW_BLOCK_D, max_rows=1)
    tail = tile_for(dim, max_block_d=MAX_BLOCK_D, elements=TILE_ELEMENTS, max_rows=MAX_TILE)
    return window, tail


@on_device_of(0)
def _reduce(grad, indices, num_weights, padding_idx, scale_grad_by_freq, *, dense, padded=False,
            presorted=None):
    """The dense (num_weights, D) gradient, or (kept unique rows, values); with ``padded``,
    N slots whose unused rows hold ``num_weights``, with no host read at all. ``presorted``:
    ``sort_keys(indices, num_weights)`` computed earlier, reused instead of sorting again."""
    n, dim = grad.shape
    device = grad.device
    grad = grad if grad.stride(-1) == 1 else grad.contiguous()
    if dense:
        out = torch.zeros(num_weights, dim, dtype=grad.dtype, device=device)
        if n == 0 or dim == 0:
            return out
    elif n == 0 or dim == 0:  # no values to sum: only the kept rows
        rows = torch.unique(indices).to(torch.int64)
        rows = rows[(rows >= 0) & (rows < num_weights) & (rows != padding_idx)]
        return rows, grad.new_empty(rows.numel(), dim)
    sorted_rows, perm = presorted if presorted is not None else sort_keys(indices, num_weights)
    flags = torch.empty(n, dtype=torch.int32, device=device)
    _flags_kernel[(triton.cdiv(n, 1024),)](
        sorted_rows, flags, n, num_weights, padding_idx, BLOCK=1024, num_warps=4
    )
    slot = torch.cumsum(flags, 0)  # int64
    if dense:
        rows = seg_start = torch.empty(n, dtype=torch.int64, device=device)
    elif padded:
        rows = torch.full((n,), num_weights, dtype=torch.int64, device=device)
        out = torch.empty(n, dim, dtype=grad.dtype, device=device)
        seg_start = torch.empty(n, dtype=torch.int64, device=device)
    else:
        kept = int(slot[-1])  # the one host read: the sparse gradient's nnz
        rows = torch.empty(kept, dtype=torch.int64, device=device)
        out = torch.empty(kept, dim, dtype=grad.dtype, device=device)
        seg_start = torch.empty(kept, dtype=torch.int64, device=device)
        if kept == 0:
            return rows, out
    windows = triton.cdiv(n, CHUNK)
    partial = torch.empty(2 * windows, dim, dtype=torch.float32, device=device)
    window_tile, tail_tile = _tiles(dim)
    _window_kernel[(windows, triton.cdiv(dim, window_tile.block_d))](
        grad, sorted_rows, perm, slot, out, rows, seg_start, partial, n, num_weights,
        padding_idx, dim, grad.stride(0),
        SCALE_BY_FREQ=scale_grad_by_freq, DENSE=dense, CHUNK=CHUNK,
        BLOCK_D=window_tile.block_d, num_warps=window_tile.num_warps,
    )  # fmt: skip
    _tail_kernel[(windows, triton.cdiv(dim, tail_tile.block_d))](
        sorted_rows, slot, seg_start, partial, out, n, num_weights, padding_idx, dim,
        SCALE_BY_FREQ=scale_grad_by_freq, DENSE=dense, CHUNK=CHUNK, TILE=tail_tile.rows,
        BLOCK_D=tail_tile.block_d, num_warps=tail_tile.num_warps,
    )  # fmt: skip
    return out if dense else (rows, out)


def dedup_grad(grad, indices, num_weights: int, padding_idx: int, scale_grad_by_freq: bool, *,
               presorted=None):
    """(unique rows ascending, summed gradient rows) of the rows inside the table, without the
    padding row. One host read: the number of kept rows."""
    return _reduce(grad, indices, num_weights, padding_idx, scale_grad_by_freq, dense=False,
                   presorted=presorted)


def dedup_grad_padded(grad, indices, num_weights: int, padding_idx: int, scale_grad_by_freq, *,
                      presorted=None):
    """``dedup_grad`` in N slots, without a host read: the kept rows ascending first, then rows
    holding ``num_weights`` (outside the table: optimizer kernels skip them) with unset values."""
    return _reduce(grad, indices, num_weights, padding_idx, scale_grad_by_freq, dense=False,
                   padded=True, presorted=presorted)


def dense_grad(grad, indices, num_weights: int, padding_idx: int, scale_grad_by_freq: bool, *,
               presorted=None):
    """The (num_weights, D) gradient: the same reduction written into a zeroed buffer."""
    return _reduce(grad, indices, num_weights, padding_idx, scale_grad_by_freq, dense=True,
                   presorted=presorted)


def compile_cases(dim: int, ptr: str) -> list[dict]:
    """The specialisations ``scripts/sm90_compile.py`` compiles for gradients of type ``ptr``:
    int32 sorted keys (tables under 2^31 rows, the usual case) at every dim and dtype, int64 keys
    for float32; the kernels that read no gradient (keys, flags) once, at float32 D=128."""
    window, tail = _tiles(dim)
    common = {"SCALE_BY_FREQ": True, "DENSE": False, "CHUNK": CHUNK}
    key_types = ("*i32", "*i64") if ptr == "*fp32" else ("*i32",)
    cases = []
    if ptr == "*fp32" and dim == 128:
        cases.append({"label": "keys", "spec": dict(
            kernel="_keys_kernel", num_warps=4, constexprs={"BLOCK": KEYS_BLOCK},
            pointers={"indices_ptr": "*i64", "keys_ptr": "*i32"})})
        for key in ("*i32", "*i64"):
            cases.append({"label": f"flags keys={key[1:]}", "spec": dict(
                kernel="_flags_kernel", num_warps=4, constexprs={"BLOCK": 1024},
                pointers={"sorted_ptr": key, "flags_ptr": "*i32"})})
    for key in key_types:
        cases.append({"label": f"window keys={key[1:]}", "spec": dict(
            kernel="_window_kernel", num_warps=window.num_warps,
            constexprs=dict(common, BLOCK_D=window.block_d),
            pointers={"grad_ptr": ptr, "sorted_ptr": key, "perm_ptr": "*i64",
                      "slot_ptr": "*i64", "out_ptr": ptr, "rows_ptr": "*i64",
                      "seg_start_ptr": "*i64", "partial_ptr": "*fp32"})})
        cases.append({"label": f"tail keys={key[1:]}", "spec": dict(
            kernel="_tail_kernel", num_warps=tail.num_warps,
            constexprs=dict(common, TILE=tail.rows, BLOCK_D=tail.block_d),
            pointers={"sorted_ptr": key, "slot_ptr": "*i64", "seg_start_ptr": "*i64",
                      "partial_ptr": "*fp32", "out_ptr": ptr})})
    return cases
