"""Pooled lookups (EmbeddingBag) in pure PyTorch; mirrors ``kernels/bag.py``.

Every function takes the flattened ``indices`` (N,) and ``offsets`` (B + 1,) int64 with bag ``b``
at positions ``[offsets[b], offsets[b + 1])`` (positions from ``offsets[B]`` on belong to no
bag); ``mode`` is 0 sum, 1 mean, 2 max; ``padding_idx`` is a row number or -1. A padding index is
left out of the pooling and of mean's count; a bag with nothing left pools to zeros. Sums run in
float32 (float64 for float64 tables) and are rounded to the table dtype once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsemb import _memory
from sparsemb._dtypes import state_dtype
from sparsemb.torch_backend.grad import kept_rows, sorted_segments

SUM, MEAN, MAX = 0, 1, 2


def bag_of_positions(offsets: Tensor, num_indices: int) -> Tensor:
    """(N,) int64: the bag of each position, ``B`` for positions after the last bag."""
    counts = offsets[1:] - offsets[:-1]
    num_bags = counts.numel()
    bags = torch.arange(num_bags, device=offsets.device)
    bag = torch.repeat_interleave(bags, counts, output_size=int(offsets[-1]))
    tail = num_indices - bag.numel()
    return torch.cat([bag, bag.new_full((tail,), num_bags)]) if tail else bag


def _pooled_positions(indices: Tensor, offsets: Tensor, padding_idx: int):
    """(bag of each position, mask of the positions that pool: in a bag, not padding)."""
    bag = bag_of_positions(offsets, indices.shape[0])
    pools = bag < offsets.numel() - 1
    if padding_idx >= 0:
        pools &= indices != padding_idx
    return bag, pools


def bag_counts(indices: Tensor, offsets: Tensor, padding_idx: int) -> Tensor:
    """(B,) int64: how many positions of each bag pool (padding left out)."""
    bag, pools = _pooled_positions(indices, offsets, padding_idx)
    counts = torch.zeros(offsets.numel(), dtype=torch.int64, device=indices.device)
    counts.index_add_(0, bag, pools.to(torch.int64))
    return counts[:-1]


def bag_forward(
    weight: Tensor,
    indices: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    mode: int,
    padding_idx: int,
) -> tuple[Tensor, Tensor]:
    """(pooled (B, D) in the weight dtype, arg-max positions (B, D) int64 for max mode, -1 for a
    bag with nothing to pool, else an empty tensor). Max ties go to the first position.

    Sum and mean run torch's fused CPU kernel (``torch.embedding_bag``: one pass, no (N, D)
    temporary), which needs ``offsets[-1] == N`` (the functional guarantees it); max mode pools
    here, since sparsemb's backward wants the arg-max *position* of each column."""
    num_bags = offsets.numel() - 1
    acc = state_dtype(weight.dtype)
    if mode != MAX:
        starts = offsets[:-1].to(indices.dtype)
        if weight.dtype == acc:
            out = _fused_pool(weight, indices, starts, per_sample_weights, mode, padding_idx)
        else:  # 16-bit table: pool its looked-up rows in float32, round once
            n = indices.shape[0]
            rows = weight.index_select(0, indices).to(acc)
            rows = torch.cat([rows, rows.new_zeros(1, rows.shape[1])])  # row n: the padding
            local = torch.arange(n, device=indices.device)
            if padding_idx >= 0:
                local.masked_fill_(indices == padding_idx, n)
            psw = None if per_sample_weights is None else per_sample_weights.to(acc)
            pad = n if padding_idx >= 0 else -1
            out = _fused_pool(rows, local, starts.to(torch.int64), psw, mode, pad)
            out = out.to(weight.dtype)
        return out, indices.new_empty(0, dtype=torch.int64)
    bag, pools = _pooled_positions(indices, offsets, padding_idx)
    rows = weight.index_select(0, indices.to(torch.int64).masked_fill(~pools, 0)).to(acc)
    slot = torch.where(pools, bag, num_bags)  # non-pooling positions go to a spare bag
    return _max_pool(rows, slot, num_bags, weight.dtype)


def _fused_pool(table, indices, starts, per_sample_weights, mode, padding_idx) -> Tensor:
    padding = padding_idx if padding_idx >= 0 else None  # -1 would leave torch's fast path
    if not torch.is_grad_enabled():  # detached: torch takes its forward-only kernel, which
        # skips the bookkeeping (offset2bag, bag sizes) its own backward would need
        table = table.detach()
        per_sample_weights = None if per_sample_weights is None else per_sample_weights.detach()
    return torch.embedding_bag(
        table, indices, starts, False, mode, False, per_sample_weights, False, padding
    )[0]


def _max_pool(rows: Tensor, slot: Tensor, num_bags: int, dtype: torch.dtype):
    """Columnwise max of each bag's rows and the first position reaching it."""
    n, dim = rows.shape
    index = slot.unsqueeze(1).expand(n, dim)
    best = torch.full((num_bags + 1, dim), -torch.inf, dtype=rows.dtype, device=rows.device)
    best.scatter_reduce_(0, index, rows, "amax")
    positions = torch.arange(n, device=rows.device).unsqueeze(1).expand(n, dim)
    hits = torch.where(rows == best.gather(0, index), positions, n)
    first = torch.full((num_bags + 1, dim), n, dtype=torch.int64, device=rows.device)
    first.scatter_reduce_(0, index, hits, "amin")
    empty = first[:num_bags] == n
    out = best[:num_bags].masked_fill(empty, 0).to(dtype)
    return out, first[:num_bags].masked_fill(empty, -1)


def expand_grad(
    grad: Tensor,
    indices: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    argmax: Tensor,
    mode: int,
    padding_idx: int,
) -> Tensor:
    """(N, D): the gradient of each looked-up row, in ``grad``'s dtype.

    Sum: the bag's gradient (times the per-sample weight); mean: divided by the bag's count;
    max: the bag's gradient in the columns where this position is the arg-max, else zero.
    Padding positions and positions outside every bag get zeros."""
    n, dim = indices.shape[0], grad.shape[1]
    num_bags = offsets.numel() - 1
    acc = state_dtype(grad.dtype)
    if mode == MAX:
        bag, pools = _pooled_positions(indices, offsets, padding_idx)
        slot = torch.where(pools, bag, num_bags)
        padded = torch.cat([grad, grad.new_zeros(1, dim)])
        arg = torch.cat([argmax, argmax.new_full((1, dim), -1)]).index_select(0, slot)
        positions = torch.arange(n, device=grad.device).unsqueeze(1)
        return padded.index_select(0, slot).masked_fill_(arg != positions, 0)
    lengths = offsets[1:] - offsets[:-1]
    if mode == MEAN:
        grad = _divided_by_counts(grad, indices, offsets, padding_idx)
    rows = _per_position(grad, lengths, n)
    if per_sample_weights is not None:
        rows = (rows.to(acc) * per_sample_weights.to(acc).unsqueeze(1)).to(grad.dtype)
    if padding_idx >= 0:
        rows.masked_fill_((indices == padding_idx).unsqueeze(1), 0)
    return rows


def _divided_by_counts(grad: Tensor, indices: Tensor, offsets: Tensor, padding_idx: int) -> Tensor:
    """Mean's bag gradient: each bag's row divided by its count of pooled (non-padding)
    positions, in the accumulation dtype, rounded back to ``grad``'s dtype."""
    acc = state_dtype(grad.dtype)
    lengths = offsets[1:] - offsets[:-1]
    counts = bag_counts(indices, offsets, padding_idx) if padding_idx >= 0 else lengths
    return (grad.to(acc) / counts.clamp(min=1).to(acc).unsqueeze(1)).to(grad.dtype)


def pooled_dedup_grad(
    grad: Tensor,
    indices: Tensor,
    offsets: Tensor,
    mode: int,
    num_weights: int,
    padding_idx: int,
    scale_grad_by_freq: bool,
) -> tuple[Tensor, Tensor]:
    """The deduplicated weight gradient of a sum or mean lookup without per-sample weights,
    never expanded to (N, D): ``dedup_grad(expand_grad(...))``, bit for bit.

    Every position of a bag gets the same row (the bag's gradient, divided by its count for
    mean, rounded to ``grad``'s dtype as ``expand_grad`` does), so the sum for a unique index is
    a sum of (B, D) bag rows: ``embedding_bag`` over the sorted segments with the bag of each
    sorted position as its index, the same additions in the same (batch) order as
    ``segment_sums`` over the expansion. Positions after the last bag read a zero row; the
    padding row is dropped whole, as in ``dedup_grad``. Per-sample weights stay on the
    expansion: ``embedding_bag``'s weighted sum fuses the multiply-add (FBGEMM), where the
    expansion and torch's sparse gradient round each product first."""
    n, dim = indices.shape[0], grad.shape[1]
    acc = state_dtype(grad.dtype)
    if mode == MEAN:
        grad = _divided_by_counts(grad, indices, offsets, padding_idx)
    unique, counts, order, starts = sorted_segments(indices, num_weights)
    if n == 0 or dim == 0:
        values = grad.new_zeros(unique.numel(), dim, dtype=acc)
    else:
        table = grad.to(acc).contiguous()
        if int(offsets[-1]) < n:  # positions outside every bag: row B, zeros
            table = torch.cat([table, table.new_zeros(1, dim)])
        bags = bag_of_positions(offsets, n).index_select(0, order)
        values = F.embedding_bag(bags, table, starts, mode="sum")
    if scale_grad_by_freq:
        values /= counts.unsqueeze(1).to(values.dtype)
    unique, values = kept_rows(unique, values, num_weights, padding_idx)
    return unique, values.to(grad.dtype)


def pooled_dense_grad(
    grad: Tensor,
    indices: Tensor,
    offsets: Tensor,
    mode: int,
    num_weights: int,
    padding_idx: int,
    scale_grad_by_freq: bool,
) -> Tensor:
    """The dense (num_weights, D) gradient of ``pooled_dedup_grad``, scattered into zeros."""
    args = (grad, indices, offsets, mode, num_weights, padding_idx, scale_grad_by_freq)
    unique, values = pooled_dedup_grad(*args)
    out = _memory.zeros(num_weights, grad.shape[1], dtype=grad.dtype, device=grad.device)
    return out.index_copy_(0, unique, values)


def _per_position(per_bag: Tensor, lengths: Tensor, num_indices: int) -> Tensor:
    """(N, ...): each bag's row repeated over its positions; zeros after the last bag."""
    rows = torch.repeat_interleave(per_bag, lengths, dim=0, output_size=int(lengths.sum()))
    tail = num_indices - rows.shape[0]
    return torch.cat([rows, rows.new_zeros(tail, *rows.shape[1:])]) if tail else rows


def per_sample_weights_grad(
    grad: Tensor, weight: Tensor, indices: Tensor, offsets: Tensor, padding_idx: int
) -> Tensor:
    """(N,): d(loss)/d(per_sample_weights[i]) = <grad of i's bag, weight[indices[i]]>, zero for
    padding positions and positions outside every bag."""
    acc = state_dtype(weight.dtype)
    rows = weight.index_select(0, indices).to(acc)
    per_position = _per_position(grad.to(acc), offsets[1:] - offsets[:-1], indices.shape[0])
    out = (rows * per_position).sum(1)
    if padding_idx >= 0:
        out.masked_fill_(indices == padding_idx, 0)
    return out.to(weight.dtype)
