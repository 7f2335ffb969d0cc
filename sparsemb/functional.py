"""``sparsemb.embedding``: ``torch.nn.functional.embedding`` with a deduplicated sparse gradient.

Arguments are checked here (``_checks``) before any op runs, so a rejected call leaves the weight
untouched; the index range is checked inside the ops (so ``torch.compile`` sees no
data-dependent Python) and, under max_norm, before the in-place renorm writes anything.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsemb import _autograd, _ops
from sparsemb._checks import check_lookup_args, normalize_padding_idx


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
    upstream (an out-of-range index then reads zeros on the Triton path and is never written).
    """
    check_lookup_args(input, weight, max_norm, norm_type, bounds_check)
    padding = normalize_padding_idx(padding_idx, weight.shape[0])
    check_bounds = bounds_check == "raise"
    if _autograd.under_functorch(input, weight):
        return _lookup_under_functorch(
            input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, check_bounds
        )
    flat = input.reshape(-1)  # may stay a strided or expanded view: the kernels take strides
    gathered = presorted = None  # what the renorm did for the lookup (see renorm_for_lookup)
    if max_norm is not None:
        with torch.no_grad():
            # On a detached alias, as torch does: forward-mode AD must not see the renorm (it
            # would rewrite the caller's tangent); the version counter is shared.
            gathered, presorted = _ops.renorm_for_lookup(
                weight.detach(), flat, float(max_norm), float(norm_type), check_bounds
            )
        check_bounds = False  # the renorm validated the indices before writing
    out = _autograd.lookup(
        weight, flat, padding, bool(scale_grad_by_freq), bool(sparse), check_bounds, gathered,
        presorted=presorted,
    )
    return out.view(*input.shape, weight.shape[1])


def _lookup_under_functorch(
    input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, check_bounds
) -> Tensor:
    """Inside torch.func transforms (vmap, grad, jvp, jacrev, hessian...): torch's own
    formulation, whose batching and forward-AD rules the transforms know. Gradients are dense
    there (torch's sparse embedding gradient fails under these transforms)."""
    if check_bounds:
        _ops.check_index_range(_autograd.unwrap_functorch(input), weight.shape[0])
    return F.embedding(input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq)
