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

import weakref
from collections.abc import Callable

import torch
from torch import Tensor

from sparsemb import _ops

# ----- what sparsemb stores on a weight Parameter

_FUSED_UPDATE = "_sparsemb_fused_update"  # callable(rows, values) run in backward
_COALESCE_HOOK = "_sparsemb_coalesce_hook"  # True once the post-accumulate hook is registered
_LAST_VALUES = "_sparsemb_last_values"  # (data_ptr, numel) of the values backward produced
_PRODUCED_GRAD = "_sparsemb_produced_grad"  # weakref to the .grad that backward produced

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
    when ``.grad`` still holds exactly the values our backward produced (not after accumulation);
    where the flag is off (``flags_coalesced``), it clears the one torch sets on a gradient of
    under 2 rows (``unflag_coalesced``).
    """
    if getattr(weight, _COALESCE_HOOK, False) or not weight.is_leaf or not weight.requires_grad:
        return
    weight.register_post_accumulate_grad_hook(_restore_coalesced_flag)
    setattr(weight, _COALESCE_HOOK, True)


def _restore_coalesced_flag(weight: Tensor) -> None:
    grad, produced = weight.grad, getattr(weight, _LAST_VALUES, None)
    setattr(weight, _LAST_VALUES, None)
    setattr(weight, _PRODUCED_GRAD, None)
    if grad is None or not grad.is_sparse:
        return
    if not flags_coalesced(weight):
        unflag_coalesced(grad)
        return
    if produced is None:
        return
    values = grad._values()
    if values.data_ptr() == produced[0] and values.numel() == produced[1]:
        grad._coalesced_(True)
        setattr(weight, _PRODUCED_GRAD, weakref.ref(grad))


def grad_is_sparsemb_output(weight: Tensor) -> bool:
    """True when ``weight.grad`` is, as an object, the sparse gradient sparsemb's backward
    produced (not accumulated, not replaced): its rows are unique, ascending and inside the
    table (the dedup drops any other), so an optimizer need not check them again (a host read).
    A weak reference, so a later tensor at the same address is never mistaken for it."""
    produced = getattr(weight, _PRODUCED_GRAD, None)
    return produced is not None and weight.grad is not None and produced() is weight.grad


def flags_coalesced(weight: Tensor) -> bool:
    """Whether the sparse gradient of ``weight`` is flagged coalesced (its rows are unique and
    ascending either way). Not on a CUDA table whose rows are not contiguous: for a gradient
    flagged coalesced, torch's CUDA ``dense.add_(sparse)`` (torch.optim.SGD's update) writes
    each row as contiguous elements, the wrong ones on such a table (seen on an H200 with torch
    2.11); unflagged, it takes ``index_add_``, which follows the strides."""
    return not (weight.is_cuda and not weight.is_contiguous())


def unflag_coalesced(grad: Tensor) -> None:
    """Clear the coalesced flag of a sparse ``.grad`` on a table where ``flags_coalesced`` is
    False. torch flags any sparse tensor of under 2 rows coalesced when AccumulateGrad or ``+``
    builds it, and with that flag its CUDA ``dense.add_`` writes even one row wrong on such a
    table (torch's own ``nn.Embedding(sparse=True)`` included; seen on an H200, torch 2.11)."""
    if grad.is_coalesced():
        grad._coalesced_(False)


def sparse_grad_tensor(
    unique: Tensor, values: Tensor, num_weights: int, coalesced: bool = True
) -> Tensor:
    """The COO gradient; flagged coalesced (``flags_coalesced``), torch's optimizers take it
    without a ``coalesce()`` pass."""
    size = (num_weights, values.shape[1])
    return torch.sparse_coo_tensor(
        unique.unsqueeze(0), values, size, is_coalesced=coalesced, check_invariants=False
    )


def save_sparse_grad_context(ctx, weight: Tensor) -> None:
    """What backward needs to hand out a sparse gradient: ``ctx.coalesced``
    (``flags_coalesced``) and ``ctx.grad_owner``, the weight whose post-accumulate hook
    restores the flag (None without the hook, or where the flag is not set)."""
    ctx.coalesced = flags_coalesced(weight)
    hooked = getattr(weight, _COALESCE_HOOK, False) and ctx.coalesced
    ctx.grad_owner = weight if hooked else None


def sparse_grad_for(ctx, unique: Tensor, values: Tensor, num_weights: int) -> Tensor:
    """The COO gradient backward returns; its values are noted on the grad owner, so the hook
    recognises them once AccumulateGrad has stored them."""
    if ctx.grad_owner is not None:
        setattr(ctx.grad_owner, _LAST_VALUES, (values.data_ptr(), values.numel()))
    return sparse_grad_tensor(unique, values, num_weights, ctx.coalesced)


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


def unwrap_functorch(tensor: Tensor) -> Tensor:
    """The plain tensor under every functorch wrapper (all of a vmap's batch at once)."""
    while torch._C._functorch.is_functorch_wrapped_tensor(tensor):
        tensor = torch._C._functorch.get_unwrapped(tensor)
    return tensor


# ----- the chooser


def lookup(
    weight: Tensor,
    indices: Tensor,
    padding_idx: int,
    scale_grad_by_freq: bool,
    sparse: bool,
    check_bounds: bool,
    gathered: Tensor | None = None,
    *,
    presorted: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Rows ``weight[indices]`` (1-D) with sparsemb's gradient, in eager or compiled code.
    ``gathered``: those rows, already gathered by the caller (the CPU max_norm path, eager).
    ``presorted``: the max_norm renorm's sort of ``indices`` (eager Triton path), which the
    eager backward's dedup reuses instead of sorting again; compiled code ignores both."""
    args = (weight, indices, padding_idx, scale_grad_by_freq, sparse, check_bounds)
    if not torch.compiler.is_compiling():
        if sparse:
            keep_grad_coalesced(weight)
        return _EagerLookup.apply(*args, gathered, presorted)
    if not (torch.is_grad_enabled() and weight.requires_grad):
        return _ops.ops().gather(weight, indices, check_bounds)
    if sparse and weight.is_leaf:
        return _CompiledSparseLookup.apply(*args)
    if sparse:
        # A computed (non-leaf) weight: its gradient must flow back through the graph that
        # computed it, which a sparse tensor cannot enter; it gets the dense gradient (the same
        # size as the weight, which is materialized already), with no graph break.
        return _Lookup.apply(weight, indices, padding_idx, scale_grad_by_freq, False, check_bounds)
    return _Lookup.apply(*args)


# ----- the lookup


def _save_lookup_context(
    ctx, weight, indices, padding_idx, scale_grad_by_freq, sparse, presorted=None
):
    ctx.save_for_backward(indices)
    ctx.presorted = presorted  # (sorted keys, perm) of indices, or None
    ctx.save_for_forward(indices)
    ctx.num_weights = weight.shape[0]
    ctx.padding_idx = padding_idx
    ctx.scale_grad_by_freq = scale_grad_by_freq
    ctx.sparse = sparse
    ctx.fused_update = fused_update_of(weight)
    save_sparse_grad_context(ctx, weight)


def _lookup_backward(ctx, grad):
    """Deduplicated gradient: fused into the optimizer, sparse COO, or dense."""
    (indices,) = ctx.saved_tensors
    weight_grad = None
    if not ctx.needs_input_grad[0]:
        return weight_grad, None, None, None, None, None
    args = (ctx.num_weights, ctx.padding_idx, ctx.scale_grad_by_freq)
    presorted = None if torch.compiler.is_compiling() else ctx.presorted
    if under_functorch(grad):
        # Batched output gradients (autograd.grad(is_grads_batched=True), gradcheck's batched
        # check): torch's own dense backward has the batching rule; a batch of sparse
        # gradients has no useful form.
        weight_grad = torch.ops.aten.embedding_dense_backward(grad, indices, *args)
    elif ctx.fused_update is not None:
        if torch.compiler.is_compiling():
            unique, values = _ops.ops().dedup_grad(grad.detach(), indices, *args)
        else:  # no host sync on the GPU: padded rows the optimizer kernels skip
            unique, values = _ops.dedup_grad_for_update(
                grad.detach(), indices, *args, presorted
            )
        with torch.no_grad():
            ctx.fused_update(unique, values)
    elif ctx.sparse:
        if presorted is not None:  # eager, after a renorm on the Triton path: no second sort
            unique, values = _ops.dedup_grad_presorted(grad, indices, *args, presorted)
        else:
            unique, values = _ops.ops().dedup_grad(grad, indices, *args)
        weight_grad = sparse_grad_for(ctx, unique, values, ctx.num_weights)
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
    def forward(ctx, weight, indices, padding_idx, scale_grad_by_freq, sparse, check_bounds,
                gathered=None, presorted=None):
        _save_lookup_context(
            ctx, weight, indices, padding_idx, scale_grad_by_freq, sparse, presorted
        )
        if gathered is not None:  # the CPU max_norm renorm gathered the rows already
            return gathered
        return _ops.ops().gather(weight, indices, check_bounds)

    @staticmethod
    def backward(ctx, grad):
        return *_lookup_backward(ctx, grad), None, None  # none for gathered, presorted

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


# ----- sparse gradients under torch.compile: delivered by an opaque op, not returned
#
# AOTAutograd cannot produce a sparse COO gradient: traced, ``weight.grad`` would come back as a
# dense (num_embeddings, embedding_dim) tensor every step. So under compile the lookup's backward
# returns no gradient for the weight; it calls ``sparsemb::sparse_grad_sink`` instead, an opaque
# op that dedups the gradient at run time and hands it to the fused optimizer update or
# accumulates it into ``weight.grad`` as a coalesced sparse tensor. The op is registered as
# effectful (ordered), so the compiler keeps it although it returns nothing; no data-dependent
# shape enters the graph, and the model compiles with no graph break (``fullgraph=True`` works).
# The weight arrives at run time as the Parameter itself (saved inputs keep their identity), so
# one compiled graph serves every model instance. What differs from eager: AccumulateGrad hooks
# of the weight (``register_post_accumulate_grad_hook``, DDP's reducer) do not see this gradient,
# and ``torch.autograd.grad(..., weight)`` gets none.


def _deliver_sparse_grad(
    weight: Tensor, grad: Tensor, indices: Tensor, padding_idx: int, scale_grad_by_freq: bool
) -> None:
    """Dedup a compiled lookup's gradient and hand it to the fused update or ``weight.grad``."""
    num_weights = weight.shape[0]
    unique, values = _ops.EAGER.dedup_grad(
        grad, indices, num_weights, padding_idx, scale_grad_by_freq
    )
    with torch.no_grad():
        update = fused_update_of(weight)
        if update is not None:
            update(unique, values)
            return
        sparse = sparse_grad_tensor(
            unique, values.to(weight.dtype), num_weights, flags_coalesced(weight)
        )
        if weight.grad is None:
            weight.grad = sparse
        elif weight.grad.is_sparse:
            weight.grad = weight.grad + sparse  # as AccumulateGrad: uncoalesced sum
            if not flags_coalesced(weight):
                unflag_coalesced(weight.grad)
        else:
            weight.grad.add_(sparse)  # a dense gradient already there (a tied output layer)


sparse_grad_sink = torch.library.custom_op(
    "sparsemb::sparse_grad_sink", _deliver_sparse_grad, mutates_args=()
)


@sparse_grad_sink.register_fake
def _(weight, grad, indices, padding_idx, scale_grad_by_freq):
    return None


def _register_ordered_effect(op) -> None:
    """Mark ``op`` as side-effecting, so compiled graphs keep it (a private torch API: its
    public home moved to torch.library in 2.13; earlier releases keep it in effects)."""
    if hasattr(torch.library, "_register_effectful_op"):
        torch.library._register_effectful_op(op, torch.library.EffectType.ORDERED)
    else:
        from torch._higher_order_ops import effects

        effects._register_effectful_op(op, effects._EffectType.ORDERED)


_register_ordered_effect(sparse_grad_sink._opoverload)


class _CompiledSparseLookup(torch.autograd.Function):
    """A sparse-gradient lookup for compiled code: its backward delivers the gradient through
    ``sparse_grad_sink`` and returns none for the weight."""

    @staticmethod
    def forward(weight, indices, padding_idx, scale_grad_by_freq, sparse, check_bounds):
        return _ops.ops().gather(weight, indices, check_bounds)

    @staticmethod
    def setup_context(ctx, inputs, output):
        weight, indices, padding_idx, scale_grad_by_freq = inputs[:4]
        ctx.save_for_backward(weight, indices)
        ctx.padding_idx = padding_idx
        ctx.scale_grad_by_freq = scale_grad_by_freq

    @staticmethod
    def backward(ctx, grad):
        weight, indices = ctx.saved_tensors
        if ctx.needs_input_grad[0]:
            sparse_grad_sink(weight, grad, indices, ctx.padding_idx, ctx.scale_grad_by_freq)
        return None, None, None, None, None, None
