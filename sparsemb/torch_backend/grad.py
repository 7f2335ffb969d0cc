"""Deduplicated embedding gradient in pure PyTorch; mirrors ``kernels/grad.py``.

Every function takes the indices flattened to 1-D. Sums run in float32 (float64 for float64
tables) in index order, so results are deterministic; the Triton kernels compute the same
functions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsemb._dtypes import state_dtype


def sorted_segments(indices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Unique indices (ascending), the position of each index among them, and their counts."""
    return torch.unique(indices, sorted=True, return_inverse=True, return_counts=True)


def kept_rows(
    unique: Tensor, values: Tensor, num_weights: int, padding_idx: int
) -> tuple[Tensor, Tensor]:
    """Drop the padding row and any row outside ``[0, num_weights)`` from a deduplicated
    gradient: unchecked input (``bounds_check="none"``) must never reach an optimizer."""
    keep = (unique >= 0) & (unique < num_weights)
    if padding_idx >= 0:
        keep &= unique != padding_idx
    if bool(keep.all()):
        return unique, values
    return unique[keep], values[keep]


def dedup_grad(
    grad: Tensor, indices: Tensor, num_weights: int, padding_idx: int, scale_grad_by_freq: bool
) -> tuple[Tensor, Tensor]:
    """The deduplicated gradient of a lookup: (unique rows ascending, summed gradient rows).

    ``grad`` is (N, D), ``indices`` (N,). Sums run in float32 (float64 for float64), in index
    order, so the result is deterministic; scale_grad_by_freq divides each sum by the row's count
    in the batch; the padding row (``padding_idx >= 0``) and rows outside the table are dropped.
    """
    unique, inverse, counts = sorted_segments(indices.to(torch.int64))
    acc = state_dtype(grad.dtype)
    values = torch.zeros(unique.numel(), grad.shape[1], dtype=acc, device=grad.device)
    values.index_add_(0, inverse, grad.to(acc))
    if scale_grad_by_freq:
        values /= counts.unsqueeze(1).to(acc)
    unique, values = kept_rows(unique, values, num_weights, padding_idx)
    return unique, values.to(grad.dtype)


def dense_grad(
    grad: Tensor, indices: Tensor, num_weights: int, padding_idx: int, scale_grad_by_freq: bool
) -> Tensor:
    """The dense (num_weights, D) gradient: the deduplicated sums scattered into zeros."""
    unique, values = dedup_grad(grad, indices, num_weights, padding_idx, scale_grad_by_freq)
    out = torch.zeros(num_weights, grad.shape[1], dtype=grad.dtype, device=grad.device)
    return out.index_copy_(0, unique, values)


def dense_grad_backward(
    grad_grad: Tensor, indices: Tensor, padding_idx: int, scale_grad_by_freq: bool
) -> Tensor:
    """Derivative of ``dense_grad`` w.r.t. its ``grad`` input, applied to ``grad_grad`` (V, D).

    dense_grad is linear in grad: out[v] = sum_{i: idx_i = v} grad[i] * s_v, so its adjoint is a
    gather, scaled by 1/count and zeroed at the padding row.
    """
    out = grad_grad.index_select(0, indices)
    weight_of_each = torch.ones(indices.shape, dtype=out.dtype, device=out.device)
    if scale_grad_by_freq:
        _, inverse, counts = sorted_segments(indices.to(torch.int64))
        weight_of_each = weight_of_each / counts[inverse].to(out.dtype)
    if padding_idx >= 0:
        weight_of_each = weight_of_each.masked_fill(indices == padding_idx, 0)
    return out * weight_of_each.unsqueeze(1)
