"""The compiled row passes of ``numba_rows`` (imported only there, and only where Numba is).

Each pass walks the touched rows once, both threads sharing them (``prange``), and does in
registers what the torch-op path does with one op per step: plain IEEE ``+ - * /`` in the
arrays' dtype, in torch's order. Numba contracts nothing into a fused multiply-add without
``fastmath``, so each operation rounds exactly as torch's separate ops do.
"""

from __future__ import annotations

import numba
from numba import prange

_jit = numba.njit(parallel=True, cache=True, nogil=True)


@_jit
def adam_moments(exp_avg, exp_avg_sq, rows, grad, one_minus_beta1, one_minus_beta2,
                 new_avg, new_avg_sq):
    """m += (g - m) * (1 - beta1); v += (g * g - v) * (1 - beta2) on the touched rows, written
    back and into the compact (U, D) ``new_avg`` / ``new_avg_sq``."""
    for i in prange(rows.shape[0]):
        r = rows[i]
        for j in range(grad.shape[1]):
            g = grad[i, j]
            m = exp_avg[r, j]
            m = m + (g - m) * one_minus_beta1
            exp_avg[r, j] = m
            new_avg[i, j] = m
            v = exp_avg_sq[r, j]
            v = v + (g * g - v) * one_minus_beta2
            exp_avg_sq[r, j] = v
            new_avg_sq[i, j] = v


@_jit
def add_scaled_ratio(weight, rows, numer, denom, scale, decay, use_decay):
    """w = w * decay + (numer / denom) * scale on the touched rows (decay only if use_decay)."""
    for i in prange(rows.shape[0]):
        r = rows[i]
        for j in range(numer.shape[1]):
            w = weight[r, j]
            if use_decay:
                w = w * decay
            weight[r, j] = w + (numer[i, j] / denom[i, j]) * scale


@_jit
def add_squares(state_sum, rows, grad, new_sum):
    """sum += g * g on the touched rows, written back and into the compact ``new_sum``."""
    for i in prange(rows.shape[0]):
        r = rows[i]
        for j in range(grad.shape[1]):
            g = grad[i, j]
            total = state_sum[r, j] + g * g
            state_sum[r, j] = total
            new_sum[i, j] = total


@_jit
def gather_rows(table, rows, out):
    """out[i] = table[rows[i]]."""
    for i in prange(rows.shape[0]):
        r = rows[i]
        for j in range(table.shape[1]):
            out[i, j] = table[r, j]


@_jit
def scatter_rows(table, rows, values):
    """table[rows[i]] = values[i] (rows unique)."""
    for i in prange(rows.shape[0]):
        r = rows[i]
        for j in range(values.shape[1]):
            table[r, j] = values[i, j]
