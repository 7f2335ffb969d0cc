"""Row gather in pure PyTorch; mirrors ``kernels/gather.py``."""

from __future__ import annotations

import torch
from torch import Tensor

from sparsemb import _memory


def gather(weight: Tensor, indices: Tensor) -> Tensor:
    """Rows ``weight[indices]`` as an (N, D) tensor.

    A large CPU output goes into a buffer of ``sparsemb._memory``'s output pool (memory already
    faulted in, with huge pages): a fresh buffer each step is faulted in again, which costs more
    than the copy. Only where ``out=`` is allowed: no autograd recording, no functorch wrapper."""
    if (
        weight.device.type == "cpu"
        and not (torch.is_grad_enabled() and weight.requires_grad)
        and not torch._C._functorch.is_functorch_wrapped_tensor(weight)
        and indices.numel() * weight.shape[1] * weight.element_size() >= _memory.MIN_BYTES
    ):
        out = _memory.output(indices.shape[0], weight.shape[1], weight.dtype)
        return torch.index_select(weight, 0, indices, out=out)
    return weight.index_select(0, indices)
