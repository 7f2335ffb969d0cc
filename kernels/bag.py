"""Pooled lookups (EmbeddingBag): the fused forward, the gradient expansion, and the
per-sample-weights gradient, with their launchers; ``torch_backend/bag.py`` computes the same.

Bags come as flattened indices (N,) and (B + 1,) int64 offsets, bag ``b`` being positions
``[offsets[b], offsets[b + 1])``. One program handles ``BAGS`` bags (several for small D) and one
column block, walking its bags' positions in step: at step j it loads the j-th row of each bag
still running. ``mode``: 0 sum, 1 mean, 2 max; ``padding_idx`` a row number or -1 for none.
Padding rows are left out of the pooling and of mean's count; a bag with nothing left is zeros.
Sums run in float32 and are rounded once. There are no atomics except the bounds flag, so the
results are deterministic; the weight gradient reuses the deduplicated segment reduce of
``kernels/grad.py`` (through ``sparsemb::dedup_grad``) on the expanded rows.

Offsets are int64 throughout: ``row * stride_wv`` and ``pos * dim`` pass 2^31 on big tables.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparsemb.kernels.launch import tile_for

MAX_BLOCK_D = 256  # columns per program; wider rows use more column blocks (grid axis 1)
TILE_ELEMENTS = 4096  # bags x columns a program holds; small D packs several bags
MAX_BAGS = 64


def launch_shape(dim: int):
    """(BLOCK_D, BAGS) of every bag kernel."""
    return tile_for(dim, max_block_d=MAX_BLOCK_D, elements=TILE_ELEMENTS, max_rows=MAX_BAGS)


@triton.jit
def _bag_forward_kernel(
    weight_ptr,  # (V, D) table, any float dtype, strides (stride_wv, stride_wd)
    indices_ptr,  # (N,) int32 or int64 rows, stride stride_i
    offsets_ptr,  # (B + 1,) int64 bag boundaries
    psw_ptr,  # (N,) per-sample weights, contiguous (read only when HAS_PSW)
    out_ptr,  # (B, D) pooled output, contiguous, weight's dtype
    argmax_ptr,  # (B, D) int64 arg-max positions, contiguous (written only in max mode)
    bad_ptr,  # (1,) int32 flag, set to 1 when a pooled index lies outside [0, V)
    num_bags,  # B
    num_rows,  # V
    dim,  # D
    stride_wv,  # elements between rows of the table
    stride_wd,  # elements between columns of the table
    stride_i,  # elements between consecutive indices
    padding_idx,  # row left out of the pooling, or -1
    MODE: tl.constexpr,  # 0 sum, 1 mean, 2 max
    HAS_PSW: tl.constexpr,  # multiply each row by its per-sample weight (sum mode)
    CHECK: tl.constexpr,  # fuse the bounds check
    BAGS: tl.constexpr,  # bags per program
    BLOCK_D: tl.constexpr,  # columns per program, a power of two
):
    # int64 from the start: bag * dim and row * stride_wv overflow int32 on big tables.
    bags = tl.program_id(0).to(tl.int64) * BAGS + tl.arange(0, BAGS).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    in_row = cols < dim
    live = bags < num_bags
    start = tl.load(offsets_ptr + bags, mask=live, other=0)
    length = tl.load(offsets_ptr + bags + 1, mask=live, other=0) - start
    if MODE == 2:
        acc = tl.full((BAGS, BLOCK_D), float("-inf"), tl.float32)
    else:
        acc = tl.zeros((BAGS, BLOCK_D), tl.float32)
    arg = tl.full((BAGS, BLOCK_D), -1, tl.int64)
    count = tl.zeros((BAGS,), tl.float32)
    bad = tl.zeros((BAGS,), tl.int32)
    for j in range(0, tl.max(length, axis=0)):
        pos = start + j
        active = live & (j < length)
        row = tl.load(indices_ptr + pos * stride_i, mask=active, other=0).to(tl.int64)
        valid = (row >= 0) & (row < num_rows)
        bad = tl.maximum(bad, (active & ~valid).to(tl.int32))
        pools = active & valid & (row != padding_idx)
        vals = tl.load(
            weight_ptr + row[:, None] * stride_wv + cols[None, :] * stride_wd,
            mask=pools[:, None] & in_row[None, :],
            other=0.0,
        ).to(tl.float32)
        if MODE == 2:
            better = pools[:, None] & (vals > acc)  # strict: ties keep the first position
            acc = tl.where(better, vals, acc)
            arg = tl.where(better, pos[:, None], arg)
        else:
            if HAS_PSW:
                vals = vals * tl.load(psw_ptr + pos, mask=pools, other=0.0).to(tl.float32)[:, None]
            acc += vals
        count += pools.to(tl.float32)
    if CHECK:
        tl.atomic_max(bad_ptr, tl.max(bad, axis=0))
    if MODE == 1:
        acc = acc / tl.maximum(count, 1.0)[:, None]
    if MODE == 2:
        acc = tl.where(arg >= 0, acc, 0.0)
    where = bags[:, None] * dim + cols[None, :]
    mask = live[:, None] & in_row[None, :]
    tl.store(out_ptr + where, acc.to(out_ptr.dtype.element_ty), mask=mask)
    if MODE == 2:
        tl.store(argmax_ptr + where, arg, mask=mask)


@triton.jit
def _expand_grad_kernel(
    grad_ptr,  # (B, D) bag gradient, contiguous
    indices_ptr,  # (N,) int32 or int64 rows, stride stride_i
    offsets_ptr,  # (B + 1,) int64 bag boundaries
    psw_ptr,  # (N,) per-sample weights (read only when HAS_PSW)
    argmax_ptr,  # (B, D) int64 arg-max positions (read only in max mode)
    out_ptr,  # (N, D) per-index gradient, contiguous, grad's dtype
    num_bags,  # B
    dim,  # D
    stride_i,  # elements between consecutive indices
    padding_idx,  # row whose positions get zeros, or -1
    MODE: tl.constexpr,  # 0 sum, 1 mean, 2 max
    HAS_PSW: tl.constexpr,  # scale by the per-sample weight (sum mode)
    BAGS: tl.constexpr,  # bags per program
    BLOCK_D: tl.constexpr,  # columns per program
):
    bags = tl.program_id(0).to(tl.int64) * BAGS + tl.arange(0, BAGS).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    in_row = cols < dim
    live = bags < num_bags
    start = tl.load(offsets_ptr + bags, mask=live, other=0)
    length = tl.load(offsets_ptr + bags + 1, mask=live, other=0) - start
    steps = tl.max(length, axis=0)
    where = bags[:, None] * dim + cols[None, :]
    mask = live[:, None] & in_row[None, :]
    g = tl.load(grad_ptr + where, mask=mask, other=0.0).to(tl.float32)
    if MODE == 1:  # mean: a first pass counts each bag's non-padding rows
        count = tl.zeros((BAGS,), tl.float32)
        for j in range(0, steps):
            active = live & (j < length)
            row = tl.load(indices_ptr + (start + j) * stride_i, mask=active, other=0)
            count += (active & (row != padding_idx)).to(tl.float32)
        g = g / tl.maximum(count, 1.0)[:, None]
    if MODE == 2:
        arg = tl.load(argmax_ptr + where, mask=mask, other=-1)
    for j in range(0, steps):
        pos = start + j
        active = live & (j < length)
        row = tl.load(indices_ptr + pos * stride_i, mask=active, other=0)
        pools = active & (row != padding_idx)
        if MODE == 2:
            vals = tl.where(arg == pos[:, None], g, 0.0)
        elif HAS_PSW:
            vals = g * tl.load(psw_ptr + pos, mask=pools, other=0.0).to(tl.float32)[:, None]
        else:
            vals = g
        vals = tl.where(pools[:, None], vals, 0.0)
        tl.store(
            out_ptr + pos[:, None] * dim + cols[None, :],
            vals.to(out_ptr.dtype.element_ty),
            mask=active[:, None] & in_row[None, :],
        )


@triton.jit
def _psw_grad_kernel(
    grad_ptr,  # (B, D) bag gradient, contiguous
    weight_ptr,  # (V, D) table, strides (stride_wv, stride_wd)
    indices_ptr,  # (N,) int32 or int64 rows, stride stride_i
    offsets_ptr,  # (B + 1,) int64 bag boundaries
    out_ptr,  # (N,) gradient of the per-sample weights, weight's dtype
    num_bags,  # B
    dim,  # D
    stride_wv,  # elements between rows of the table
    stride_wd,  # elements between columns of the table
    stride_i,  # elements between consecutive indices
    padding_idx,  # row whose positions get zero, or -1
    BAGS: tl.constexpr,  # bags per program
    BLOCK_D: tl.constexpr,  # columns per step
):
    bags = tl.program_id(0).to(tl.int64) * BAGS + tl.arange(0, BAGS).to(tl.int64)
    live = bags < num_bags
    start = tl.load(offsets_ptr + bags, mask=live, other=0)
    length = tl.load(offsets_ptr + bags + 1, mask=live, other=0) - start
    for j in range(0, tl.max(length, axis=0)):
        pos = start + j
        active = live & (j < length)
        row = tl.load(indices_ptr + pos * stride_i, mask=active, other=0).to(tl.int64)
        pools = active & (row != padding_idx)
        dot = tl.zeros((BAGS,), tl.float32)
        for first in range(0, dim, BLOCK_D):
            cols = first + tl.arange(0, BLOCK_D).to(tl.int64)
            mask = pools[:, None] & (cols < dim)[None, :]
            w = tl.load(
                weight_ptr + row[:, None] * stride_wv + cols[None, :] * stride_wd,
                mask=mask, other=0.0,
            ).to(tl.float32)
            g = tl.load(grad_ptr + bags[:, None] * dim + cols[None, :], mask=mask, other=0.0)
            dot += tl.sum(w * g.to(tl.float32), axis=1)
        tl.store(out_ptr + pos, dot.to(out_ptr.dtype.element_ty), mask=active)


def _grid(num_bags: int, dim: int, column_blocks: bool = True):
    block_d, bags, num_warps = launch_shape(dim)
    columns = triton.cdiv(max(dim, 1), block_d) if column_blocks else 1
    return (triton.cdiv(num_bags, bags), columns), block_d, bags, num_warps


def bag_forward(weight, indices, offsets, per_sample_weights, mode, padding_idx, check_bounds):
    """(pooled (B, D), arg-max positions (B, D) int64 in max mode else empty, bounds flag or None).

    An out-of-range index pools as if absent; the caller reads the flag and raises."""
    num_bags, (num_rows, dim) = offsets.shape[0] - 1, weight.shape
    out = torch.empty(num_bags, dim, dtype=weight.dtype, device=weight.device)
    argmax_shape = (num_bags, dim) if mode == 2 else (0,)
    argmax = torch.empty(argmax_shape, dtype=torch.int64, device=weight.device)
    bad = torch.zeros(1, dtype=torch.int32, device=weight.device) if check_bounds else None
    if num_bags == 0 or dim == 0:
        return out, argmax, bad
    psw = per_sample_weights.contiguous() if per_sample_weights is not None else out
    grid, block_d, bags, num_warps = _grid(num_bags, dim)
    _bag_forward_kernel[grid](
        weight, indices, offsets, psw, out, argmax if mode == 2 else out,
        bad if bad is not None else out, num_bags, num_rows, dim,
        weight.stride(0), weight.stride(1), indices.stride(0), padding_idx,
        MODE=mode, HAS_PSW=per_sample_weights is not None, CHECK=check_bounds,
        BAGS=bags, BLOCK_D=block_d, num_warps=num_warps,
    )  # fmt: skip
    return out, argmax, bad


def expand_grad(grad, indices, offsets, per_sample_weights, argmax, mode, padding_idx):
    """(N, D): each looked-up row's share of its bag's gradient."""
    num_bags, dim, n = offsets.shape[0] - 1, grad.shape[1], indices.shape[0]
    # Every position lies in a bag (the functional checks offsets[-1] == N), so all are written.
    out = torch.empty(n, dim, dtype=grad.dtype, device=grad.device)
    if num_bags == 0 or dim == 0 or n == 0:
        return out
    grad = grad.contiguous()
    psw = per_sample_weights.contiguous() if per_sample_weights is not None else grad
    grid, block_d, bags, num_warps = _grid(num_bags, dim)
    _expand_grad_kernel[grid](
        grad, indices, offsets, psw, argmax if mode == 2 else grad, out, num_bags, dim,
        indices.stride(0), padding_idx,
        MODE=mode, HAS_PSW=per_sample_weights is not None, BAGS=bags, BLOCK_D=block_d,
        num_warps=num_warps,
    )  # fmt: skip
    return out


def per_sample_weights_grad(grad, weight, indices, offsets, padding_idx):
    """(N,): <bag gradient, weight[indices[i]]> per position (zero for padding and the tail)."""
    num_bags, dim, n = offsets.shape[0] - 1, weight.shape[1], indices.shape[0]
    out = torch.zeros(n, dtype=weight.dtype, device=weight.device)
    if num_bags == 0 or n == 0:
        return out
    grad = grad.contiguous()
    grid, block_d, bags, num_warps = _grid(num_bags, dim, column_blocks=False)
    _psw_grad_kernel[grid](
        grad, weight, indices, offsets, out, num_bags, dim,
        weight.stride(0), weight.stride(1), indices.stride(0), padding_idx,
        BAGS=bags, BLOCK_D=block_d, num_warps=num_warps,
    )  # fmt: skip
    return out
