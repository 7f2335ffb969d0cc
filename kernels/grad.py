"""Deduplicated embedding gradient: sort, then a deterministic two-stage segment reduce.

The batch's indices are sorted (stably, so equal rows keep batch order) and cut into segments,
one per unique row. Long segments (hot rows under Zipf traffic) are split into chunks of at most
``CHUNK`` positions so that no program walks thousands of rows alone:
  1. ``_chunk_sum_kernel``: one program per (chunk, column block) sums its gradient rows in
     float32 into a partial-sum buffer;
  2. ``_segment_sum_kernel``: one program per (kept unique row, column block) adds that row's
     chunk partials in chunk order, divides by the count (scale_grad_by_freq), and writes the
     row either to position i of the sparse values or to row ``unique[i]`` of a dense gradient.
Every sum runs in a fixed order, so the result is bit-identical run to run; there are no atomics.
The padding row and rows outside the table are dropped before stage 2. All offsets are int64.
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


@triton.jit
def _chunk_sum_kernel(
    grad_ptr,  # (N, D) output gradient, row stride stride_gn, unit column stride
    perm_ptr,  # (N,) int64 positions of the sorted indices in the batch
    chunk_start_ptr,  # (C,) int64 first sorted position of each chunk
    chunk_end_ptr,  # (C,) int64 one past the last sorted position of each chunk
    partial_ptr,  # (C, D) float32 partial sums, contiguous
    n_chunks,  # C
    dim,  # D
    stride_gn,  # elements between gradient rows
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
    pos = start[:, None] + tl.arange(0, CHUNK).to(tl.int64)[None, :]  # (CHUNKS, CHUNK)
    live = pos < end[:, None]
    src = tl.load(perm_ptr + pos, mask=live, other=0).to(tl.int64)
    tile = tl.load(
        grad_ptr + src[:, :, None] * stride_gn + cols[None, None, :],
        mask=live[:, :, None] & in_row[None, None, :],
        other=0.0,
    ).to(tl.float32)  # (CHUNKS, CHUNK, BLOCK_D)
    tl.store(
        partial_ptr + chunk[:, None] * dim + cols[None, :],
        tl.sum(tile, axis=1),
        mask=live_chunk[:, None] & in_row[None, :],
    )


@triton.jit
def _segment_sum_kernel(
    partial_ptr,  # (C, D) float32 chunk partial sums
    seg_ptr,  # (K,) int64 segment number of each kept unique row
    chunk_offsets_ptr,  # (U + 1,) int64 first chunk of each segment
    offsets_ptr,  # (U + 1,) int64 first sorted position of each segment
    unique_ptr,  # (U,) int64 unique rows (for the dense destination)
    out_ptr,  # (K, D) sparse values or (V, D) dense gradient, contiguous
    n_kept,  # K
    num_rows,  # V of a dense destination: rows outside [0, V) (unchecked input) are not written
    dim,  # D
    SEGS: tl.constexpr,  # kept rows per program (several when D is small)
    SCALE_BY_FREQ: tl.constexpr,  # divide by the row's count in the batch
    DENSE: tl.constexpr,  # write to row unique[seg] instead of row i
    BLOCK_D: tl.constexpr,  # columns per program
):
    # int64: row * dim overflows int32 on big tables.
    i = tl.program_id(0).to(tl.int64) * SEGS + tl.arange(0, SEGS).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    in_row = cols < dim
    live = i < n_kept
    seg = tl.load(seg_ptr + i, mask=live, other=0)
    first = tl.load(chunk_offsets_ptr + seg, mask=live, other=0)
    n_chunks = tl.load(chunk_offsets_ptr + seg + 1, mask=live, other=0) - first
    acc = tl.zeros((SEGS, BLOCK_D), dtype=tl.float32)
    for k in range(0, tl.max(n_chunks, axis=0)):  # each row adds its chunks in order
        has = k < n_chunks
        acc += tl.load(
            partial_ptr + (first + k)[:, None] * dim + cols[None, :],
            mask=has[:, None] & in_row[None, :],
            other=0.0,
        )
    if SCALE_BY_FREQ:
        count = tl.load(offsets_ptr + seg + 1, mask=live, other=1) - tl.load(
            offsets_ptr + seg, mask=live, other=0
        )
        acc = acc / count.to(tl.float32)[:, None]
    if DENSE:
        dest = tl.load(unique_ptr + seg, mask=live, other=0).to(tl.int64)
        live = live & (dest >= 0) & (dest < num_rows)
    else:
        dest = i
    tl.store(
        out_ptr + dest[:, None] * dim + cols[None, :],
        round_nearest(acc, out_ptr.dtype.element_ty),
        mask=live[:, None] & in_row[None, :],
    )


def _segments(indices: torch.Tensor):
    """Stable sort of the indices and the segment/chunk tables both stages read."""
    sorted_rows, perm = torch.sort(indices.to(torch.int64), stable=True)
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
    return perm, unique, offsets, chunk_offsets, chunk_start, chunk_end


def _reduce(grad, indices, num_weights, padding_idx, scale_grad_by_freq, dense: bool):
    """Run both stages: the dense (num_weights, D) gradient, or (kept unique rows, values).

    Kept rows are those inside ``[0, num_weights)`` other than the padding row: an index outside
    the table (possible only with ``bounds_check="none"``) never reaches a gradient, so no
    optimizer can write outside the table.
    """
    dim = grad.shape[1]
    grad = grad if grad.stride(-1) == 1 else grad.contiguous()
    perm, unique, offsets, chunk_offsets, chunk_start, chunk_end = _segments(indices)
    seg = torch.arange(unique.numel(), device=grad.device)
    keep = (unique >= 0) & (unique < num_weights)
    if padding_idx >= 0:
        keep &= unique != padding_idx
    seg, unique_kept = seg[keep], unique[keep]
    if dense:
        out = torch.zeros(num_weights, dim, dtype=grad.dtype, device=grad.device)
    else:
        out = torch.empty(seg.numel(), dim, dtype=grad.dtype, device=grad.device)
    if seg.numel() == 0 or dim == 0:
        return out if dense else (unique_kept, out)
    block_d, segs_per_program, num_warps = tile_for(
        dim, max_block_d=MAX_BLOCK_D, elements=TILE_ELEMENTS
    )
    chunks_per_program = max(1, segs_per_program // CHUNK)
    d_blocks = triton.cdiv(dim, block_d)
    n_chunks, n_kept = chunk_start.numel(), seg.numel()
    partial = torch.empty(n_chunks, dim, dtype=torch.float32, device=grad.device)
    _chunk_sum_kernel[(triton.cdiv(n_chunks, chunks_per_program), d_blocks)](
        grad, perm, chunk_start, chunk_end, partial, n_chunks, dim, grad.stride(0),
        CHUNKS=chunks_per_program, CHUNK=CHUNK, BLOCK_D=block_d, num_warps=num_warps,
    )  # fmt: skip
    _segment_sum_kernel[(triton.cdiv(n_kept, segs_per_program), d_blocks)](
        partial, seg, chunk_offsets, offsets, unique, out, n_kept, out.shape[0], dim,
        SEGS=segs_per_program,
        SCALE_BY_FREQ=scale_grad_by_freq, DENSE=dense, BLOCK_D=block_d, num_warps=num_warps,
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
    block_d, segs, num_warps = tile_for(dim, max_block_d=MAX_BLOCK_D, elements=TILE_ELEMENTS)
    chunk = dict(kernel="_chunk_sum_kernel", num_warps=num_warps,
                 pointers={"grad_ptr": ptr, "perm_ptr": "*i64", "chunk_start_ptr": "*i64",
                           "chunk_end_ptr": "*i64", "partial_ptr": "*fp32"},
                 constexprs={"CHUNKS": max(1, segs // CHUNK), "CHUNK": CHUNK, "BLOCK_D": block_d})
    seg = dict(kernel="_segment_sum_kernel", num_warps=num_warps,
               pointers={"partial_ptr": "*fp32", "seg_ptr": "*i64", "chunk_offsets_ptr": "*i64",
                         "offsets_ptr": "*i64", "unique_ptr": "*i64", "out_ptr": ptr},
               constexprs={"SEGS": segs, "SCALE_BY_FREQ": True, "DENSE": False,
                           "BLOCK_D": block_d})
    return [{"label": "chunk_sum", "spec": chunk}, {"label": "segment_sum", "spec": seg}]
