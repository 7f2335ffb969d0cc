"""The dtypes every path agrees on: where sums, norms and optimizer state are computed."""

from __future__ import annotations

import torch

HALF_DTYPES = (torch.bfloat16, torch.float16)


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Gradient sums, norms, optimizer state and update arithmetic: float32, or float64 for
    float64 tables (16-bit tables are computed in float32 and rounded once)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
