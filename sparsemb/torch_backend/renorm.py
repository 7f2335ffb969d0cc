"""In-place max_norm renorm of the looked-up rows, in pure PyTorch; mirrors ``kernels/renorm.py``.

Norms are computed in float32 (float64 for float64 tables). A row whose norm is NaN is left
alone (NaN > max_norm is false), as torch does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsemb._dtypes import state_dtype
from sparsemb.torch_backend.grad import sort_keys

RENORM_EPS = 1e-7  # torch adds this to the norm before dividing: scale = max_norm / (norm + eps)


def row_norms(rows: Tensor, norm_type: float) -> Tensor:
    """The norm_type-norm of each row, computed in the accumulation dtype."""
    return torch.linalg.vector_norm(rows.to(state_dtype(rows.dtype)), ord=norm_type, dim=1)


def renorm_scales(norms: Tensor, max_norm: float) -> Tensor:
    """Per-row factor: max_norm / (norm + 1e-7) where norm > max_norm, else 1."""
    scale = max_norm / (norms + RENORM_EPS)
    return torch.where(norms > max_norm, scale, torch.ones_like(scale))


def renorm_(weight: Tensor, indices: Tensor, max_norm: float, norm_type: float) -> None:
    """Rescale, in place, each unique looked-up row whose norm exceeds max_norm."""
    num_rows = weight.shape[0]
    rows_ids = torch.unique(sort_keys(indices, num_rows)).to(torch.int64)  # index_copy_: int64
    if rows_ids.numel() == 0 or weight.shape[1] == 0:
        return
    rows = weight.index_select(0, rows_ids)
    scales = renorm_scales(row_norms(rows, norm_type), max_norm)
    over = scales < 1
    if not bool(over.any()):
        return
    rows_ids, rows, scales = rows_ids[over], rows[over], scales[over]
    scaled = (rows.to(scales.dtype) * scales.unsqueeze(1)).to(weight.dtype)
    weight.index_copy_(0, rows_ids, scaled)
