"""``torch.library`` ops in the ``sparsemb`` namespace: dispatch, fake impls, bounds checks.

Each op picks its implementation through ``_backend.uses_triton`` (the one dispatch point) and
has a fake implementation so ``torch.compile`` traces through it without a graph break. The
in-place max_norm renorm is a separate mutating op run before the gather, as ``F.embedding``
does, because a mutating op cannot carry an autograd formula.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor

from sparsemb._backend import kernel_module, uses_triton
from sparsemb._checks import value_outside
from sparsemb.torch_backend import bag as torch_bag
from sparsemb.torch_backend import gather as torch_gather
from sparsemb.torch_backend import grad as torch_grad
from sparsemb.torch_backend import renorm as torch_renorm

# Each op is a plain function registered as a ``sparsemb::`` custom op. ``torch.compile`` traces
# the registered ops (through their fake impls); eager code calls the functions directly through
# ``EAGER``, skipping the dispatcher round trip (~100 us a call, which dominated small batches).


def check_index_range(indices: Tensor, num_embeddings: int) -> None:
    """Raise IndexError naming the first offending value if an index is outside the table."""
    bad = value_outside(indices, num_embeddings)
    if bad is not None and bad < 0:
        raise IndexError(
            f"index {bad} is negative; indices must lie in [0, num_embeddings={num_embeddings})"
        )
    if bad is not None:
        raise IndexError(
            f"index {bad} is out of range for num_embeddings={num_embeddings} "
            f"(valid indices are 0..{num_embeddings - 1})"
        )


def _renorm_impl(
    weight: Tensor, indices: Tensor, max_norm: float, norm_type: float, check_bounds: bool
) -> None:
    """Scale each unique looked-up row with norm > max_norm down to max_norm, in place.

    The weight's version counter is bumped as by any torch in-place op (the Triton kernel writes
    behind autograd's back), so a graph that saved the weight before the renorm raises in
    backward instead of silently using the new values.
    """
    _renorm_sorting(weight, indices, max_norm, norm_type, check_bounds)


def _renorm_sorting(
    weight: Tensor, indices: Tensor, max_norm: float, norm_type: float, check_bounds: bool
) -> tuple[Tensor, Tensor] | None:
    """``_renorm_impl``, returning on the Triton path the stable sort of the indices it made
    (``kernels.grad.sort_keys``: sorted keys, permutation), which backward's dedup can reuse;
    None on the torch path. The sort replaces a ``unique`` (a host sync); the sorted keys'
    first and last values are the only ones the bounds check reads."""
    if weight.is_meta:
        return None
    presorted = None
    if uses_triton(weight):
        presorted = kernel_module("grad").sort_keys(indices, weight.shape[0])
        keys = presorted[0]
        # a view of the first and last sorted keys (out-of-range ones were clamped to -1 or V):
        # one tiny reduction and one read; the offending value is named from ``indices``
        ends = keys[:: max(keys.shape[0] - 1, 1)]
        if check_bounds and value_outside(ends, weight.shape[0]) is not None:
            check_index_range(indices, weight.shape[0])
        kernels = kernel_module("renorm")
        kernels.renorm_rows_(weight, keys, max_norm, norm_type, torch_renorm.RENORM_EPS)
    else:
        if check_bounds:
            check_index_range(indices, weight.shape[0])
        torch_renorm.renorm_(weight, indices, max_norm, norm_type)
    torch.autograd.graph.increment_version(weight)
    return presorted


def renorm_for_lookup(
    weight: Tensor, indices: Tensor, max_norm: float, norm_type: float, check_bounds: bool
) -> tuple[Tensor | None, tuple[Tensor, Tensor] | None]:
    """The max_norm renorm before a lookup: (the looked-up rows, if it gathered them; the sort
    of the indices, if it made one). Eager code on the pure-PyTorch CPU path renorms and
    gathers in one pass (``torch_renorm.gather_renormed_``: for ``lookup(gathered=...)``); on
    the Triton path it returns its sort (for ``lookup(presorted=...)``, so backward does not
    sort again); while torch.compile traces, the registered op, and neither."""
    if torch.compiler.is_compiling():
        renorm_(weight, indices, max_norm, norm_type, check_bounds)
        return None, None
    if weight.device.type == "cpu" and not uses_triton(weight):
        if check_bounds:
            check_index_range(indices, weight.shape[0])
        rows = torch_renorm.gather_renormed_(weight, indices, max_norm, norm_type)
        torch.autograd.graph.increment_version(weight)
        return rows, None
    return None, _renorm_sorting(weight, indices, max_norm, norm_type, check_bounds)


renorm_ = torch.library.custom_op("sparsemb::renorm_", _renorm_impl, mutates_args=("weight",))


@renorm_.register_fake
def _(weight, indices, max_norm, norm_type, check_bounds):
    return None


def _gather_impl(weight: Tensor, indices: Tensor, check_bounds: bool) -> Tensor:
    """Rows ``weight[indices]``, (N, D), for 1-D ``indices``."""
    if uses_triton(weight):
        out, bad = kernel_module("gather").gather(weight, indices, check_bounds)
        if bad is not None and bool(bad):  # one flag read; details only on the error path
            check_index_range(indices, weight.shape[0])
        return out
    if check_bounds:
        check_index_range(indices, weight.shape[0])
    return torch_gather.gather(weight, indices)


gather = torch.library.custom_op("sparsemb::gather", _gather_impl, mutates_args=())


@gather.register_fake
def _(weight, indices, check_bounds):
    return weight.new_empty(indices.shape[0], weight.shape[1])


def _dedup_grad_impl(
    grad: Tensor, indices: Tensor, num_weights: int, padding_idx: int, scale_grad_by_freq: bool
) -> tuple[Tensor, Tensor]:
    """(unique rows ascending, summed gradient rows) of a lookup; see ``torch_backend.grad``."""
    return dedup_grad_presorted(grad, indices, num_weights, padding_idx, scale_grad_by_freq)


def dedup_grad_presorted(
    grad: Tensor, indices: Tensor, num_weights: int, padding_idx: int, scale_grad_by_freq: bool,
    presorted: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """``dedup_grad`` in eager code; on the Triton path it reuses ``presorted`` (the forward's
    sort of these indices, from ``renorm_for_lookup``) instead of sorting again."""
    args = (grad, indices, num_weights, padding_idx, scale_grad_by_freq)
    if uses_triton(grad):
        return kernel_module("grad").dedup_grad(*args, presorted=presorted)
    return torch_grad.dedup_grad(*args)


dedup_grad = torch.library.custom_op("sparsemb::dedup_grad", _dedup_grad_impl, mutates_args=())


def pads_fused_rows(grad: Tensor) -> bool:
    """Whether the fused optimizer step takes the padded gradient (no host read): on CUDA, where
    the optimizers skip rows outside the table instead of checking them (a check would sync)."""
    return grad.is_cuda


def dedup_grad_for_update(
    grad: Tensor, indices: Tensor, num_weights: int, padding_idx: int, scale_grad_by_freq: bool,
    presorted: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """The deduplicated gradient a fused optimizer step takes, in eager code: on the Triton path
    (where ``pads_fused_rows``) N slots without a host sync, the unused ones holding row
    ``num_weights`` (outside the table, skipped by the optimizer kernels); else ``dedup_grad``.
    ``presorted``: as in ``dedup_grad_presorted``."""
    args = (grad, indices, num_weights, padding_idx, scale_grad_by_freq)
    if uses_triton(grad) and pads_fused_rows(grad):
        return kernel_module("grad").dedup_grad_padded(*args, presorted=presorted)
    return dedup_grad_presorted(*args, presorted)


@dedup_grad.register_fake
def _(grad, indices, num_weights, padding_idx, scale_grad_by_freq):
    unique_count = torch.library.get_ctx().new_dynamic_size()
    unique = indices.new_empty(unique_count, dtype=torch.int64)
    return unique, grad.new_empty(unique_count, grad.shape[1])


def _dense_grad_impl(
    grad: Tensor, indices: Tensor, num_weights: int, padding_idx: int, scale_grad_by_freq: bool
) -> Tensor:
    """The (num_weights, D) gradient of a lookup, equal to torch's dense embedding backward."""
    if uses_triton(grad):
        kernels = kernel_module("grad")
        return kernels.dense_grad(grad, indices, num_weights, padding_idx, scale_grad_by_freq)
    return torch_grad.dense_grad(grad, indices, num_weights, padding_idx, scale_grad_by_freq)


dense_grad = torch.library.custom_op("sparsemb::dense_grad", _dense_grad_impl, mutates_args=())


@dense_grad.register_fake
def _(grad, indices, num_weights, padding_idx, scale_grad_by_freq):
    return grad.new_empty(num_weights, grad.shape[1])


def _dense_grad_backward_impl(
    grad_grad: Tensor, indices: Tensor, padding_idx: int, scale_grad_by_freq: bool
) -> Tensor:
    """Adjoint of ``dense_grad`` (double backward): a scaled, padding-masked gather."""
    return torch_grad.dense_grad_backward(grad_grad, indices, padding_idx, scale_grad_by_freq)


dense_grad_backward = torch.library.custom_op(
    "sparsemb::dense_grad_backward", _dense_grad_backward_impl, mutates_args=()
)


@dense_grad_backward.register_fake
def _(grad_grad, indices, padding_idx, scale_grad_by_freq):
    return grad_grad.new_empty(indices.shape[0], grad_grad.shape[1])


_OPS = {  # name: (plain function, registered op)
    "renorm_": (_renorm_impl, renorm_),
    "gather": (_gather_impl, gather),
    "dedup_grad": (_dedup_grad_impl, dedup_grad),
    "dense_grad": (_dense_grad_impl, dense_grad),
    "dense_grad_backward": (_dense_grad_backward_impl, dense_grad_backward),
}
EAGER = SimpleNamespace(**{name: impl for name, (impl, _) in _OPS.items()})
COMPILED = SimpleNamespace(**{name: op for name, (_, op) in _OPS.items()})


def ops() -> SimpleNamespace:
    """The registered ops while torch.compile traces, the plain functions in eager mode."""
    return COMPILED if torch.compiler.is_compiling() else EAGER


# ----- EmbeddingBag: pooled forward, per-index gradient expansion, per-sample-weights gradient
# (bags as flattened indices + (B + 1,) int64 offsets; see ``torch_backend.bag``)


def _bag_forward_impl(
    weight: Tensor,
    indices: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    mode: int,
    padding_idx: int,
    check_bounds: bool,
) -> tuple[Tensor, Tensor]:
    """(pooled (B, D), max mode's arg-max positions (B, D) or an empty tensor)."""
    args = (weight, indices, offsets, per_sample_weights, mode, padding_idx)
    if uses_triton(weight):
        out, argmax, bad = kernel_module("bag").bag_forward(*args, check_bounds)
        if bad is not None and bool(bad):
            check_index_range(indices, weight.shape[0])
        return out, argmax
    if check_bounds:
        check_index_range(indices, weight.shape[0])
    return torch_bag.bag_forward(*args)


bag_forward = torch.library.custom_op(
    "sparsemb::bag_forward", _bag_forward_impl, mutates_args=()
)


@bag_forward.register_fake
def _(weight, indices, offsets, per_sample_weights, mode, padding_idx, check_bounds):
    num_bags = offsets.shape[0] - 1
    argmax_rows = num_bags if mode == torch_bag.MAX else 0
    argmax_shape = (argmax_rows, weight.shape[1]) if argmax_rows else (0,)
    out = weight.new_empty(num_bags, weight.shape[1])
    return out, indices.new_empty(argmax_shape, dtype=torch.int64)


def _bag_expand_grad_impl(
    grad: Tensor,
    indices: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    argmax: Tensor,
    mode: int,
    padding_idx: int,
) -> Tensor:
    """(N, D): each looked-up row's share of the bag gradient, ready for ``dedup_grad``."""
    args = (grad, indices, offsets, per_sample_weights, argmax, mode, padding_idx)
    if uses_triton(grad):
        return kernel_module("bag").expand_grad(*args)
    return torch_bag.expand_grad(*args)


bag_expand_grad = torch.library.custom_op(
    "sparsemb::bag_expand_grad", _bag_expand_grad_impl, mutates_args=()
)


@bag_expand_grad.register_fake
def _(grad, indices, offsets, per_sample_weights, argmax, mode, padding_idx):
    return grad.new_empty(indices.shape[0], grad.shape[1])


def _bag_psw_grad_impl(
    grad: Tensor, weight: Tensor, indices: Tensor, offsets: Tensor, padding_idx: int
) -> Tensor:
    """(N,): the gradient of the per-sample weights, a row dot product per index."""
    args = (grad, weight, indices, offsets, padding_idx)
    if uses_triton(weight):
        return kernel_module("bag").per_sample_weights_grad(*args)
    return torch_bag.per_sample_weights_grad(*args)


bag_psw_grad = torch.library.custom_op(
    "sparsemb::bag_psw_grad", _bag_psw_grad_impl, mutates_args=()
)


@bag_psw_grad.register_fake
def _(grad, weight, indices, offsets, padding_idx):
    return weight.new_empty(indices.shape[0])


def _pools_without_expansion(grad: Tensor, per_sample_weights: Tensor | None, mode: int) -> bool:
    """Whether the bag weight gradient skips the (N, D) expansion: the pure-PyTorch path, sum or
    mean without per-sample weights (see ``torch_bag.pooled_dedup_grad``)."""
    return not uses_triton(grad) and mode != torch_bag.MAX and per_sample_weights is None


def _bag_dedup_grad_impl(
    grad: Tensor,
    indices: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    argmax: Tensor,
    mode: int,
    padding_idx: int,
    num_weights: int,
    scale_grad_by_freq: bool,
) -> tuple[Tensor, Tensor]:
    """(unique rows, summed rows): the deduplicated weight gradient of a pooled lookup, equal to
    ``dedup_grad`` of ``bag_expand_grad``'s rows; the expansion is skipped where it can be."""
    args = (num_weights, padding_idx, scale_grad_by_freq)
    if _pools_without_expansion(grad, per_sample_weights, mode):
        return torch_bag.pooled_dedup_grad(grad, indices, offsets, mode, *args)
    per_index = _bag_expand_grad_impl(
        grad, indices, offsets, per_sample_weights, argmax, mode, padding_idx
    )
    return _dedup_grad_impl(per_index, indices, *args)


bag_dedup_grad = torch.library.custom_op(
    "sparsemb::bag_dedup_grad", _bag_dedup_grad_impl, mutates_args=()
)


@bag_dedup_grad.register_fake
def _(grad, indices, offsets, per_sample_weights, argmax, mode, padding_idx, num_weights, sgbf):
    unique_count = torch.library.get_ctx().new_dynamic_size()
    unique = indices.new_empty(unique_count, dtype=torch.int64)
    return unique, grad.new_empty(unique_count, grad.shape[1])


def _bag_dense_grad_impl(
    grad: Tensor,
    indices: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    argmax: Tensor,
    mode: int,
    padding_idx: int,
    num_weights: int,
    scale_grad_by_freq: bool,
) -> Tensor:
    """The (num_weights, D) weight gradient of a pooled lookup (``dense_grad`` of the
    expansion); the expansion is skipped where it can be."""
    args = (num_weights, padding_idx, scale_grad_by_freq)
    if _pools_without_expansion(grad, per_sample_weights, mode):
        return torch_bag.pooled_dense_grad(grad, indices, offsets, mode, *args)
    per_index = _bag_expand_grad_impl(
        grad, indices, offsets, per_sample_weights, argmax, mode, padding_idx
    )
    return _dense_grad_impl(per_index, indices, *args)


bag_dense_grad = torch.library.custom_op(
    "sparsemb::bag_dense_grad", _bag_dense_grad_impl, mutates_args=()
)


@bag_dense_grad.register_fake
def _(grad, indices, offsets, per_sample_weights, argmax, mode, padding_idx, num_weights, sgbf):
    return grad.new_empty(num_weights, grad.shape[1])


_OPS.update(
    bag_forward=(_bag_forward_impl, bag_forward),
    bag_expand_grad=(_bag_expand_grad_impl, bag_expand_grad),
    bag_psw_grad=(_bag_psw_grad_impl, bag_psw_grad),
    bag_dedup_grad=(_bag_dedup_grad_impl, bag_dedup_grad),
    bag_dense_grad=(_bag_dense_grad_impl, bag_dense_grad),
)
EAGER = SimpleNamespace(**{name: impl for name, (impl, _) in _OPS.items()})
COMPILED = SimpleNamespace(**{name: op for name, (_, op) in _OPS.items()})
