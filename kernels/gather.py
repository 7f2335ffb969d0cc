"""Fused gather and in-place max_norm renorm: Triton kernels and their launchers.

``gather`` copies looked-up rows into a fresh (N, D) tensor, several rows per program for small
embedding_dim, with an optional bounds check fused in (one int32 flag the host reads once).
``renorm_rows_`` rescales, in place, each *unique* looked-up row whose norm exceeds max_norm:
the caller deduplicates first, so no two programs ever own one row (race-free with duplicates),
and the gather that follows reads the renormalized rows.

Offsets are int64 throughout: ``row * row_stride`` passes 2^31 on tables over 2^31 elements.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from sparsemb.kernels.rounding import round_nearest

NORM_GENERAL, NORM_ONE, NORM_TWO, NORM_INF = 0, 1, 2, 3
MAX_BLOCK_D = 512  # widest slice of a row one program holds; wider rows loop over slices
TILE_ELEMENTS = 4096  # rows x columns a program moves per step for small embedding_dim


def launch_shape(dim: int) -> tuple[int, int]:
    """(BLOCK_D, ROWS): a power-of-two slice of the row and how many rows a program handles."""
    block_d = min(triton.next_power_of_2(max(dim, 1)), MAX_BLOCK_D)
    rows = max(1, min(64, TILE_ELEMENTS // block_d))
    return block_d, rows


@triton.jit
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


def gather(weight: torch.Tensor, indices: torch.Tensor, check_bounds: bool):
    """Rows ``weight[indices]`` as (N, D), and the bounds flag (a (1,) int32 tensor) or None.

    An out-of-range index reads zeros instead of memory outside the table; the caller raises.
    """
    n, (num_rows, dim) = indices.shape[0], weight.shape
    out = torch.empty(n, dim, dtype=weight.dtype, device=weight.device)
    bad = torch.zeros(1, dtype=torch.int32, device=weight.device) if check_bounds else None
    if n == 0:
        return out, bad
    block_d, rows = launch_shape(dim)
    grid = (triton.cdiv(n, rows),)
    _gather_kernel[grid](
        weight, indices, out, bad if bad is not None else out, n, num_rows, dim,
        weight.stride(0), weight.stride(1), indices.stride(0),
        CHECK=check_bounds, ROWS=rows, BLOCK_D=block_d,
    )  # fmt: skip
    return out, bad


@triton.jit
def _row_norms(x, p, NORM: tl.constexpr):
    """Partial norm accumulator of a (ROWS, BLOCK_D) float32 tile, reduced over columns."""
    a = tl.abs(x)
    if NORM == 1:
        return tl.sum(a, axis=1)
    elif NORM == 2:
        return tl.sum(a * a, axis=1)
    elif NORM == 3:
        return tl.max(a, axis=1)
    else:
        safe = tl.where(a > 0, a, 1.0)  # |x|^p = exp(p log|x|); 0^p = 0 without log(0)
        return tl.sum(tl.where(a > 0, tl.exp(p * tl.log(safe)), 0.0), axis=1)


@triton.jit
def _renorm_kernel(
    weight_ptr,  # (V, D) table, rescaled in place
    rows_ptr,  # (U,) int64 unique rows to renormalize
    n_rows,  # U
    num_rows,  # V: rows outside [0, V) (possible with bounds_check="none") are left alone
    dim,  # D
    stride_wv,  # elements between rows of the table
    stride_wd,  # elements between columns of the table
    max_norm,  # float: rows with norm > max_norm are scaled to max_norm
    p,  # float: norm_type
    eps,  # float: torch's 1e-7 added to the norm
    NORM: tl.constexpr,  # NORM_GENERAL / NORM_ONE / NORM_TWO / NORM_INF
    ROWS: tl.constexpr,  # rows per program
    BLOCK_D: tl.constexpr,  # columns per step
):
    pid = tl.program_id(0).to(tl.int64)  # int64: row * stride_wv overflows int32 on big tables
    pos = pid * ROWS + tl.arange(0, ROWS).to(tl.int64)
    rows = tl.load(rows_ptr + pos, mask=pos < n_rows, other=0).to(tl.int64)
    live = (pos < n_rows) & (rows >= 0) & (rows < num_rows)
    base = weight_ptr + rows[:, None] * stride_wv
    acc = tl.zeros((ROWS,), dtype=tl.float32)
    has_nan = tl.zeros((ROWS,), dtype=tl.int32)
    for start in range(0, dim, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D).to(tl.int64)
        mask = live[:, None] & (cols < dim)[None, :]
        x = tl.load(base + cols[None, :] * stride_wd, mask=mask, other=0.0).to(tl.float32)
        has_nan = tl.maximum(has_nan, tl.max((x != x).to(tl.int32), axis=1))
        part = _row_norms(x, p, NORM)
        if NORM == 3:
            acc = tl.maximum(acc, part)
        else:
            acc += part
    if NORM == 2:
        norm = tl.sqrt(acc)
    elif NORM == 0:
        norm = tl.where(acc > 0, tl.exp(tl.log(tl.where(acc > 0, acc, 1.0)) / p), 0.0)
    else:
        norm = acc
    # A row holding NaN has a NaN norm in torch, and NaN > max_norm is false: torch leaves the
    # row alone. Only NORM_TWO and NORM_ONE propagate NaN through the sums; max and exp/log don't.
    over = live & (norm > max_norm) & (has_nan == 0)
    scale = max_norm / (norm + eps)
    for start in range(0, dim, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D).to(tl.int64)
        mask = over[:, None] & (cols < dim)[None, :]
        ptrs = base + cols[None, :] * stride_wd
        x = tl.load(ptrs, mask=mask, other=0.0)
        scaled = x.to(tl.float32) * scale[:, None]
        tl.store(ptrs, round_nearest(scaled, weight_ptr.dtype.element_ty), mask=mask)


def norm_kind(norm_type: float) -> int:
    if math.isinf(norm_type):
        return NORM_INF
    return {1.0: NORM_ONE, 2.0: NORM_TWO}.get(float(norm_type), NORM_GENERAL)


def renorm_rows_(
    weight: torch.Tensor, unique_rows: torch.Tensor, max_norm: float, norm_type: float, eps: float
) -> None:
    """Rescale in place the given *unique* rows whose norm exceeds max_norm (rows outside the
    table, which only unchecked input can bring, are skipped rather than written)."""
    n, dim = unique_rows.shape[0], weight.shape[1]
    if n == 0 or dim == 0:
        return
    block_d, rows = launch_shape(dim)
    grid = (triton.cdiv(n, rows),)
    _renorm_kernel[grid](
        weight, unique_rows, n, weight.shape[0], dim, weight.stride(0), weight.stride(1),
        float(max_norm), float(norm_type), float(eps),
        NORM=norm_kind(norm_type), ROWS=rows, BLOCK_D=block_d,
    )  # fmt: skip
