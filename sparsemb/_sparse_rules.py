"""Pure-PyTorch sparse update rules: the CPU backend of ``sparsemb.optim`` and the kernels' oracle.

Every ``*_update_`` function takes a table ``weight`` (V, D), the unique rows ``rows`` (U,) int64
of a coalesced gradient and its ``values`` (U, D), the optimizer state tensors and the scalars the
optimizer computed on the host. It gathers the touched rows of weight and state once, computes,
and writes them back once with ``index_copy_``: rows outside ``rows`` are never written.

Arithmetic runs in the state dtype (float32 for float32/bfloat16/float16 tables, float64 for
float64 ones) in the order torch.optim's sparse code uses, so on float32 tables the results equal
torch's bit for bit. ``sparsemb.kernels.optim`` has launchers with the same signatures that run one
fused Triton kernel instead.

``sr_seed``: ``None`` rounds the new weight to the table dtype to nearest; an int rounds
stochastically (bfloat16/float16 tables only; wider tables need no rounding).
"""

from __future__ import annotations

import torch
from torch import Tensor

HALF_DTYPES = (torch.bfloat16, torch.float16)


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Optimizer state and update arithmetic: float32, or float64 for float64 tables."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def stochastic_round(x: Tensor, dtype: torch.dtype, seed: int) -> Tensor:
    """Round float32 ``x`` to a 16-bit ``dtype``, up or down with probability by distance.

    With ``lo <= x <= hi`` the two neighbours of x in ``dtype``, returns hi with probability
    ``(x - lo) / (hi - lo)``, so the expected result is x exactly (unbiased): updates smaller
    than half a bfloat16 ulp still move the weight on average instead of being lost.
    Found from the nearest value r: its neighbour on x's side is one bit pattern away (patterns
    of a sign-magnitude float grow with magnitude). Non-finite x and exact values keep r.
    """
    nearest = x.to(dtype)
    nearest_f = nearest.to(x.dtype)
    bits = nearest.view(torch.int16)
    away = nearest_f.abs() < x.abs()
    other = torch.where(away, bits + 1, bits - 1).view(dtype)
    prob = (x - nearest_f) / (other.to(x.dtype) - nearest_f)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    uniform = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.where(uniform < prob, other, nearest)


def round_to(x: Tensor, dtype: torch.dtype, sr_seed: int | None) -> Tensor:
    """``x`` in the table dtype: nearest, or stochastic for 16-bit tables when ``sr_seed`` is set."""
    if x.dtype == dtype:
        return x
    if sr_seed is not None and dtype in HALF_DTYPES:
        return stochastic_round(x, dtype, sr_seed)
    return x.to(dtype)


def _touched(weight: Tensor, rows: Tensor, values: Tensor) -> tuple[Tensor, Tensor, torch.dtype]:
    """The gradient and the weight rows in the arithmetic dtype."""
    acc = state_dtype(weight.dtype)
    return values.to(acc), weight.index_select(0, rows).to(acc), acc


def sgd_update_(
    weight: Tensor, rows: Tensor, values: Tensor, *, neg_lr: float, weight_decay: float,
    sr_seed: int | None,
) -> None:
    """w += -lr * (g + weight_decay * w) on the touched rows (torch.optim.SGD's order)."""
    if rows.numel() == 0 or weight.shape[1] == 0:
        return
    g, w, _ = _touched(weight, rows, values)
    if weight_decay != 0:
        g = g.add(w, alpha=weight_decay)
    w = w.add(g, alpha=neg_lr)
    weight.index_copy_(0, rows, round_to(w, weight.dtype, sr_seed))


def adagrad_update_(
    weight: Tensor, rows: Tensor, values: Tensor, state_sum: Tensor, *, neg_clr: float,
    eps: float, weight_decay: float, sr_seed: int | None,
) -> None:
    """sum += g^2; w += -clr * g / (sqrt(sum) + eps), elementwise (torch.optim.Adagrad sparse)."""
    if rows.numel() == 0 or weight.shape[1] == 0:
        return
    g, w, _ = _touched(weight, rows, values)
    if weight_decay != 0:
        g = g.add(w, alpha=weight_decay)
    total = state_sum.index_select(0, rows)
    total.add_(g.pow(2))
    state_sum.index_copy_(0, rows, total)
    std = total.sqrt_().add_(eps)
    w = w.add(g.div(std), alpha=neg_clr)
    weight.index_copy_(0, rows, round_to(w, weight.dtype, sr_seed))


def rowwise_adagrad_update_(
    weight: Tensor, rows: Tensor, values: Tensor, state_sum: Tensor, *, neg_lr: float,
    eps: float, weight_decay: float, sr_seed: int | None,
) -> None:
    """sum[r] += mean(g_r^2); w_r += -lr * g_r / (sqrt(sum[r]) + eps) (one state per row)."""
    if rows.numel() == 0 or weight.shape[1] == 0:
        return
    g, w, _ = _touched(weight, rows, values)
    if weight_decay != 0:
        g = g.add(w, alpha=weight_decay)
    total = state_sum.index_select(0, rows)
    total.add_(g.pow(2).mean(dim=1))
    state_sum.index_copy_(0, rows, total)
    std = total.sqrt_().add_(eps)
    w = w.add(g.div(std.unsqueeze(1)), alpha=neg_lr)
    weight.index_copy_(0, rows, round_to(w, weight.dtype, sr_seed))


def adam_update_(
    weight: Tensor, rows: Tensor, values: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, *,
    one_minus_beta1: float, one_minus_beta2: float, eps: float, neg_step_size: float,
    decay: float, sr_seed: int | None,
) -> None:
    """Lazy Adam on the touched rows, in torch.optim.SparseAdam's order of operations.

    m += (g - m) * (1 - beta1); v += (g^2 - v) * (1 - beta2);
    w = w * decay + (-step_size) * m / (sqrt(v) + eps), with step_size = lr * sqrt(1 - beta2^t) /
    (1 - beta1^t) and decay = 1 - lr * weight_decay (AdamW; 1 for Adam).
    """
    if rows.numel() == 0 or weight.shape[1] == 0:
        return
    g, w, _ = _touched(weight, rows, values)
    m = exp_avg.index_select(0, rows)
    m.add_(g.sub(m).mul_(one_minus_beta1))
    v = exp_avg_sq.index_select(0, rows)
    v.add_(g.pow(2).sub_(v).mul_(one_minus_beta2))
    exp_avg.index_copy_(0, rows, m)
    exp_avg_sq.index_copy_(0, rows, v)
    update = m.div_(v.sqrt_().add_(eps)).mul_(neg_step_size)  # m, v are copies: reuse them
    if decay != 1:
        w.mul_(decay)
    w.add_(update)
    weight.index_copy_(0, rows, round_to(w, weight.dtype, sr_seed))
