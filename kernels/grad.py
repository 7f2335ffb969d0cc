"""Deduplicated embedding gradient: sort, then a deterministic two-stage segment reduce.

The batch's indices are sorted (stably, so equal rows keep batch order) and cut into segments,
one per unique row. Long segments (hot rows under Zipf traffic) are split into chunks of at most
``CHUNK`` positions so that no program walks thousands of rows alone:
  1. ``_chunk_sum_kernel``: one program per (chunks, column block) sums each chunk's gradient
     rows in float32. A chunk that is its whole segment (most rows: under Zipf traffic ~3/4 of
     the unique rows are seen fewer than CHUNK times) is final: it is scaled (scale_grad_by_freq)
     and written straight to its output row. The chunks of longer segments go to a float32
     partial-sum buffer;
  2. ``_segment_sum_kernel``: one program per (kept unique row, column block); rows with two or
     more chunks add their partials in tiles of up to ``MAX_TILE_CHUNKS`` consecutive chunks
     (``tl.sum`` in a fixed tree order), so the hottest row costs a few steps, not one
     dependent load per chunk. The row is written either to position i of the sparse values or
     to row ``unique[i]`` of a dense gradient.
Every sum runs in a fixed order, so the result is bit-identical run to run; there are no atomics.
The padding row and rows outside the table are never written. All offsets are int64. Divisions
are IEEE-rounded (``div_rn``), as the CPU path's.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparsemb.kernels.launch import tile_for
from sparsemb.kernels.rounding import round_nearest

CHUNK = 32  # gradient rows one stage-1 program sums
MAX_BLOCK_D = 256  # columns per program; wider rows use more column blocks
TILE_ELEMENTS = 4096  # elements a program reduces per step; small D packs several rows
MAX_TILE_CHUNKS = 64  # chunk partials stage 2 sums at once


@triton.jit
def _chunk_sum_kernel(
    grad_ptr,  # (N, D) output gradient, row stride stride_gn, unit column stride
    perm_ptr,  # (N,) int64 positions of the sorted indices in the batch
    chunk_start_ptr,  # (C,) int64 first sorted position of each chunk
    chunk_end_ptr,  # (C,) int64 one past the last sorted position of each chunk
    chunk_dest_ptr,  # (C,) int64 output row of a chunk that is its whole kept segment, else -1
    partial_ptr,  # (C, D) float32 partial sums of the chunks of multi-chunk segments
    out_ptr,  # (K, D) sparse values or (V, D) dense gradient, contiguous
    n_chunks,  # C
    dim,  # D
    stride_gn,  # elements between gradient rows
    SCALE_BY_FREQ: tl.constexpr,  # divide a single-chunk segment by its count
    CHUNKS: tl.constexpr,  # chunks per program (several when D is small)
    CHUNK: tl.constexpr,  # max positions per chunk
    BLOCK_D: tl.constexpr,  # columns per program
):
    # int64: chunk * dim and row * stride_gn overflow int32 on big batches and tables.
    chunk = tl.program_id(0).to(tl.int64) * CHUNKS + tl.arange(0, CHUNKS).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    in_row = cols < dim
    live_chunk = chunk < n_chunks
    start = tl.load(chunk_start_ptr + chunk, mask=live_chunk, other=0)
    end = tl.load(chunk_end_ptr + chunk, mask=live_chunk, other=0)
    dest = tl.load(chunk_dest_ptr + chunk, mask=live_chunk, other=-1)
    pos = start[:, None] + tl.arange(0, CHUNK).to(tl.int64)[None, :]  # (CHUNKS, CHUNK)
    live = pos < end[:, None]
    src = tl.load(perm_ptr + pos, mask=live, other=0).to(tl.int64)
    tile = tl.load(
        grad_ptr + src[:, :, None] * stride_gn + cols[None, None, :],
        mask=live[:, :, None] & in_row[None, None, :],
        other=0.0,
    ).to(tl.float32)  # (CHUNKS, CHUNK, BLOCK_D)
    acc = tl.sum(tile, axis=1)
    whole = dest >= 0  # the chunk is its segment: write the final row, skip stage 2
    tl.store(
        partial_ptr + chunk[:, None] * dim + cols[None, :],
        acc,
        mask=(live_chunk & ~whole)[:, None] & in_row[None, :],
    )
    if SCALE_BY_FREQ:
        acc = tl.div_rn(acc, tl.maximum(end - start, 1).to(tl.float32)[:, None])
    tl.store(
        out_ptr + dest[:, None] * dim + cols[None, :],
        round_nearest(acc, out_ptr.dtype.element_ty),
        mask=(live_chunk & whole)[:, None] & in_row[None, :],
    )


@triton.jit
def _segment_sum_kernel(
    partial_ptr,  # (C, D) float32 chunk partial sums
    seg_ptr,  # (K,) int64 segment number of each kept unique row
    chunk_offsets_ptr,  # (U + 1,) int64 first chunk of each segment
    offsets_ptr,  # (U + 1,) int64 first sorted position of each segment
    unique_ptr,  # (U,) int64 unique rows (for the dense destination)
    out_ptr,  # (K, D) sparse values or (V, D) dense gradient, contiguous
    num_rows,  # V of a dense destination: rows outside [0, V) (unchecked input) are not written
    dim,  # D
    SCALE_BY_FREQ: tl.constexpr,  # divide by the row's count in the batch
    DENSE: tl.constexpr,  # write to row unique[seg] instead of row i
    TILE: tl.constexpr,  # chunk partials summed at once (tl.sum: a fixed tree order)
    BLOCK_D: tl.constexpr,  # columns per program
):
    """One kept segment of two or more chunks per program (single-chunk segments were written
    by stage 1): its partials in tiles of TILE consecutive chunks, each tile reduced with
    tl.sum and the tiles added in order, so a hot row costs ceil(chunks / TILE) steps."""
    i = tl.program_id(0).to(tl.int64)  # int64: row * dim overflows int32 on big tables
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    in_row = cols < dim
    seg = tl.load(seg_ptr + i)
    first = tl.load(chunk_offsets_ptr + seg)
    n_chunks = tl.load(chunk_offsets_ptr + seg + 1) - first
    if n_chunks > 1:
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for k in range(0, n_chunks, TILE):
            ks = k + tl.arange(0, TILE).to(tl.int64)
            tile = tl.load(
                partial_ptr + (first + ks)[:, None] * dim + cols[None, :],
                mask=(ks < n_chunks)[:, None] & in_row[None, :],
                other=0.0,
            )
            acc += tl.sum(tile, axis=0)
        if SCALE_BY_FREQ:
            count = tl.load(offsets_ptr + seg + 1) - tl.load(offsets_ptr + seg)
            acc = tl.div_rn(acc, count.to(tl.float32))
        if DENSE:
            dest = tl.load(unique_ptr + seg).to(tl.int64) + tl.zeros((BLOCK_D,), tl.int64)
            live = in_row & (dest >= 0) & (dest < num_rows)
        else:
            dest = i + tl.zeros((BLOCK_D,), tl.int64)
            live = in_row
        tl.store(
            out_ptr + dest * dim + cols, round_nearest(acc, out_ptr.dtype.element_ty), mask=live
        )


def _segments(indices: torch.Tensor):
    """Stable sort of the indices and the segment/chunk tables both stages read."""
    sorted_rows, perm = torch.sort(indices, stable=True)
    unique, counts = torch.unique_consecutive(sorted_rows, return_counts=True)
    offsets = torch.zeros(unique.numel() + 1, dtype=torch.int64, device=indices.device)
    torch.cumsum(counts, 0, out=offsets[1:])
    n_chunks = (counts + CHUNK - 1) // CHUNK
    chunk_offsets = torch.zeros_like(offsets)
    torch.cumsum(n_chunks, 0, out=chunk_offsets[1:])
    total = int(chunk_offsets[-1])
    chunk_seg = torch.repeat_interleave(
        torch.arange(unique.numel(), device=indices.device), n_chunks, output_size=total
    )
    rank = torch.arange(total, device=indices.device) - chunk_offsets[chunk_seg]
    chunk_start = offsets[chunk_seg] + rank * CHUNK
    chunk_end = torch.minimum(chunk_start + CHUNK, offsets[chunk_seg + 1])
    return perm, unique.to(torch.int64), offsets, chunk_offsets, chunk_seg, chunk_start, chunk_end


def _reduce(grad, indices, num_weights, padding_idx, scale_grad_by_freq, dense: bool):
    """Run both stages: the dense (num_weights, D) gradient, or (kept unique rows, values).

    Kept rows are those inside ``[0, num_weights)`` other than the padding row: an index outside
    the table (possible only with ``bounds_check="none"``) never reaches a gradient, so no
    optimizer can write outside the table.
    """
    dim = grad.shape[1]
    grad = grad if grad.stride(-1) == 1 else grad.contiguous()
    perm, unique, offsets, chunk_offsets, chunk_seg, chunk_start, chunk_end = _segments(indices)
    keep = (unique >= 0) & (unique < num_weights)
    if padding_idx >= 0:
        keep &= unique != padding_idx
    seg = torch.arange(unique.numel(), device=grad.device)[keep]
    unique_kept = unique[keep]
    if dense:
        out = torch.zeros(num_weights, dim, dtype=grad.dtype, device=grad.device)
    else:
        out = torch.empty(seg.numel(), dim, dtype=grad.dtype, device=grad.device)
    if seg.numel() == 0 or dim == 0:
        return out if dense else (unique_kept, out)
    # a single-chunk kept segment goes straight to its output row (its rank among kept rows,
    # or its table row when dense); the others (-1) go through the partials and stage 2
    single = keep & (chunk_offsets[1:] - chunk_offsets[:-1] == 1)
    row_of_seg = unique if dense else torch.cumsum(keep, 0) - 1
    chunk_dest = torch.where(single, row_of_seg, -1)[chunk_seg]
    tile = tile_for(dim, max_block_d=MAX_BLOCK_D, elements=TILE_ELEMENTS)
    chunks_per_program = max(1, tile.rows // CHUNK)
    d_blocks = triton.cdiv(dim, tile.block_d)
    n_chunks = chunk_start.numel()
    partial = torch.empty(n_chunks, dim, dtype=torch.float32, device=grad.device)
    _chunk_sum_kernel[(triton.cdiv(n_chunks, chunks_per_program), d_blocks)](
        grad, perm, chunk_start, chunk_end, chunk_dest, partial, out, n_chunks, dim,
        grad.stride(0), SCALE_BY_FREQ=scale_grad_by_freq,
        CHUNKS=chunks_per_program, CHUNK=CHUNK, BLOCK_D=tile.block_d, num_warps=tile.num_warps,
    )  # fmt: skip
    _segment_sum_kernel[(seg.numel(), d_blocks)](
        partial, seg, chunk_offsets, offsets, unique, out, out.shape[0], dim,
        SCALE_BY_FREQ=scale_grad_by_freq, DENSE=dense,
        TILE=min(MAX_TILE_CHUNKS, tile.rows), BLOCK_D=tile.block_d, num_warps=tile.num_warps,
    )  # fmt: skip
    return out if dense else (unique_kept, out)


def dedup_grad(grad, indices, num_weights: int, padding_idx: int, scale_grad_by_freq: bool):
    """(unique rows ascending, summed gradient rows) of the rows inside the table, without the
    padding row."""
    return _reduce(grad, indices, num_weights, padding_idx, scale_grad_by_freq, dense=False)


def dense_grad(grad, indices, num_weights: int, padding_idx: int, scale_grad_by_freq: bool):
    """The (num_weights, D) gradient: the same reduction written into a zeroed buffer."""
    return _reduce(grad, indices, num_weights, padding_idx, scale_grad_by_freq, dense=True)


def compile_cases(dim: int, ptr: str) -> list[dict]:
    """The specialisations ``scripts/sm90_compile.py`` compiles for gradients of type ``ptr``."""
    tile = tile_for(dim, max_block_d=MAX_BLOCK_D, elements=TILE_ELEMENTS)
    chunk = dict(kernel="_chunk_sum_kernel", num_warps=tile.num_warps,
                 pointers={"grad_ptr": ptr, "perm_ptr": "*i64", "chunk_start_ptr": "*i64",
                           "chunk_end_ptr": "*i64", "chunk_dest_ptr": "*i64",
                           "partial_ptr": "*fp32", "out_ptr": ptr},
                 constexprs={"SCALE_BY_FREQ": True, "CHUNKS": max(1, tile.rows // CHUNK),
                             "CHUNK": CHUNK, "BLOCK_D": tile.block_d})
    seg = dict(kernel="_segment_sum_kernel", num_warps=tile.num_warps,
               pointers={"partial_ptr": "*fp32", "seg_ptr": "*i64", "chunk_offsets_ptr": "*i64",
                         "offsets_ptr": "*i64", "unique_ptr": "*i64", "out_ptr": ptr},
               constexprs={"SCALE_BY_FREQ": True, "DENSE": False,
                           "TILE": min(MAX_TILE_CHUNKS, tile.rows), "BLOCK_D": tile.block_d})
    return [{"label": "chunk_sum", "spec": chunk}, {"label": "segment_sum", "spec": seg}]
