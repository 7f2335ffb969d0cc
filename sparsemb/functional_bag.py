"""``sparsemb.embedding_bag``: ``F.embedding_bag`` with sparsemb's ops and gradient.

Input is brought to one form first: flattened indices and (B + 1,) int64 offsets whose last
entry ends the last bag (2-D input is B bags of its row length, as torch does). Arguments and
offsets are checked before the in-place max_norm renorm writes anything.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsemb import _autograd_bag, _ops
from sparsemb._autograd import under_functorch, unwrap_functorch
from sparsemb._checks import (
    bag_mode,
    check_bag_args,
    check_offsets_values,
    normalize_padding_idx,
)


def embedding_bag(
    input: Tensor,
    weight: Tensor,
    offsets: Tensor | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    mode: str = "mean",
    sparse: bool = False,
    per_sample_weights: Tensor | None = None,
    include_last_offset: bool = False,
    padding_idx: int | None = None,
    *,
    bounds_check: str = "raise",
) -> Tensor:
    """Pool rows of ``weight`` per bag; same arguments and results as ``F.embedding_bag``.

    Differences, in the user's favour: the sparse gradient is deduplicated and coalesced,
    ``mode="max"`` works with ``sparse=True``, and bad indices or offsets raise before the
    max_norm renorm writes anything. ``bounds_check="none"`` skips the index range check.
    """
    check_bag_args(
        input, weight, offsets, per_sample_weights, mode, scale_grad_by_freq, max_norm,
        norm_type, bounds_check,
    )  # fmt: skip
    padding = normalize_padding_idx(padding_idx, weight.shape[0])
    check_bounds = bounds_check == "raise"
    if under_functorch(input, weight, *(t for t in (offsets, per_sample_weights) if t is not None)):
        # torch's own formulation, dense gradients (as sparsemb.embedding under torch.func)
        if check_bounds:
            _ops.check_index_range(unwrap_functorch(input), weight.shape[0])
        return F.embedding_bag(
            input, weight, offsets, max_norm, norm_type, scale_grad_by_freq, mode, False,
            per_sample_weights, include_last_offset, padding_idx,
        )  # fmt: skip
    flat, bag_offsets = bag_layout(input, offsets, include_last_offset)
    if per_sample_weights is not None:
        per_sample_weights = per_sample_weights.reshape(-1)
    if max_norm is not None:
        with torch.no_grad():  # on a detached alias, as the plain lookup (see functional.py)
            _ops.ops().renorm_(
                weight.detach(), flat, float(max_norm), float(norm_type), check_bounds
            )
        check_bounds = False  # the renorm validated the indices before writing
    return _autograd_bag.bag_lookup(
        weight, flat, bag_offsets, per_sample_weights, bag_mode(mode), padding,
        bool(scale_grad_by_freq), bool(sparse), check_bounds,
    )  # fmt: skip


def bag_layout(
    input: Tensor, offsets: Tensor | None, include_last_offset: bool
) -> tuple[Tensor, Tensor]:
    """(flattened indices, (B + 1,) int64 offsets), the offsets' values checked.

    2-D input (B, L) is B bags of L indices, and ``include_last_offset`` is ignored, as in torch.
    """
    if input.dim() == 2:
        num_bags, length = input.shape
        bag_offsets = torch.arange(num_bags + 1, device=input.device) * length
        return input.reshape(-1), bag_offsets
    check_offsets_values(offsets, input.shape[0], include_last_offset)
    bag_offsets = offsets.to(torch.int64)
    if not include_last_offset:
        end = bag_offsets.new_full((1,), input.shape[0])
        bag_offsets = torch.cat([bag_offsets, end])
    return input, bag_offsets
