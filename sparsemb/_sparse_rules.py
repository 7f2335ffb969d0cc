"""Pure-PyTorch sparse update rules: the CPU backend of ``sparsemb.optim`` and the kernels' oracle.

Every ``*_update_`` function takes a table ``weight`` (V, D), the unique rows ``rows`` (U,) int64
of a coalesced gradient and its ``values`` (U, D), the optimizer state tensors and the scalars the
optimizer computed on the host, and writes only the rows in ``rows`` of weight and state: adding
the update with ``index_add_`` (as torch's ``dense.add_(sparse)`` does), or, where the result must
be rounded to a 16-bit table, gathering, computing and writing back with ``index_copy_``.

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
    """``x`` in the table dtype: nearest, or stochastic for 16-bit tables when ``sr_seed`` is set.
    """
    if x.dtype == dtype:
        return x
    if sr_seed is not None and dtype in HALF_DTYPES:
        return stochastic_round(x, dtype, sr_seed)
    return x.to(dtype)


def _add_to_rows_(
    weight: Tensor, rows: Tensor, update: Tensor, alpha: float, sr_seed: int | None,
    decay: float = 1.0,
) -> None:
    """``weight[rows] = weight[rows] * decay + alpha * update``, rows unique.

    Tables in the arithmetic dtype (float32, float64) without decay take ``index_add_``: the op
    torch's ``dense.add_(sparse, alpha)`` runs, so the result is torch's bit for bit, and several
    times faster on CPU than gathering the rows and writing them back with ``index_copy_``.
    16-bit tables (rounding of the float32 result) and decay gather, compute and copy back.
    """
    if weight.dtype == update.dtype and decay == 1:
        weight.index_add_(0, rows, update, alpha=alpha)
        return
    w = weight.index_select(0, rows).to(update.dtype)
    if decay != 1:
        w.mul_(decay)
    w = w.add(update, alpha=alpha)
    weight.index_copy_(0, rows, round_to(w, weight.dtype, sr_seed))


def _grad(weight: Tensor, rows: Tensor, values: Tensor, weight_decay: float) -> Tensor:
    """The gradient in the arithmetic dtype, plus ``weight_decay * w`` of the touched rows."""
    g = values.to(state_dtype(weight.dtype))
    if weight_decay != 0:
        g = g.add(weight.index_select(0, rows).to(g.dtype), alpha=weight_decay)
    return g


def _skip(weight: Tensor, rows: Tensor) -> bool:
    return rows.numel() == 0 or weight.shape[1] == 0


def sgd_update_(
    weight: Tensor, rows: Tensor, values: Tensor, *, neg_lr: float, weight_decay: float,
    sr_seed: int | None,
) -> None:
    """w += -lr * (g + weight_decay * w) on the touched rows (torch.optim.SGD's order)."""
    if _skip(weight, rows):
        return
    g = _grad(weight, rows, values, weight_decay)
    _add_to_rows_(weight, rows, g, neg_lr, sr_seed)


def adagrad_update_(
    weight: Tensor, rows: Tensor, values: Tensor, state_sum: Tensor, *, neg_clr: float,
    eps: float, weight_decay: float, sr_seed: int | None,
) -> None:
    """sum += g^2; w += -clr * g / (sqrt(sum) + eps), elementwise (torch.optim.Adagrad sparse)."""
    if _skip(weight, rows):
        return
    g = _grad(weight, rows, values, weight_decay)
    state_sum.index_add_(0, rows, g.pow(2))
    std = state_sum.index_select(0, rows).sqrt_().add_(eps)
    _add_to_rows_(weight, rows, g.div(std), neg_clr, sr_seed)


def rowwise_adagrad_update_(
    weight: Tensor, rows: Tensor, values: Tensor, state_sum: Tensor, *, neg_lr: float,
    eps: float, weight_decay: float, sr_seed: int | None,
) -> None:
    """sum[r] += mean(g_r^2); w_r += -lr * g_r / (sqrt(sum[r]) + eps) (one state per row)."""
    if _skip(weight, rows):
        return
    g = _grad(weight, rows, values, weight_decay)
    state_sum.index_add_(0, rows, g.pow(2).mean(dim=1))
    std = state_sum.index_select(0, rows).sqrt_().add_(eps)
    _add_to_rows_(weight, rows, g.div(std.unsqueeze(1)), neg_lr, sr_seed)


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
    if _skip(weight, rows):
        return
    g = values.to(state_dtype(weight.dtype))
    old = exp_avg.index_select(0, rows)
    step = g.sub(old).mul_(one_minus_beta1)
    exp_avg.index_add_(0, rows, step)
    numer = step.add_(old)  # the new first moment, as torch recomputes it
    old = exp_avg_sq.index_select(0, rows)
    step = g.pow(2).sub_(old).mul_(one_minus_beta2)
    exp_avg_sq.index_add_(0, rows, step)
    denom = step.add_(old).sqrt_().add_(eps)
    update = numer.div_(denom).mul_(neg_step_size)
    _add_to_rows_(weight, rows, update, 1.0, sr_seed, decay)
