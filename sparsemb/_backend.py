"""The one dispatch point: which implementation runs an op on a given tensor.

``SPARSEMB_BACKEND`` (read on every call) overrides the choice:
  - ``auto`` (default): CUDA tensors take the Triton kernels, everything else pure PyTorch;
  - ``torch``: always the pure-PyTorch path;
  - ``triton``: always the Triton kernels. On CPU tensors they run under Triton's interpreter,
    which is how CI tests them; ``TRITON_INTERPRET=1`` must then be in the environment before
    ``sparsemb.kernels`` is first imported, and sparsemb sets it itself when the variable is
    unset at that moment.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

import torch

BACKENDS = ("auto", "torch", "triton")


def requested_backend() -> str:
    choice = os.environ.get("SPARSEMB_BACKEND", "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"SPARSEMB_BACKEND must be one of {BACKENDS}, got {choice!r}")
    return choice


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def kernel_module(name: str) -> ModuleType:
    """``sparsemb.kernels.<name>``, imported under the interpreter when Triton must run on CPU."""
    if requested_backend() == "triton" and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return importlib.import_module(f"sparsemb.kernels.{name}")


def interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def uses_triton(tensor: torch.Tensor) -> bool:
    """True when ops on ``tensor`` should run the Triton kernels."""
    choice = requested_backend()
    if choice == "torch" or not tensor.dtype.is_floating_point or tensor.dtype == torch.float64:
        return False
    if tensor.is_meta:  # no data: torch's own ops give the shapes
        return False
    if choice == "auto":
        return tensor.is_cuda and triton_available()
    if not triton_available():
        raise RuntimeError("SPARSEMB_BACKEND=triton but the triton package is not installed")
    if tensor.device.type == "cpu":
        if not interpreter_active():
            raise RuntimeError(
                "SPARSEMB_BACKEND=triton on CPU tensors needs TRITON_INTERPRET=1 set before "
                "sparsemb.kernels is imported"
            )
    return True
