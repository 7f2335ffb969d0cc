"""The lookup's autograd wiring: which Function runs a lookup, and what its backward computes.

``lookup`` is the one chooser. Backward produces the deduplicated gradient (one summed row per
unique index, fixed order) as a coalesced sparse COO tensor, as a dense tensor, or hands it
straight to an optimizer (fused backward). The attributes sparsemb keeps on a weight Parameter
live behind the accessors below, nowhere else.

Why two Functions per role: ``torch.compile`` needs setup_context-style Functions (and cannot
trace a custom jvp), while in eager code a setup_context-style ``apply`` pays an
``inspect.signature`` bind per call (~100 us, more than a small batch's whole lookup), so eager
code runs classic-style twins that share the same forward, backward and jvp.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from sparsemb import _ops

# ----- what sparsemb stores on a weight Parameter

_FUSED_UPDATE = "_sparsemb_fused_update"  # callable(rows, values) run in backward
_COALESCE_HOOK = "_sparsemb_coalesce_hook"  # True once the post-accumulate hook is registered
_LAST_VALUES = "_sparsemb_last_values"  # (data_ptr, numel) of the values backward produced

FusedUpdate = Callable[[Tensor, Tensor], None]


def fused_update_of(weight: Tensor) -> FusedUpdate | None:
    """The optimizer update run in backward instead of writing ``weight.grad``, if any."""
    return getattr(weight, _FUSED_UPDATE, None)


def set_fused_update(weight: Tensor, update: FusedUpdate | None) -> None:
    """Install (or, with None, remove) the update the lookup's backward calls with
    (ascending unique rows, summed gradient rows) in place of producing ``.grad``."""
    if update is not None:
        setattr(weight, _FUSED_UPDATE, update)
    elif hasattr(weight, _FUSED_UPDATE):
        delattr(weight, _FUSED_UPDATE)


def keep_grad_coalesced(weight: Tensor) -> None:
    """Keep the ``is_coalesced`` flag of the gradient sparsemb writes into ``weight.grad``.

    torch's AccumulateGrad stores a fresh sparse gradient as a shallow copy that drops the flag,
    so optimizers would ``coalesce()`` (sort) it again. A post-accumulate hook restores the flag
    when ``.grad`` still holds exactly the values our backward produced (not after accumulation).
    """
    if getattr(weight, _COALESCE_HOOK, False) or not weight.is_leaf or not weight.requires_grad:
        return
    weight.register_post_accumulate_grad_hook(_restore_coalesced_flag)
    setattr(weight, _COALESCE_HOOK, True)


def _restore_coalesced_flag(weight: Tensor) -> None:
    grad, produced = weight.grad, getattr(weight, _LAST_VALUES, None)
    setattr(weight, _LAST_VALUES, None)
    if grad is None or produced is None or not grad.is_sparse or grad.is_coalesced():
        return
    values = grad._values()
    if values.data_ptr() == produced[0] and values.numel() == produced[1]:
        grad._coalesced_(True)


def sparse_grad_tensor(unique: Tensor, values: Tensor, num_weights: int) -> Tensor:
    """A coalesced COO gradient: torch's optimizers take it without a ``coalesce()`` pass."""
    size = (num_weights, values.shape[1])
    return torch.sparse_coo_tensor(
        unique.unsqueeze(0), values, size, is_coalesced=True, check_invariants=False
    )


def under_functorch(*tensors: Tensor) -> bool:
    """True when a tensor is wrapped by a torch.func transform (vmap, grad, jvp, jacrev...) or
    batched by the legacy vmap that gradcheck's batched check uses; always False while
    torch.compile traces (Dynamo cannot trace the check)."""
    if torch.compiler.is_compiling():
        return False
    functorch = torch._C._functorch
    return any(
        functorch.is_functorch_wrapped_tensor(t) or functorch.is_legacy_batchedtensor(t)
        for t in tensors
    )


# ----- the chooser


def lookup(
    weight: Tensor,
    indices: Tensor,
    padding_idx: int,
    scale_grad_by_freq: bool,
    sparse: bool,
    check_bounds: bool,
) -> Tensor:
    """Rows ``weight[indices]`` (1-D) with sparsemb's gradient, in eager or compiled code."""
    args = (weight, indices, padding_idx, scale_grad_by_freq, sparse, check_bounds)
    if not torch.compiler.is_compiling():
        if sparse:
            keep_grad_coalesced(weight)
        return _EagerLookup.apply(*args)
    if not (torch.is_grad_enabled() and weight.requires_grad):
        return _ops.ops().gather(weight, indices, check_bounds)
    if sparse:
        return _sparse_lookup_outside_graph(*args)
    return _Lookup.apply(*args)


@torch._disable_dynamo  # torch.compiler.disable, without importing torch._dynamo at import time
def _sparse_lookup_outside_graph(*args) -> Tensor:
    """Under torch.compile, a lookup that needs a sparse gradient runs eagerly (a graph break).

    AOTAutograd cannot trace a sparse COO gradient: traced, ``weight.grad`` comes back dense, a
    full (num_embeddings, embedding_dim) tensor every step. Running this one op outside the graph
    keeps the gradient sparse; the dense path and no-grad lookups compile with no break.
    """
    keep_grad_coalesced(args[0])
    return _EagerLookup.apply(*args)


# ----- the lookup


def _save_lookup_context(ctx, weight, indices, padding_idx, scale_grad_by_freq, sparse):
    ctx.save_for_backward(indices)
    ctx.save_for_forward(indices)
    ctx.num_weights = weight.shape[0]
    ctx.padding_idx = padding_idx
    ctx.scale_grad_by_freq = scale_grad_by_freq
    ctx.sparse = sparse
    ctx.fused_update = fused_update_of(weight)
    ctx.grad_owner = weight if getattr(weight, _COALESCE_HOOK, False) else None


def _lookup_backward(ctx, grad):
    """Deduplicated gradient: fused into the optimizer, sparse COO, or dense."""
    (indices,) = ctx.saved_tensors
    weight_grad = None
    if not ctx.needs_input_grad[0]:
        return weight_grad, None, None, None, None, None
    args = (ctx.num_weights, ctx.padding_idx, ctx.scale_grad_by_freq)
    if under_functorch(grad):
        # Batched output gradients (autograd.grad(is_grads_batched=True), gradcheck's batched
        # check): torch's own dense backward has the batching rule; a batch of sparse
        # gradients has no useful form.
        weight_grad = torch.ops.aten.embedding_dense_backward(grad, indices, *args)
    elif ctx.fused_update is not None:
        if torch.compiler.is_compiling():
            unique, values = _ops.ops().dedup_grad(grad.detach(), indices, *args)
        else:  # no host sync on the GPU: padded rows the optimizer kernels skip
            unique, values = _ops.dedup_grad_for_update(grad.detach(), indices, *args)
        with torch.no_grad():
            ctx.fused_update(unique, values)
    elif ctx.sparse:
        unique, values = _ops.ops().dedup_grad(grad, indices, *args)
        weight_grad = sparse_grad_tensor(unique, values, ctx.num_weights)
        if ctx.grad_owner is not None:
            setattr(ctx.grad_owner, _LAST_VALUES, (values.data_ptr(), values.numel()))
    else:
        dense = _DenseGrad if torch.compiler.is_compiling() else _EagerDenseGrad
        weight_grad = dense.apply(grad, indices, *args)
    return weight_grad, None, None, None, None, None


def _lookup_jvp(ctx, weight_tangent, *_):
    (indices,) = ctx.saved_tensors
    return _ops.ops().gather(weight_tangent, indices, False)


class _Lookup(torch.autograd.Function):
    """Gather whose backward is the deduplicated gradient (setup_context style, for compile)."""

    @staticmethod
    def forward(weight, indices, padding_idx, scale_grad_by_freq, sparse, check_bounds):
        return _ops.ops().gather(weight, indices, check_bounds)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save_lookup_context(ctx, *inputs[:5])

    backward = staticmethod(_lookup_backward)


class _EagerLookup(torch.autograd.Function):
    """_Lookup in classic style for eager code; forward-mode AD included."""

    @staticmethod
    def forward(ctx, weight, indices, padding_idx, scale_grad_by_freq, sparse, check_bounds):
        _save_lookup_context(ctx, weight, indices, padding_idx, scale_grad_by_freq, sparse)
        return _ops.ops().gather(weight, indices, check_bounds)

    backward = staticmethod(_lookup_backward)
    jvp = staticmethod(_lookup_jvp)


# ----- the dense gradient, differentiable again (double backward, forward-over-reverse)


def _save_dense_grad_context(ctx, indices, num_weights, padding_idx, scale_grad_by_freq):
    ctx.save_for_backward(indices)
    ctx.save_for_forward(indices)
    ctx.num_weights = num_weights
    ctx.padding_idx = padding_idx
    ctx.scale_grad_by_freq = scale_grad_by_freq


def _dense_grad_backward(ctx, grad_grad):
    (indices,) = ctx.saved_tensors
    back = _ops.ops().dense_grad_backward(
        grad_grad, indices, ctx.padding_idx, ctx.scale_grad_by_freq
    )
    return back, None, None, None, None


def _dense_grad_jvp(ctx, grad_tangent, *_):
    (indices,) = ctx.saved_tensors
    return _ops.ops().dense_grad(
        grad_tangent, indices, ctx.num_weights, ctx.padding_idx, ctx.scale_grad_by_freq
    )


class _DenseGrad(torch.autograd.Function):
    """The dense embedding gradient as a differentiable function of the output gradient."""

    @staticmethod
    def forward(grad, indices, num_weights, padding_idx, scale_grad_by_freq):
        return _ops.ops().dense_grad(grad, indices, num_weights, padding_idx, scale_grad_by_freq)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save_dense_grad_context(ctx, *inputs[1:])

    backward = staticmethod(_dense_grad_backward)


class _EagerDenseGrad(torch.autograd.Function):
    """_DenseGrad in classic style for eager code; forward-mode AD included."""

    @staticmethod
    def forward(ctx, grad, indices, num_weights, padding_idx, scale_grad_by_freq):
        _save_dense_grad_context(ctx, indices, num_weights, padding_idx, scale_grad_by_freq)
        return _ops.ops().dense_grad(grad, indices, num_weights, padding_idx, scale_grad_by_freq)

    backward = staticmethod(_dense_grad_backward)
    jvp = staticmethod(_dense_grad_jvp)
