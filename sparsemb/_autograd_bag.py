"""The pooled lookup's autograd wiring (EmbeddingBag).

Backward gives the same deduplicated gradient as the plain lookup of the bag gradient's
expansion to one row per looked-up index (mean's 1/count, the per-sample weight, or max mode's
arg-max columns only): one summed row per unique index, in a fixed order, as a coalesced sparse
COO tensor, a dense tensor, or straight into an optimizer (fused backward). On the pure-PyTorch
path, sum and mean without per-sample weights sum the bag rows directly, never building the
(N, D) expansion (``torch_backend.bag.pooled_dedup_grad``). The
per-sample weights' gradient is a row dot product per index.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsemb import _ops
from sparsemb._autograd import (
    fused_update_of,
    keep_grad_coalesced,
    save_sparse_grad_context,
    sparse_grad_for,
    under_functorch,
)


def bag_lookup(
    weight: Tensor,
    indices: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    mode: int,
    padding_idx: int,
    scale_grad_by_freq: bool,
    sparse: bool,
    check_bounds: bool,
) -> Tensor:
    """Pooled rows (B, D) of ``weight`` for flattened ``indices`` and (B + 1,) int64 ``offsets``."""
    needs_grad = torch.is_grad_enabled() and (
        weight.requires_grad
        or (per_sample_weights is not None and per_sample_weights.requires_grad)
    )
    if not needs_grad:
        args = (weight, indices, offsets, per_sample_weights, mode, padding_idx, check_bounds)
        return _ops.ops().bag_forward(*args)[0]
    args = (
        weight, per_sample_weights, indices, offsets, mode, padding_idx, scale_grad_by_freq,
        sparse, check_bounds,
    )  # fmt: skip
    if torch.compiler.is_compiling():
        return _bag_lookup_outside_graph(*args)
    if sparse:
        keep_grad_coalesced(weight)
    return _BagLookup.apply(*args)


@torch._disable_dynamo  # torch.compiler.disable, without importing torch._dynamo at import time
def _bag_lookup_outside_graph(*args) -> Tensor:
    """Under torch.compile, a pooled lookup that needs gradients runs eagerly (a graph break):
    its classic-style Function is not traceable, and a sparse gradient could not be traced
    anyway (see ``_autograd._sparse_lookup_outside_graph``). No-grad lookups stay in the graph."""
    if args[7]:
        keep_grad_coalesced(args[0])
    return _BagLookup.apply(*args)


class _BagLookup(torch.autograd.Function):
    """Pooled gather whose weight gradient is the deduplicated gradient of its expansion."""

    @staticmethod
    def forward(
        ctx, weight, per_sample_weights, indices, offsets, mode, padding_idx,
        scale_grad_by_freq, sparse, check_bounds,
    ):  # fmt: skip
        out, argmax = _ops.ops().bag_forward(
            weight, indices, offsets, per_sample_weights, mode, padding_idx, check_bounds
        )
        ctx.save_for_backward(weight, per_sample_weights, indices, offsets, argmax)
        ctx.mode, ctx.padding_idx = mode, padding_idx
        ctx.scale_grad_by_freq, ctx.sparse = scale_grad_by_freq, sparse
        ctx.fused_update = fused_update_of(weight)
        save_sparse_grad_context(ctx, weight)
        return out

    @staticmethod
    def backward(ctx, grad):
        weight, per_sample_weights, indices, offsets, argmax = ctx.saved_tensors
        weight_grad = psw_grad = None
        if ctx.needs_input_grad[1]:
            psw_grad = _ops.ops().bag_psw_grad(grad, weight, indices, offsets, ctx.padding_idx)
        if ctx.needs_input_grad[0]:
            bag = (indices, offsets, per_sample_weights, argmax, ctx.mode, ctx.padding_idx)
            weight_grad = _weight_grad(ctx, grad, bag, weight.shape[0])
        return weight_grad, psw_grad, None, None, None, None, None, None, None


def _weight_grad(ctx, grad: Tensor, bag: tuple, num_weights: int) -> Tensor | None:
    """The deduplicated weight gradient: fused into the optimizer, sparse COO, or dense (as the
    plain lookup's backward). ``bag`` is (indices, offsets, per_sample_weights, argmax, mode,
    padding_idx); the ops skip the (N, D) expansion where they can (``_ops.bag_dedup_grad``)."""
    args = (*bag, num_weights, ctx.scale_grad_by_freq)
    if under_functorch(grad):
        indices, padding_idx = bag[0], bag[5]
        per_index = _ops.ops().bag_expand_grad(grad, *bag)
        return torch.ops.aten.embedding_dense_backward(
            per_index, indices, num_weights, padding_idx, ctx.scale_grad_by_freq
        )
    if ctx.fused_update is not None:
        unique, values = _ops.ops().bag_dedup_grad(grad.detach(), *args)
        with torch.no_grad():
            ctx.fused_update(unique, values)
        return None
    if ctx.sparse:
        unique, values = _ops.ops().bag_dedup_grad(grad, *args)
        return sparse_grad_for(ctx, unique, values, num_weights)
    return _ops.ops().bag_dense_grad(grad, *args)
