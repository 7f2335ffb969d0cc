"""Row gather in pure PyTorch; mirrors ``kernels/gather.py``."""

from __future__ import annotations

from torch import Tensor


def gather(weight: Tensor, indices: Tensor) -> Tensor:
    """Rows ``weight[indices]`` as an (N, D) tensor."""
    return weight.index_select(0, indices)
