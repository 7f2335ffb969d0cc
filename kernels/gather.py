"""Fused gather: the Triton kernel and its launcher.

``gather`` copies looked-up rows into a fresh (N, D) tensor, several rows per program for small
embedding_dim, with an optional bounds check fused in (one int32 flag the host reads once). The
indices may be a strided or expanded 1-D view (their stride is passed in).

Offsets are int64 throughout: ``row * row_stride`` passes 2^31 on tables over 2^31 elements.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparsemb.kernels.launch import on_device_of, tile_for

MAX_BLOCK_D = 512  # widest slice of a row one program holds; wider rows loop over slices
TILE_ELEMENTS = 4096  # rows x columns a program moves per step for small embedding_dim
MAX_ROWS = 64


def launch_shape(dim: int):
    """(BLOCK_D, ROWS, num_warps) of the gather and the renorm."""
    return tile_for(dim, max_block_d=MAX_BLOCK_D, elements=TILE_ELEMENTS, max_rows=MAX_ROWS)


@triton.jit(do_not_specialize=["n_indices"])  # changes every step: no recompiles
def _gather_kernel(
    weight_ptr,  # (V, D) table, any float dtype, strides (stride_wv, stride_wd)
    indices_ptr,  # (N,) int32 or int64 rows to read, stride stride_i (0 for expanded input)
    out_ptr,  # (N, D) output, contiguous, weight's dtype
    bad_ptr,  # (1,) int32 flag, set to 1 when an index lies outside [0, V)
    n_indices,  # N
    num_rows,  # V
    dim,  # D
    stride_wv,  # elements between rows of the table
    stride_wd,  # elements between columns of the table
    stride_i,  # elements between consecutive indices (a strided or expanded 1-D view)
    CHECK: tl.constexpr,  # fuse the bounds check
    ROWS: tl.constexpr,  # rows per program
    BLOCK_D: tl.constexpr,  # columns per step, a power of two
):
    # int64 from the start: pos * dim and row * stride_wv overflow int32 on big tables.
    pid = tl.program_id(0).to(tl.int64)
    pos = pid * ROWS + tl.arange(0, ROWS).to(tl.int64)
    in_batch = pos < n_indices
    rows = tl.load(indices_ptr + pos * stride_i, mask=in_batch, other=0).to(tl.int64)
    valid = in_batch & (rows >= 0) & (rows < num_rows)
    if CHECK:
        bad = tl.max((in_batch & ~valid).to(tl.int32), axis=0)
        tl.atomic_max(bad_ptr, bad)
    for start in range(0, dim, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D).to(tl.int64)
        in_row = cols < dim
        values = tl.load(
            weight_ptr + rows[:, None] * stride_wv + cols[None, :] * stride_wd,
            mask=valid[:, None] & in_row[None, :],
            other=0.0,
        )
        tl.store(
            out_ptr + pos[:, None] * dim + cols[None, :],
            values,
            mask=in_batch[:, None] & in_row[None, :],
        )


@on_device_of(0)
def gather(weight: torch.Tensor, indices: torch.Tensor, check_bounds: bool):
    """Rows ``weight[indices]`` as (N, D), and the bounds flag (a (1,) int32 tensor) or None.

    An out-of-range index reads zeros instead of memory outside the table; the caller raises.
    """
    n, (num_rows, dim) = indices.shape[0], weight.shape
    out = torch.empty(n, dim, dtype=weight.dtype, device=weight.device)
    bad = torch.zeros(1, dtype=torch.int32, device=weight.device) if check_bounds else None
    if n == 0:
        return out, bad
    block_d, rows, num_warps = launch_shape(dim)
    grid = (triton.cdiv(n, rows),)
    _gather_kernel[grid](
        weight, indices, out, bad if bad is not None else out, n, num_rows, dim,
        weight.stride(0), weight.stride(1), indices.stride(0),
        CHECK=check_bounds, ROWS=rows, BLOCK_D=block_d, num_warps=num_warps,
    )  # fmt: skip
    return out, bad


