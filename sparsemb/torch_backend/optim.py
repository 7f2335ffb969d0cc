"""Pure-PyTorch sparse update rules, the CPU path of ``sparsemb.optim``; mirrors kernels/optim.py.

Every ``*_update_`` function takes a table ``weight`` (V, D), the unique rows ``rows`` (U,) int64
of a coalesced gradient and its ``values`` (U, D), the optimizer state tensors and the scalars the
optimizer computed on the host, and writes only the rows in ``rows`` of weight and state: in
blocks of rows sized for the cache, each state and the weight are gathered once
(``index_select``), updated in place and copied back with ``index_copy_`` (rows are unique);
SGD too, although ``index_add_`` would do in one call: on CPU it adds row by row (~370 ns a row
at D=128 on a 2-core VM, against ~250 ns for gather, add and copy back), with the same bits.

Arithmetic runs in the state dtype (float32 for float32/bfloat16/float16 tables, float64 for
float64 ones) in the order torch.optim's sparse code uses, so on float32 tables the results equal
torch's bit for bit. ``sparsemb.kernels.optim`` has launchers with the same signatures that run one
fused Triton kernel instead.

Where Numba is installed, SGD, Adagrad and Adam on float32/float64 tables (round to nearest,
``numba_rows.MIN_ELEMENTS`` values or more) run ``numba_rows``' compiled passes instead, with the
same bits.

``sr_seed``: ``None`` rounds the new weight to the table dtype to nearest; an int rounds
stochastically (bfloat16/float16 tables only; wider tables need no rounding).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsemb._dtypes import HALF_DTYPES, state_dtype
from sparsemb.torch_backend import numba_rows


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
    decay: float = 1.0, gathered: Tensor | None = None,
) -> None:
    """``weight[rows] = weight[rows] * decay + alpha * update``, rows unique.

    Gathers the rows (or takes ``gathered``: ``weight[rows]`` in the arithmetic dtype, a fresh
    tensor this function may overwrite), computes in place and copies them back with
    ``index_copy_``, rounding to 16-bit tables. ``w.add_(update, alpha)`` is the addition
    torch's ``dense.add_(sparse, alpha)`` (``index_add_``) makes, so float32 results are torch's
    bit for bit; on a cache-sized block of rows the gather and copy beat ``index_add_`` on CPU.
    """
    w = weight.index_select(0, rows).to(update.dtype) if gathered is None else gathered
    if decay != 1:
        w.mul_(decay)
    w.add_(update, alpha=alpha)
    weight.index_copy_(0, rows, round_to(w, weight.dtype, sr_seed))


def _grad(
    weight: Tensor, rows: Tensor, values: Tensor, weight_decay: float
) -> tuple[Tensor, Tensor | None]:
    """(the gradient in the arithmetic dtype, plus ``weight_decay * w`` of the touched rows;
    those rows ``w`` gathered in the arithmetic dtype, or None without weight decay).

    The gradient may be ``values`` itself: callers never write into it."""
    g = values.to(state_dtype(weight.dtype))
    if weight_decay == 0:
        return g, None
    w = weight.index_select(0, rows).to(g.dtype)
    return g.add(w, alpha=weight_decay), w


def _skip(weight: Tensor, rows: Tensor) -> bool:
    return rows.numel() == 0 or weight.shape[1] == 0


# The rules below gather each state's rows once (``index_select``), update them in place and
# write them back with ``index_copy_`` (rows are unique): on CPU that is cheaper than torch's
# ``index_add_`` of a delta followed by a second gather of the result, and gives the same bits
# (``old + delta`` is the one addition either way). Temporaries are reused through ``out=`` and
# in-place ops, and the rows go through in blocks of ``_BLOCK_ELEMENTS`` values per thread so that
# a block's temporaries stay in cache across its ~10 elementwise passes instead of each pass
# streaming (U, D) buffers through memory. Rows are independent, so blocking changes no bits.

_BLOCK_ELEMENTS = 64 * 1024  # 256 KiB of float32 per buffer per thread (measured: 512-1024 rows
# of D=128 on 1-2 threads; whole (U, D) buffers were 1.4-1.5x slower)


def _blocks(rows: Tensor, values: Tensor, sr_seed: int | None):
    """(rows[s:e], values[s:e]) over row blocks sized for the cache.

    One block under stochastic rounding: its noise is drawn for the whole (U, D) update at once,
    and a block each would repeat the stream."""
    n = rows.shape[0]
    block = max(1, _BLOCK_ELEMENTS * max(1, torch.get_num_threads()) // max(1, values.shape[1]))
    if sr_seed is not None or block >= n:
        yield rows, values
        return
    for start in range(0, n, block):
        yield rows[start:start + block], values[start:start + block]


def sgd_update_(
    weight: Tensor, rows: Tensor, values: Tensor, *, neg_lr: float, weight_decay: float,
    sr_seed: int | None,
) -> None:
    """w += -lr * (g + weight_decay * w) on the touched rows (torch.optim.SGD's order)."""
    if _skip(weight, rows):
        return
    if numba_rows.usable(weight, (), values, sr_seed):
        numba_rows.sgd_update_(weight, rows, values, neg_lr=neg_lr, weight_decay=weight_decay)
        return
    for r, vals in _blocks(rows, values, sr_seed):
        g, w = _grad(weight, r, vals, weight_decay)
        _add_to_rows_(weight, r, g, neg_lr, sr_seed, gathered=w)


def adagrad_update_(
    weight: Tensor, rows: Tensor, values: Tensor, state_sum: Tensor, *, neg_clr: float,
    eps: float, weight_decay: float, sr_seed: int | None,
) -> None:
    """sum += g^2; w += -clr * g / (sqrt(sum) + eps), elementwise (torch.optim.Adagrad sparse)."""
    if _skip(weight, rows):
        return
    if numba_rows.usable(weight, (state_sum,), values, sr_seed):
        numba_rows.adagrad_update_(
            weight, rows, values, state_sum, neg_clr=neg_clr, eps=eps, weight_decay=weight_decay
        )
        return
    for r, vals in _blocks(rows, values, sr_seed):
        g, w = _grad(weight, r, vals, weight_decay)
        total = state_sum.index_select(0, r)
        tmp = torch.mul(g, g)
        total.add_(tmp)
        state_sum.index_copy_(0, r, total)
        std = total.sqrt_().add_(eps)
        update = torch.div(g, std, out=tmp)
        _add_to_rows_(weight, r, update, neg_clr, sr_seed, gathered=w)


def rowwise_adagrad_update_(
    weight: Tensor, rows: Tensor, values: Tensor, state_sum: Tensor, *, neg_lr: float,
    eps: float, weight_decay: float, sr_seed: int | None,
) -> None:
    """sum[r] += mean(g_r^2); w_r += -lr * g_r / (sqrt(sum[r]) + eps) (one state per row)."""
    if _skip(weight, rows):
        return
    for r, vals in _blocks(rows, values, sr_seed):
        g, w = _grad(weight, r, vals, weight_decay)
        tmp = torch.mul(g, g)
        state_sum.index_add_(0, r, tmp.mean(dim=1))
        std = state_sum.index_select(0, r).sqrt_().add_(eps)
        update = torch.div(g, std.unsqueeze(1), out=tmp)
        _add_to_rows_(weight, r, update, neg_lr, sr_seed, gathered=w)


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
    if numba_rows.usable(weight, (exp_avg, exp_avg_sq), values, sr_seed):
        numba_rows.adam_update_(
            weight, rows, values, exp_avg, exp_avg_sq, one_minus_beta1=one_minus_beta1,
            one_minus_beta2=one_minus_beta2, eps=eps, neg_step_size=neg_step_size, decay=decay,
        )
        return
    dtype = state_dtype(weight.dtype)
    for r, vals in _blocks(rows, values, sr_seed):
        g = vals.to(dtype)
        m = exp_avg.index_select(0, r)
        tmp = torch.sub(g, m)
        m.add_(tmp.mul_(one_minus_beta1))  # the new first moment: old + its update, as torch adds
        exp_avg.index_copy_(0, r, m)
        v = exp_avg_sq.index_select(0, r)
        torch.mul(g, g, out=tmp)
        v.add_(tmp.sub_(v).mul_(one_minus_beta2))
        exp_avg_sq.index_copy_(0, r, v)
        denom = v.sqrt_().add_(eps)
        update = m.div_(denom).mul_(neg_step_size)
        _add_to_rows_(weight, r, update, 1.0, sr_seed, decay)
