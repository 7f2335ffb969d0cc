"""Fused sparse optimizer updates: one Triton kernel per rule, one launch per table per step.

A launch covers the U unique rows of a coalesced gradient. Each program owns ``BLOCK_R`` of them
(rows are unique, so no two programs write one row) and walks the embedding dim in ``BLOCK_D``
chunks: it reads the gradient values, the weight rows and the state rows once and writes the
weight and the state once. Arithmetic is float32 (the state of float32/bfloat16/float16 tables)
in the order of ``sparsemb.torch_backend.optim``, the pure-PyTorch oracle whose functions have
the same signatures as the launchers here. Division and square root are IEEE-rounded (``div_rn``,
``sqrt_rn``) so GPU results do not drift from the CPU rule; the compiler may still fuse a
multiply and an add.

Stochastic rounding of 16-bit tables draws one Philox number per element, keyed by
(seed, row * dim + col): the noise of an element depends on the step's seed only, not on which
other rows are in the batch.

Every tensor is addressed through its strides (weight, gradient values and each state tensor),
so a transposed or sliced table or state needs no copy. A row outside ``[0, V)`` is skipped (its
program lanes are masked): the optimizers reject such rows before launching, and this keeps a
caller that skips the check from writing outside the table. Triton writes bypass autograd, so
each launcher bumps the version counter of every tensor it wrote, as torch's in-place ops do: a
graph that saved the weight before the step then refuses to backward through the stale value.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from sparsemb.kernels.launch import on_device_of, tile_for
from sparsemb.kernels.rounding import round_nearest

MAX_BLOCK_D = 2048  # the dim a program covers in one chunk; row-wise Adagrad reads g once up to it
BLOCK_ELEMENTS = 2048  # elements per program: BLOCK_R = BLOCK_ELEMENTS // BLOCK_D rows
MAX_BLOCK_R = 256
# a thread holds up to five streams (weight, gradient, two moments, noise) per element: fewer
# elements per thread than the gathers so Adam on a 16-bit table fits without spilling
ELEMENTS_PER_THREAD = 8


@triton.jit
def _store_rounded(
    ptrs,  # pointers into the table (its element type is the table dtype)
    x,  # float32 new values
    mask,
    seed,  # stochastic rounding seed of this step
    noise_offsets,  # int64 row * dim + col: the Philox counter of each element
    STOCHASTIC: tl.constexpr,  # round 16-bit tables up/down with probability by distance
):
    out_ty: tl.constexpr = ptrs.dtype.element_ty
    nearest = round_nearest(x, out_ty)
    if STOCHASTIC:
        # the neighbour of the nearest value on x's side is one bit pattern away (a sign-magnitude
        # float's patterns grow with magnitude); pick it with probability distance / gap
        nearest_f = nearest.to(tl.float32)
        bits = nearest.to(tl.int16, bitcast=True)
        away = tl.abs(nearest_f) < tl.abs(x)
        other = tl.where(away, bits + 1, bits - 1).to(out_ty, bitcast=True)
        prob = (x - nearest_f) / (other.to(tl.float32) - nearest_f)
        uniform = tl.rand(seed, noise_offsets)
        nearest = tl.where(uniform < prob, other, nearest)
    tl.store(ptrs, nearest, mask=mask)


@triton.jit
def _row_block(rows_ptr, num_rows, num_weights, BLOCK_R: tl.constexpr):
    # int64 offsets: row * stride reaches V * D, past 2**31 on big tables (17M x 128 already),
    # so the program id and the loaded row numbers are widened before any product
    pid = tl.program_id(0).to(tl.int64)
    local = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    in_batch = local < num_rows
    rows = tl.load(rows_ptr + local, mask=in_batch, other=0).to(tl.int64)
    row_mask = in_batch & (rows >= 0) & (rows < num_weights)  # never write outside the table
    return local, rows, row_mask


@triton.jit
def _tile(base_ptr, rows, cols, row_stride, col_stride):
    """Pointers to the (BLOCK_R, BLOCK_D) tile at ``rows`` x ``cols`` of a strided 2-D tensor."""
    return base_ptr + rows[:, None] * row_stride + cols[None, :] * col_stride


@triton.jit
def _load_f32(ptrs, mask):
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _grad_and_weight(
    grad_ptr, weight_ptr, local, rows, row_mask, start, dim,
    grad_row_stride, grad_col_stride, weight_row_stride, weight_col_stride,
    weight_decay, HAS_WD: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The column slice at ``start`` of each row: its mask, the gradient (plus L2 weight decay
    when HAS_WD), the weight's pointers and the weight, both in float32."""
    cols = start + tl.arange(0, BLOCK_D)
    mask = row_mask[:, None] & (cols < dim)[None, :]
    g = _load_f32(_tile(grad_ptr, local, cols, grad_row_stride, grad_col_stride), mask)
    w_ptrs = _tile(weight_ptr, rows, cols, weight_row_stride, weight_col_stride)
    w = _load_f32(w_ptrs, mask)
    if HAS_WD:
        g = g + weight_decay * w
    return cols, mask, g, w_ptrs, w


@triton.jit(do_not_specialize=["num_rows", "seed"])  # changes every step: no recompiles
def _sgd_kernel(
    rows_ptr,  # (U,) int64: unique rows to update
    grad_ptr,  # (U, D) float: summed gradient of each row
    weight_ptr,  # (V, D) float32/bfloat16/float16: updated in place at rows
    num_rows,  # U
    num_weights,  # V: rows outside [0, V) are skipped
    dim,  # D
    grad_row_stride, grad_col_stride, weight_row_stride, weight_col_stride,
    neg_lr,  # -lr
    weight_decay,  # L2 coefficient added to the gradient (HAS_WD)
    seed,  # stochastic rounding seed (STOCHASTIC)
    HAS_WD: tl.constexpr, STOCHASTIC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    local, rows, row_mask = _row_block(rows_ptr, num_rows, num_weights, BLOCK_R)
    for start in range(0, dim, BLOCK_D):
        cols, mask, g, w_ptrs, w = _grad_and_weight(
            grad_ptr, weight_ptr, local, rows, row_mask, start, dim,
            grad_row_stride, grad_col_stride, weight_row_stride, weight_col_stride,
            weight_decay, HAS_WD, BLOCK_D)
        w = w + neg_lr * g
        _store_rounded(w_ptrs, w, mask, seed, rows[:, None] * dim + cols[None, :], STOCHASTIC)


@triton.jit(do_not_specialize=["num_rows", "seed"])  # changes every step: no recompiles
def _adagrad_kernel(
    rows_ptr,  # (U,) int64: unique rows to update
    grad_ptr,  # (U, D) float: summed gradient of each row
    weight_ptr,  # (V, D) float32/bfloat16/float16: updated in place at rows
    sum_ptr,  # (V, D) float32: running sum of squared gradients
    num_rows, num_weights, dim,
    grad_row_stride, grad_col_stride, weight_row_stride, weight_col_stride,
    sum_row_stride, sum_col_stride,
    neg_clr,  # -lr / (1 + (step - 1) * lr_decay)
    eps,
    weight_decay,
    seed,
    HAS_WD: tl.constexpr, STOCHASTIC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    local, rows, row_mask = _row_block(rows_ptr, num_rows, num_weights, BLOCK_R)
    for start in range(0, dim, BLOCK_D):
        cols, mask, g, w_ptrs, w = _grad_and_weight(
            grad_ptr, weight_ptr, local, rows, row_mask, start, dim,
            grad_row_stride, grad_col_stride, weight_row_stride, weight_col_stride,
            weight_decay, HAS_WD, BLOCK_D)
        sum_ptrs = _tile(sum_ptr, rows, cols, sum_row_stride, sum_col_stride)
        total = tl.load(sum_ptrs, mask=mask, other=0.0) + g * g
        tl.store(sum_ptrs, total, mask=mask)
        std = tl.sqrt_rn(total) + eps
        w = w + neg_clr * tl.div_rn(g, std)
        _store_rounded(w_ptrs, w, mask, seed, rows[:, None] * dim + cols[None, :], STOCHASTIC)


@triton.jit(do_not_specialize=["num_rows", "seed"])  # changes every step: no recompiles
def _rowwise_adagrad_kernel(
    rows_ptr,  # (U,) int64: unique rows to update
    grad_ptr,  # (U, D) float: summed gradient of each row
    weight_ptr,  # (V, D) float32/bfloat16/float16: updated in place at rows
    sum_ptr,  # (V,) float32: running sum of the row means of squared gradients
    num_rows, num_weights, dim,
    grad_row_stride, grad_col_stride, weight_row_stride, weight_col_stride,
    sum_stride,
    neg_lr, eps, weight_decay, seed,
    HAS_WD: tl.constexpr, STOCHASTIC: tl.constexpr,
    ONE_CHUNK: tl.constexpr,  # dim <= BLOCK_D: the row is read once, else twice (norm, update)
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    local, rows, row_mask = _row_block(rows_ptr, num_rows, num_weights, BLOCK_R)
    sum_ptrs = sum_ptr + rows * sum_stride
    if ONE_CHUNK:
        cols, mask, g, w_ptrs, w = _grad_and_weight(
            grad_ptr, weight_ptr, local, rows, row_mask, 0, dim,
            grad_row_stride, grad_col_stride, weight_row_stride, weight_col_stride,
            weight_decay, HAS_WD, BLOCK_D)
        squares = tl.sum(g * g, axis=1)
        total = tl.load(sum_ptrs, mask=row_mask, other=0.0) + tl.div_rn(
            squares, dim + tl.zeros_like(squares))
        tl.store(sum_ptrs, total, mask=row_mask)
        std = tl.sqrt_rn(total) + eps
        w = w + neg_lr * tl.div_rn(g, std[:, None])
        _store_rounded(w_ptrs, w, mask, seed, rows[:, None] * dim + cols[None, :], STOCHASTIC)
    else:
        squares = tl.zeros([BLOCK_R], dtype=tl.float32)
        for start in range(0, dim, BLOCK_D):
            cols = start + tl.arange(0, BLOCK_D)
            mask = row_mask[:, None] & (cols < dim)[None, :]
            g = _load_f32(_tile(grad_ptr, local, cols, grad_row_stride, grad_col_stride), mask)
            if HAS_WD:
                w_ptrs = _tile(weight_ptr, rows, cols, weight_row_stride, weight_col_stride)
                g = g + weight_decay * _load_f32(w_ptrs, mask)
            squares += tl.sum(g * g, axis=1)
        total = tl.load(sum_ptrs, mask=row_mask, other=0.0) + tl.div_rn(
            squares, dim + tl.zeros_like(squares))
        tl.store(sum_ptrs, total, mask=row_mask)
        std = tl.sqrt_rn(total) + eps
        for start in range(0, dim, BLOCK_D):
            cols, mask, g, w_ptrs, w = _grad_and_weight(
                grad_ptr, weight_ptr, local, rows, row_mask, start, dim,
                grad_row_stride, grad_col_stride, weight_row_stride, weight_col_stride,
                weight_decay, HAS_WD, BLOCK_D)
            w = w + neg_lr * tl.div_rn(g, std[:, None])
            _store_rounded(w_ptrs, w, mask, seed, rows[:, None] * dim + cols[None, :], STOCHASTIC)


@triton.jit(do_not_specialize=["num_rows", "seed"])  # changes every step: no recompiles
def _adam_kernel(
    rows_ptr,  # (U,) int64: unique rows to update
    grad_ptr,  # (U, D) float: summed gradient of each row
    weight_ptr,  # (V, D) float32/bfloat16/float16: updated in place at rows
    exp_avg_ptr,  # (V, D) float32: first moment
    exp_avg_sq_ptr,  # (V, D) float32: second moment
    num_rows, num_weights, dim,
    grad_row_stride, grad_col_stride, weight_row_stride, weight_col_stride,
    m_row_stride, m_col_stride, v_row_stride, v_col_stride,
    one_minus_beta1, one_minus_beta2, eps,
    neg_step_size,  # -lr * sqrt(1 - beta2^t) / (1 - beta1^t)
    decay,  # 1 - lr * weight_decay (AdamW, HAS_DECAY)
    seed,
    HAS_DECAY: tl.constexpr, STOCHASTIC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    local, rows, row_mask = _row_block(rows_ptr, num_rows, num_weights, BLOCK_R)
    for start in range(0, dim, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D)
        mask = row_mask[:, None] & (cols < dim)[None, :]
        # every load is issued before the first store
        g = _load_f32(_tile(grad_ptr, local, cols, grad_row_stride, grad_col_stride), mask)
        m_ptrs = _tile(exp_avg_ptr, rows, cols, m_row_stride, m_col_stride)
        v_ptrs = _tile(exp_avg_sq_ptr, rows, cols, v_row_stride, v_col_stride)
        w_ptrs = _tile(weight_ptr, rows, cols, weight_row_stride, weight_col_stride)
        m = tl.load(m_ptrs, mask=mask, other=0.0)
        v = tl.load(v_ptrs, mask=mask, other=0.0)
        w = _load_f32(w_ptrs, mask)
        m = m + (g - m) * one_minus_beta1
        v = v + (g * g - v) * one_minus_beta2
        tl.store(m_ptrs, m, mask=mask)
        tl.store(v_ptrs, v, mask=mask)
        if HAS_DECAY:
            w = w * decay
        w = w + tl.div_rn(m, tl.sqrt_rn(v) + eps) * neg_step_size
        _store_rounded(w_ptrs, w, mask, seed, rows[:, None] * dim + cols[None, :], STOCHASTIC)


def launch_shape(dim: int):
    """(BLOCK_D, BLOCK_R, num_warps) of every optimizer kernel for embedding dim ``dim``."""
    return tile_for(dim, max_block_d=MAX_BLOCK_D, elements=BLOCK_ELEMENTS, max_rows=MAX_BLOCK_R,
                    per_thread=ELEMENTS_PER_THREAD)


@on_device_of(1)
def _launch(kernel, weight: Tensor, rows: Tensor, values: Tensor, states: tuple[Tensor, ...],
            scalars: tuple, sr_seed: int | None, **flags) -> None:
    """The one launcher: grid and tile from the dim, the strides of the gradient, the weight and
    each state tensor in the kernel's order, the rounding switches; then bump the version
    counters of what the kernel wrote."""
    if rows.numel() == 0 or weight.shape[1] == 0:
        return
    block_d, block_r, num_warps = launch_shape(weight.shape[1])
    stochastic = sr_seed is not None and weight.dtype in (torch.bfloat16, torch.float16)
    state_strides = [stride for state in states for stride in state.stride()]
    kernel[(triton.cdiv(rows.numel(), block_r),)](
        rows, values, weight, *states, rows.numel(), weight.shape[0], weight.shape[1],
        *values.stride(), *weight.stride(), *state_strides,
        *scalars, int(sr_seed) if stochastic else 0,
        STOCHASTIC=stochastic, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=num_warps, **flags,
    )
    for written in (weight, *states):  # a Triton store bypasses autograd's version counter
        torch.autograd.graph.increment_version(written)


def sgd_update_(
    weight: Tensor, rows: Tensor, values: Tensor, *, neg_lr: float, weight_decay: float,
    sr_seed: int | None,
) -> None:
    """Fused ``sparsemb.torch_backend.optim.sgd_update_``."""
    _launch(_sgd_kernel, weight, rows, values, (), (neg_lr, weight_decay), sr_seed,
            HAS_WD=weight_decay != 0)


def adagrad_update_(
    weight: Tensor, rows: Tensor, values: Tensor, state_sum: Tensor, *, neg_clr: float,
    eps: float, weight_decay: float, sr_seed: int | None,
) -> None:
    """Fused ``sparsemb.torch_backend.optim.adagrad_update_``."""
    _launch(_adagrad_kernel, weight, rows, values, (state_sum,), (neg_clr, eps, weight_decay),
            sr_seed, HAS_WD=weight_decay != 0)


def rowwise_adagrad_update_(
    weight: Tensor, rows: Tensor, values: Tensor, state_sum: Tensor, *, neg_lr: float,
    eps: float, weight_decay: float, sr_seed: int | None,
) -> None:
    """Fused ``sparsemb.torch_backend.optim.rowwise_adagrad_update_``."""
    block_d = launch_shape(weight.shape[1]).block_d
    _launch(_rowwise_adagrad_kernel, weight, rows, values, (state_sum,),
            (neg_lr, eps, weight_decay), sr_seed,
            HAS_WD=weight_decay != 0, ONE_CHUNK=weight.shape[1] <= block_d)


def adam_update_(
    weight: Tensor, rows: Tensor, values: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, *,
    one_minus_beta1: float, one_minus_beta2: float, eps: float, neg_step_size: float,
    decay: float, sr_seed: int | None,
) -> None:
    """Fused ``sparsemb.torch_backend.optim.adam_update_``."""
    _launch(_adam_kernel, weight, rows, values, (exp_avg, exp_avg_sq),
            (one_minus_beta1, one_minus_beta2, eps, neg_step_size, decay), sr_seed,
            HAS_DECAY=decay != 1)


_UNIT_STRIDES = ("grad_col_stride", "weight_col_stride", "sum_col_stride", "m_col_stride",
                 "v_col_stride", "sum_stride")  # 1 on contiguous tensors (specialized)
_RULES = {  # kernel: (state pointers, float scalars, flag constexprs)
    "_sgd_kernel": ((), ("neg_lr", "weight_decay"), {"HAS_WD": True}),
    "_adagrad_kernel": (("sum_ptr",), ("neg_clr", "eps", "weight_decay"), {"HAS_WD": True}),
    "_rowwise_adagrad_kernel": (("sum_ptr",), ("neg_lr", "eps", "weight_decay"),
                                {"HAS_WD": True}),
    "_adam_kernel": (("exp_avg_ptr", "exp_avg_sq_ptr"),
                     ("one_minus_beta1", "one_minus_beta2", "eps", "neg_step_size", "decay"),
                     {"HAS_DECAY": True}),
}


def compile_cases(dim: int, ptr: str) -> list[dict]:
    """The specialisations ``scripts/sm90_compile.py`` compiles for a table of element type
    ``ptr`` ("*fp32", "*bf16", ...): every rule, stochastic rounding on for 16-bit tables."""
    block_d, block_r, num_warps = launch_shape(dim)
    out = []
    for kernel, (states, floats, flags) in _RULES.items():
        constexprs = dict(flags, STOCHASTIC=ptr != "*fp32", BLOCK_R=block_r, BLOCK_D=block_d)
        if kernel == "_rowwise_adagrad_kernel":
            constexprs["ONE_CHUNK"] = dim <= block_d
        pointers = {"rows_ptr": "*i64", "grad_ptr": ptr, "weight_ptr": ptr}
        pointers.update({name: "*fp32" for name in states})
        spec = dict(kernel=kernel, pointers=pointers, constexprs=constexprs, num_warps=num_warps,
                    floats=floats, ones=_UNIT_STRIDES)
        out.append({"label": kernel.strip("_").removesuffix("_kernel"), "spec": spec})
    return out
