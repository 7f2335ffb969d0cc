"""In-place max_norm renorm of the looked-up rows: the Triton kernel and its launcher.

``renorm_rows_`` rescales, in place, each looked-up row whose norm exceeds max_norm, once: it
takes the *sorted* indices (the stable sort backward reuses, ``grad.sort_keys``), and only the
first position of each run of equal rows acts, so no two programs ever own one row (race-free
with duplicates) and no ``unique`` (a host sync) is needed. The gather that follows reads the
renormalized rows. Norms 1, 2, any p > 0 and inf are computed in float32; a row holding NaN is
left alone, as torch leaves it.

Offsets are int64 throughout: ``row * row_stride`` passes 2^31 on tables over 2^31 elements.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from sparsemb.kernels.gather import launch_shape
from sparsemb.kernels.launch import on_device_of
from sparsemb.kernels.rounding import round_nearest

NORM_GENERAL, NORM_ONE, NORM_TWO, NORM_INF = 0, 1, 2, 3


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


@triton.jit(do_not_specialize=["n_rows"])  # changes every step: no recompiles
def _renorm_kernel(
    weight_ptr,  # (V, D) table, rescaled in place
    rows_ptr,  # (N,) int32/int64 rows, ascending: equal rows are adjacent
    n_rows,  # N
    num_rows,  # V: rows outside [0, V) (possible with bounds_check="none") are left alone
    dim,  # D
    stride_wv,  # elements between rows of the table
    stride_wd,  # elements between columns of the table
    max_norm,  # float: rows over it are scaled to max_norm
    threshold,  # float: a row is over where its float32 norm > threshold (comparison_threshold)
    p,  # float: norm_type
    eps,  # float: torch's 1e-7 added to the norm
    NORM: tl.constexpr,  # NORM_GENERAL / NORM_ONE / NORM_TWO / NORM_INF
    ROWS: tl.constexpr,  # rows per program
    BLOCK_D: tl.constexpr,  # columns per step
):
    pid = tl.program_id(0).to(tl.int64)  # int64: row * stride_wv overflows int32 on big tables
    pos = pid * ROWS + tl.arange(0, ROWS).to(tl.int64)
    rows = tl.load(rows_ptr + pos, mask=pos < n_rows, other=0).to(tl.int64)
    prev = tl.load(rows_ptr + pos - 1, mask=(pos < n_rows) & (pos > 0), other=0).to(tl.int64)
    first = (pos == 0) | (rows != prev)  # only the first of a run of equal rows acts
    live = (pos < n_rows) & first & (rows >= 0) & (rows < num_rows)
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
        norm = tl.sqrt_rn(acc)
    elif NORM == 0:
        norm = tl.where(acc > 0, tl.exp(tl.div_rn(tl.log(tl.where(acc > 0, acc, 1.0)), p)), 0.0)
    else:
        norm = acc
    # A row holding NaN has a NaN norm in torch, and NaN > max_norm is false: torch leaves the
    # row alone. Only NORM_TWO and NORM_ONE propagate NaN through the sums; max and exp/log don't.
    over = live & (norm > threshold) & (has_nan == 0)
    scale = tl.div_rn(max_norm + tl.zeros_like(norm), norm + eps)
    for start in range(0, dim, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D).to(tl.int64)
        mask = over[:, None] & (cols < dim)[None, :]
        ptrs = base + cols[None, :] * stride_wd
        x = tl.load(ptrs, mask=mask, other=0.0)
        scaled = x.to(tl.float32) * scale[:, None]
        tl.store(ptrs, round_nearest(scaled, weight_ptr.dtype.element_ty), mask=mask)


def comparison_threshold(max_norm: float, device: torch.device) -> float:
    """The float32 t for which ``norm > t`` (a float32 norm) decides as torch decides
    ``norm > max_norm`` on ``device``: its CUDA kernel compares with max_norm rounded to
    float32; its CPU renorm compares in float64, which is max_norm rounded *down* to float32
    (they differ where max_norm is not a float32, e.g. 0.1, and a row renormed once sits at
    that rounding). The CPU case is where the interpreter runs these kernels."""
    return _threshold(float(max_norm), device.type == "cpu")


@functools.lru_cache(maxsize=64)  # a host-side tensor op per launch otherwise
def _threshold(max_norm: float, on_cpu: bool) -> float:
    threshold = torch.tensor(max_norm, dtype=torch.float32)
    if on_cpu and threshold.item() > max_norm:
        threshold = torch.nextafter(threshold, threshold.new_tensor(-math.inf))
    return threshold.item()


def norm_kind(norm_type: float) -> int:
    if math.isinf(norm_type):
        return NORM_INF
    return {1.0: NORM_ONE, 2.0: NORM_TWO}.get(float(norm_type), NORM_GENERAL)


@on_device_of(0)
def renorm_rows_(
    weight: torch.Tensor, sorted_rows: torch.Tensor, max_norm: float, norm_type: float, eps: float
) -> None:
    """Rescale in place, once each, the rows of ``sorted_rows`` (ascending, duplicates allowed)
    whose norm exceeds max_norm (rows outside the table, which only unchecked input can bring,
    are skipped rather than written)."""
    n, dim = sorted_rows.shape[0], weight.shape[1]
    if n == 0 or dim == 0:
        return
    block_d, rows, num_warps = launch_shape(dim)
    grid = (triton.cdiv(n, rows),)
    _renorm_kernel[grid](
        weight, sorted_rows, n, weight.shape[0], dim, weight.stride(0), weight.stride(1),
        float(max_norm), comparison_threshold(max_norm, weight.device),
        float(norm_type), float(eps),
        NORM=norm_kind(norm_type), ROWS=rows, BLOCK_D=block_d, num_warps=num_warps,
    )  # fmt: skip
