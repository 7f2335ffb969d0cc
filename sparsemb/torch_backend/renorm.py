"""In-place max_norm renorm of the looked-up rows, in pure PyTorch; mirrors ``kernels/renorm.py``.

Norms are computed in float32 (float64 for float64 tables). A row whose norm is NaN is left
alone (NaN > max_norm is false), as torch does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsemb import _memory
from sparsemb._dtypes import state_dtype
from sparsemb.torch_backend import numba_rows
from sparsemb.torch_backend.grad import sort_keys

RENORM_EPS = 1e-7  # torch adds this to the norm before dividing: scale = max_norm / (norm + eps)


def row_norms(rows: Tensor, norm_type: float) -> Tensor:
    """The norm_type-norm of each row, computed in the accumulation dtype: torch's
    ``vector_norm``, except p = inf as max(amax, -amin), the same values (NaN rows: NaN) and
    3-5x faster on CPU. (A cheaper sum of ``|x|^p`` for other p rounds differently from torch,
    and rows renormed once sit within that rounding of max_norm.)"""
    rows = rows.to(state_dtype(rows.dtype))
    if norm_type == float("inf") and rows.shape[1]:
        largest = torch.amax(rows, 1)
        return torch.maximum(largest, torch.amin(rows, 1).neg_(), out=largest)
    return torch.linalg.vector_norm(rows, ord=norm_type, dim=1)


def exceeds(norms: Tensor, max_norm: float) -> Tensor:
    """``norm > max_norm``, compared as torch compares it: on CPU in float64 (torch's
    ``embedding_renorm_`` reads each norm as a double), elsewhere in the norms' dtype (torch's
    CUDA kernel takes max_norm in it). A float32 comparison on CPU differs where max_norm is not
    a float32 (0.1, 0.3, 1.1): a row renormed once sits at its float32 rounding."""
    if norms.device.type == "cpu":
        return norms.double() > max_norm
    return norms > max_norm


def renorm_scales(norms: Tensor, max_norm: float) -> Tensor:
    """Per-row factor max_norm / (norm + 1e-7), for rows whose norm is over max_norm.

    Divided in float64 (a true division: torch's ``max_norm / tensor`` is a reciprocal and a
    multiply, 1 ulp off) and rounded to the norms' dtype, as torch's ``embedding_renorm_``
    computes its scale in double and multiplies the row by it: the renormed rows equal torch's
    bit for bit (a float32 division differed from it by 1-2 ulp)."""
    denominator = norms.double() + RENORM_EPS
    return torch.div(torch.full_like(denominator, max_norm), denominator).to(norms.dtype)


def renorm_(weight: Tensor, indices: Tensor, max_norm: float, norm_type: float) -> None:
    """Rescale, in place, each unique looked-up row whose norm exceeds max_norm."""
    num_rows = weight.shape[0]
    rows_ids = torch.unique(sort_keys(indices, num_rows)).to(torch.int64)  # index_copy_: int64
    if rows_ids.numel() == 0 or weight.shape[1] == 0:
        return
    rows = weight.index_select(0, rows_ids)
    norms = row_norms(rows, norm_type)
    over = exceeds(norms, max_norm)
    if not bool(over.any()):
        return
    rows_ids, rows, scales = rows_ids[over], rows[over], renorm_scales(norms[over], max_norm)
    scaled = (rows.to(scales.dtype) * scales.unsqueeze(1)).to(weight.dtype)
    weight.index_copy_(0, rows_ids, scaled)


GATHER_BLOCK_BYTES = 8 << 20  # few blocks (each op wakes the OpenMP team: ~50 us under
# OMP_WAIT_POLICY=PASSIVE), each still in L3 when its norms are read (measured 1-16 MiB)


def gather_renormed_(weight: Tensor, indices: Tensor, max_norm: float, norm_type: float) -> Tensor:
    """``renorm_(weight, indices, ...)`` followed by ``weight[indices]``, with the same values
    and in fewer passes: the norms are taken of the rows as they are gathered (a row's norm is
    the same whether read from the weight or from its copy), so a step whose rows are all
    within max_norm (the usual case once trained) costs about the gather alone, with no sort.
    Rows found over max_norm are renormed in the weight (each unique row once, as ``renorm_``)
    and gathered again. The 2-norm of a contiguous float32/float64 table is taken during the
    gather itself (``numba_rows.gather_over``, torch's bits); otherwise a cache-sized block at
    a time, right after it is gathered."""
    n, dim = indices.shape[0], weight.shape[1]
    if n == 0 or dim == 0:
        return weight.index_select(0, indices)
    out = _memory.output(n, dim, weight.dtype)
    over = None
    if norm_type == 2 and n * dim >= numba_rows.MIN_ELEMENTS:
        over = numba_rows.gather_over(weight, indices, out, max_norm)  # empty: none over
    if over is None:
        over = exceeds(_gather_blocks(weight, indices, out, norm_type), max_norm)
    if over.numel() and bool(over.any()):  # NaN rows are never over: left alone, as torch does
        positions = over.nonzero().squeeze(1)
        over_indices = indices.index_select(0, positions)
        renorm_(weight, over_indices, max_norm, norm_type)
        out.index_copy_(0, positions, weight.index_select(0, over_indices))
    return out


def _gather_blocks(weight: Tensor, indices: Tensor, out: Tensor, norm_type: float) -> Tensor:
    """``out[:] = weight[indices]`` in cache-sized blocks, each block's row norms taken while
    it is in cache; returns the norms."""
    n, dim = out.shape
    norms = torch.empty(n, dtype=state_dtype(weight.dtype))
    step = max(1, GATHER_BLOCK_BYTES // (dim * weight.element_size()))
    for start in range(0, n, step):
        block = torch.index_select(weight, 0, indices[start:start + step],
                                   out=out[start:start + step])
        norms[start:start + step] = row_norms(block, norm_type)
    return norms
