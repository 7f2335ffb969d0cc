"""``clip_grad_norm_`` over dense and sparse gradients together."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from sparsemb._checks import check_real
from sparsemb._dtypes import state_dtype


@torch.no_grad()
def clip_grad_norm_(
    parameters: Tensor | Iterable[Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over dense and sparse gradients together.

    The norm of a sparse gradient is that of its coalesced values (duplicates summed first);
    an uncoalesced sparse ``.grad`` is replaced by its coalesced form (the optimizer would
    coalesce it anyway). Each gradient is scaled in place by ``min(1, max_norm / (norm + 1e-6))``
    and the total norm is returned, as torch does. 16-bit gradients' norms are taken in float32.
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    max_norm = check_real("max_norm", max_norm)
    norm_type = float(norm_type)
    if not (norm_type > 0):
        raise ValueError(f"norm_type must be > 0 or inf, got {norm_type}")
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    pieces = []
    for p in params:
        grad = p.grad
        if grad.is_sparse:
            if not grad.is_coalesced():
                grad = grad.coalesce()
                p.grad = grad
            grad = grad._values()
        pieces.append(grad)
    device = pieces[0].device
    norms = [
        torch.linalg.vector_norm(g, norm_type, dtype=state_dtype(g.dtype)).to(device)
        for g in pieces
    ]
    dtype = torch.float64 if any(n.dtype == torch.float64 for n in norms) else torch.float32
    total = torch.linalg.vector_norm(torch.stack([n.to(dtype) for n in norms]), norm_type)
    if error_if_nonfinite and not bool(torch.isfinite(total)):
        raise RuntimeError(
            f"the total norm of order {norm_type} of the gradients is non-finite, so they cannot "
            "be clipped; set error_if_nonfinite=False to skip this check"
        )
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in pieces:
        g.mul_(coef.to(g.device))
    return total
