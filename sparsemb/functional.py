"""``sparsemb.embedding``: ``torch.nn.functional.embedding`` with a deduplicated sparse gradient.

Validation happens here, before any op runs, so a rejected call leaves the weight untouched;
the index range is checked inside the ops (so ``torch.compile`` sees no data-dependent Python)
and, under max_norm, before the in-place renorm writes anything.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from sparsemb import _ops

INDEX_DTYPES = (torch.int32, torch.int64)
BOUNDS_CHECKS = ("raise", "none")
FUSED_UPDATE_ATTR = "_sparsemb_fused_update"
"""A parameter carrying a callable under this name gets it called with (unique_rows, values)
in backward instead of receiving a ``.grad`` (the optimizer's fused-backward mode)."""


def normalize_padding_idx(padding_idx: int | None, num_embeddings: int) -> int:
    """Map padding_idx (None, negative or not) to a row number, or -1 for none."""
    if padding_idx is None:
        return -1
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, int):
        raise TypeError(f"padding_idx must be an int or None, got {type(padding_idx).__name__}")
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(
            f"padding_idx={padding_idx} must be within num_embeddings={num_embeddings} "
            f"(in [{-num_embeddings}, {num_embeddings - 1}])"
        )
    return padding_idx + num_embeddings if padding_idx < 0 else padding_idx


def check_renorm_args(max_norm: float | None, norm_type: float) -> None:
    if max_norm is not None and not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    if not norm_type > 0:
        raise ValueError(f"norm_type must be > 0, got {norm_type}")


def check_lookup_args(input: Tensor, weight: Tensor, bounds_check: str) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"indices must be a torch.Tensor, got {type(input).__name__}")
    if input.dtype not in INDEX_DTYPES:
        raise TypeError(
            f"indices must be an integer tensor of dtype torch.int64 or torch.int32, "
            f"got {input.dtype}"
        )
    if weight.dim() != 2:
        raise ValueError(
            f"weight must be 2-D (num_embeddings, embedding_dim), got {weight.dim()}-D"
        )
    if input.device != weight.device:
        raise ValueError(
            f"indices are on {input.device} but the weight is on {weight.device}; "
            "move them to the same device"
        )
    if bounds_check not in BOUNDS_CHECKS:
        raise ValueError(f"bounds_check must be one of {BOUNDS_CHECKS}, got {bounds_check!r}")


def embedding(
    input: Tensor,
    weight: Tensor,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
    *,
    bounds_check: str = "raise",
) -> Tensor:
    """Look up rows of ``weight``; same arguments and results as ``F.embedding``.

    Differences, all in the user's favour: the sparse gradient is deduplicated and coalesced,
    ``scale_grad_by_freq`` works with ``sparse=True``, and bad input raises before anything is
    written. ``bounds_check="none"`` skips the index range check for callers that validate
    upstream (an out-of-range index is then undefined behaviour).
    """
    check_lookup_args(input, weight, bounds_check)
    check_renorm_args(max_norm, norm_type)
    padding = normalize_padding_idx(padding_idx, weight.shape[0])
    check_bounds = bounds_check == "raise"
    flat = input.reshape(-1)
    if max_norm is not None:
        with torch.no_grad():
            _ops.ops().renorm_(weight, flat, float(max_norm), float(norm_type), check_bounds)
        check_bounds = False  # the renorm validated the indices before writing
    args = (weight, flat, padding, bool(scale_grad_by_freq), bool(sparse), check_bounds)
    if not torch.compiler.is_compiling():
        if sparse:
            keep_grad_coalesced(weight)
        lookup = _LookupWithJvp if _under_functorch(weight) else _EagerLookup
        out = lookup.apply(*args)
    elif not (torch.is_grad_enabled() and weight.requires_grad):
        out = _ops.ops().gather(weight, flat, check_bounds)
    elif sparse:
        out = _sparse_lookup_outside_graph(*args)
    else:
        out = _Lookup.apply(*args)
    return out.view(*input.shape, weight.shape[1])


@torch._disable_dynamo  # torch.compiler.disable, without importing torch._dynamo at import time
def _sparse_lookup_outside_graph(*args) -> Tensor:
    """Under torch.compile, a lookup that needs a sparse gradient runs eagerly (a graph break).

    AOTAutograd cannot trace a sparse COO gradient: traced, ``weight.grad`` comes back dense, a
    full (num_embeddings, embedding_dim) tensor every step. Running this one op outside the graph
    keeps the gradient sparse; the dense path and no-grad lookups compile with no break.
    """
    keep_grad_coalesced(args[0])
    return _EagerLookup.apply(*args)


def keep_grad_coalesced(weight: Tensor) -> None:
    """Keep the ``is_coalesced`` flag of the gradient sparsemb writes into ``weight.grad``.

    torch's AccumulateGrad stores a fresh sparse gradient as a shallow copy that drops the flag,
    so optimizers would ``coalesce()`` (sort) it again. A post-accumulate hook restores the flag
    when ``.grad`` still holds exactly the values our backward produced (not after accumulation).
    """
    if getattr(weight, "_sparsemb_coalesce_hook", False) or not weight.is_leaf:
        return
    if not weight.requires_grad:
        return
    weight.register_post_accumulate_grad_hook(_restore_coalesced_flag)
    weight._sparsemb_coalesce_hook = True


def _restore_coalesced_flag(weight: Tensor) -> None:
    grad, produced = weight.grad, getattr(weight, "_sparsemb_last_values", None)
    weight._sparsemb_last_values = None
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


def _under_functorch(tensor: Tensor) -> bool:
    """True inside torch.func transforms, which need setup_context-style Functions."""
    return torch._C._functorch.is_functorch_wrapped_tensor(tensor)


# The lookup and its dense gradient each come as three autograd.Function classes that share
# one forward, backward and jvp: a setup_context-style class for torch.compile (Dynamo cannot
# trace a custom jvp), the same plus jvp for torch.func transforms, and a classic-style class
# for plain eager code, where setup_context-style ``apply`` pays an ``inspect.signature`` bind
# on every call (~100 us, more than the whole lookup of a small batch).


def _save_lookup_context(ctx, weight, indices, padding_idx, scale_grad_by_freq, sparse):
    ctx.save_for_backward(indices)
    ctx.save_for_forward(indices)
    ctx.num_weights = weight.shape[0]
    ctx.padding_idx = padding_idx
    ctx.scale_grad_by_freq = scale_grad_by_freq
    ctx.sparse = sparse
    ctx.fused_update: Callable[[Tensor, Tensor], None] | None = getattr(
        weight, FUSED_UPDATE_ATTR, None
    )
    ctx.grad_owner = weight if getattr(weight, "_sparsemb_coalesce_hook", False) else None


def _lookup_backward(ctx, grad):
    """Deduplicated gradient: fused into the optimizer, sparse COO, or dense."""
    (indices,) = ctx.saved_tensors
    weight_grad = None
    if ctx.needs_input_grad[0]:
        ops = _ops.ops()
        if ctx.fused_update is not None:
            unique, values = ops.dedup_grad(
                grad.detach(), indices, ctx.padding_idx, ctx.scale_grad_by_freq
            )
            with torch.no_grad():
                ctx.fused_update(unique, values)
        elif ctx.sparse:
            unique, values = ops.dedup_grad(grad, indices, ctx.padding_idx, ctx.scale_grad_by_freq)
            weight_grad = sparse_grad_tensor(unique, values, ctx.num_weights)
            if ctx.grad_owner is not None:
                ctx.grad_owner._sparsemb_last_values = (values.data_ptr(), values.numel())
        else:
            if torch.compiler.is_compiling():
                dense = _DenseGrad
            elif _under_functorch(grad):
                dense = _DenseGradWithJvp
            else:
                dense = _EagerDenseGrad
            weight_grad = dense.apply(
                grad, indices, ctx.num_weights, ctx.padding_idx, ctx.scale_grad_by_freq
            )
    return weight_grad, None, None, None, None, None


def _lookup_jvp(ctx, weight_tangent, *_):
    (indices,) = ctx.saved_tensors
    return _ops.ops().gather(weight_tangent, indices, False)


class _Lookup(torch.autograd.Function):
    """Gather whose backward is the deduplicated gradient (sparse COO or dense)."""

    @staticmethod
    def forward(weight, indices, padding_idx, scale_grad_by_freq, sparse, check_bounds):
        return _ops.ops().gather(weight, indices, check_bounds)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save_lookup_context(ctx, *inputs[:5])

    backward = staticmethod(_lookup_backward)


class _LookupWithJvp(_Lookup):
    """_Lookup plus forward-mode AD, for torch.func transforms."""

    jvp = staticmethod(_lookup_jvp)


class _EagerLookup(torch.autograd.Function):
    """_Lookup in classic style for eager code; forward-mode AD included."""

    @staticmethod
    def forward(ctx, weight, indices, padding_idx, scale_grad_by_freq, sparse, check_bounds):
        _save_lookup_context(ctx, weight, indices, padding_idx, scale_grad_by_freq, sparse)
        return _ops.ops().gather(weight, indices, check_bounds)

    backward = staticmethod(_lookup_backward)
    jvp = staticmethod(_lookup_jvp)


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


class _DenseGradWithJvp(_DenseGrad):
    jvp = staticmethod(_dense_grad_jvp)


class _EagerDenseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad, indices, num_weights, padding_idx, scale_grad_by_freq):
        _save_dense_grad_context(ctx, indices, num_weights, padding_idx, scale_grad_by_freq)
        return _ops.ops().dense_grad(grad, indices, num_weights, padding_idx, scale_grad_by_freq)

    backward = staticmethod(_dense_grad_backward)
    jvp = staticmethod(_dense_grad_jvp)
