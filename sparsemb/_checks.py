"""Argument checks for the lookup and the table, in one place.

Each raises a clear Python exception (TypeError for a wrong kind of value, ValueError for a wrong
value) before any op runs, so a rejected call leaves the weight and optimizer state untouched.
Index *ranges* are checked inside the ops (``_ops.check_index_range``), where the values are.
The optimizers' options and gradient rows are checked here too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real
from typing import Any

import torch
from torch import Tensor

INDEX_DTYPES = (torch.int32, torch.int64)
BOUNDS_CHECKS = ("raise", "none")


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


def check_bounds_check(bounds_check: str) -> None:
    if bounds_check not in BOUNDS_CHECKS:
        raise ValueError(f"bounds_check must be one of {BOUNDS_CHECKS}, got {bounds_check!r}")


def check_lookup_args(
    input: Tensor, weight: Tensor, max_norm: float | None, norm_type: float, bounds_check: str
) -> None:
    """Everything about a lookup that can be checked without reading index values."""
    if not isinstance(input, Tensor):
        raise TypeError(f"indices must be a torch.Tensor, got {type(input).__name__}")
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
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
    check_bounds_check(bounds_check)
    check_renorm_args(max_norm, norm_type)
    if max_norm is not None and not weight.is_floating_point():
        raise TypeError(
            f"max_norm renormalizes rows in place and needs a floating-point weight, got "
            f"{weight.dtype}"
        )


def check_table_args(
    num_embeddings: int, embedding_dim: int, padding_idx: int | None, _weight: Tensor | None
) -> None:
    """The constructor's sizes, padding_idx and ``_weight`` shape."""
    for name, size in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim)):
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"{name} must be an int, got {type(size).__name__}")
        if size < 0:
            raise ValueError(f"{name} must be >= 0, got {size}")
    normalize_padding_idx(padding_idx, num_embeddings)
    if _weight is not None and tuple(_weight.shape) != (num_embeddings, embedding_dim):
        raise ValueError(
            f"_weight has shape {tuple(_weight.shape)}, expected "
            f"(num_embeddings, embedding_dim) = ({num_embeddings}, {embedding_dim})"
        )


# ----- optimizer options and gradient rows


def check_real(name: str, value: Any) -> float:
    """``value`` as a finite float, or ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_non_negative(name: str, value: Any) -> None:
    if check_real(name, value) < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def check_betas(value: Any) -> None:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {value!r}")
    for i, beta in enumerate(value):
        if not 0.0 <= check_real(f"betas[{i}]", beta) < 1.0:
            raise ValueError(f"betas[{i}] must be in [0, 1), got {beta}")


def check_common_options(options: dict[str, Any]) -> None:
    check_non_negative("lr", options["lr"])
    if not isinstance(options["stochastic_rounding"], bool):
        raise ValueError(
            f"stochastic_rounding must be True or False, got {options['stochastic_rounding']!r}"
        )
    seed = options["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an int or None, got {seed!r}")


def value_outside(values: Tensor, num_rows: int) -> int | None:
    """The lowest negative or the highest too-large value of ``values`` (rows or indices), or
    None when all lie in ``[0, num_rows)``. One reduction and one host read; meta tensors hold no
    values, so they pass."""
    if values.numel() == 0 or values.is_meta:
        return None
    low, high = torch.stack(torch.aminmax(values)).tolist()
    if low < 0:
        return low
    return high if high >= num_rows else None


def check_grad_rows(rows: Tensor, num_rows: int, what: Callable[[], str]) -> None:
    """IndexError naming the first bad value when a row lies outside ``[0, num_rows)``: such a
    row must not reach the kernels, which would write outside the weight (the CPU rules would
    raise half way through a table)."""
    bad = value_outside(rows, num_rows)
    if bad is not None:
        raise IndexError(
            f"row {bad} of {what()} is outside the table's rows [0, {num_rows}); nothing was "
            "updated"
        )


# ----- EmbeddingBag

BAG_MODES = {"sum": 0, "mean": 1, "max": 2}  # the mode numbers torch.embedding_bag uses


def bag_mode(mode: str) -> int:
    """The mode's number (sum 0, mean 1, max 2), or ValueError as F.embedding_bag raises."""
    if mode not in BAG_MODES:
        raise ValueError(f"mode has to be one of sum, mean or max, got {mode!r}")
    return BAG_MODES[mode]


def check_bag_args(
    input: Tensor,
    weight: Tensor,
    offsets: Tensor | None,
    per_sample_weights: Tensor | None,
    mode: str,
    scale_grad_by_freq: bool,
    max_norm: float | None,
    norm_type: float,
    bounds_check: str,
) -> None:
    """Everything about a pooled lookup that can be checked without reading values; the
    messages and exception types follow ``F.embedding_bag`` where torch checks the same."""
    check_lookup_args(input, weight, max_norm, norm_type, bounds_check)
    if bag_mode(mode) == BAG_MODES["max"] and scale_grad_by_freq:
        raise ValueError("max mode does not support scaling the gradient by the frequency")
    if input.dim() == 2:
        if offsets is not None:
            raise ValueError(
                "if input is 2D, then offsets has to be None, as input is treated as a "
                f"mini-batch of fixed length sequences; got offsets of type {type(offsets)}"
            )
    elif input.dim() == 1:
        if offsets is None:
            raise ValueError("offsets has to be a 1D Tensor but got None")
        if not isinstance(offsets, Tensor):
            raise TypeError(f"offsets must be a torch.Tensor, got {type(offsets).__name__}")
        if offsets.dim() != 1:
            raise ValueError(f"offsets has to be a 1D Tensor, got {offsets.dim()}-D")
        if offsets.dtype not in INDEX_DTYPES:
            raise TypeError(f"offsets must be torch.int64 or torch.int32, got {offsets.dtype}")
        if offsets.device != input.device:
            raise ValueError(f"offsets are on {offsets.device} but input is on {input.device}")
    else:
        raise ValueError(
            f"input has to be 1D or 2D Tensor, but got Tensor of dimension {input.dim()}"
        )
    if per_sample_weights is not None:
        if not isinstance(per_sample_weights, Tensor):
            raise TypeError("per_sample_weights must be a torch.Tensor or None")
        if mode != "sum":
            raise NotImplementedError(
                "embedding_bag: per_sample_weights was not None. per_sample_weights is only "
                f"supported for mode='sum' (got mode='{mode}')"
            )
        if per_sample_weights.shape != input.shape:
            raise ValueError(
                f"embedding_bag: If per_sample_weights ({tuple(per_sample_weights.shape)}) is "
                f"not None, then it must have the same shape as the input ({tuple(input.shape)})"
            )
        if per_sample_weights.dtype != weight.dtype:
            raise TypeError(
                f"per_sample_weights has dtype {per_sample_weights.dtype} but the weight has "
                f"{weight.dtype}; they must match"
            )
        if per_sample_weights.device != weight.device:
            raise ValueError("per_sample_weights must be on the weight's device")


def check_offsets_values(offsets: Tensor, num_indices: int, include_last_offset: bool) -> None:
    """ValueError unless offsets start at 0, never decrease and end within the input (exactly at
    its end with ``include_last_offset``).

    One reduction and one host read; run before any renorm so a bad call writes nothing."""
    if include_last_offset and offsets.numel() == 0:
        raise ValueError("include_last_offset=True needs at least one offset (the end)")
    if offsets.numel() == 0 or offsets.is_meta:
        return
    decreasing = (offsets[1:] < offsets[:-1]).any().to(offsets.dtype)
    first, last, decreasing = torch.stack([offsets[0], offsets[-1], decreasing]).tolist()
    if first != 0:
        raise ValueError(f"offsets[0] has to be 0 (the first bag starts at 0), got {first}")
    if last > num_indices:
        raise ValueError(
            f"offsets[-1] can not be greater than input's length {num_indices}, got {last}"
        )
    if include_last_offset and last != num_indices:
        # torch pools such a tail inconsistently (into the last bag for max mode or with a
        # padding_idx, not for sum; mean divides by the tail too), so it is refused.
        raise ValueError(
            f"with include_last_offset=True, offsets[-1] must equal the input's length "
            f"{num_indices} (it ends the last bag), got {last}"
        )
    if decreasing:
        step = int(torch.nonzero(offsets[1:] < offsets[:-1])[0, 0])
        raise ValueError(
            f"offsets must be non-decreasing, got offsets[{step}]={int(offsets[step])} > "
            f"offsets[{step + 1}]={int(offsets[step + 1])}"
        )
