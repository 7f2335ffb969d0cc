"""Shared fixtures: the backend switch and the device list.

On a machine without CUDA, Triton's interpreter is switched on here, before any test imports
``sparsemb.kernels`` (``TRITON_INTERPRET`` is read when ``@triton.jit`` decorates), so the same
tests drive the Triton kernels on CPU tensors through ``SPARSEMB_BACKEND=triton``.
"""

import importlib.util
import os
from dataclasses import dataclass

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_TRITON = importlib.util.find_spec("triton") is not None
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@dataclass(frozen=True)
class Backend:
    name: str  # the SPARSEMB_BACKEND value under test
    device: torch.device  # where the test's tensors live: cuda for Triton when there is a GPU


@pytest.fixture(params=["torch", "triton"])
def backend(request, monkeypatch):
    """Run the test once on the pure-PyTorch path (CPU) and once on the Triton kernels: on the
    GPU where there is one, else on CPU tensors under Triton's interpreter."""
    if request.param == "triton" and not HAS_TRITON:
        pytest.skip("triton is not installed")
    monkeypatch.setenv("SPARSEMB_BACKEND", request.param)
    on_gpu = request.param == "triton" and torch.cuda.is_available()
    return Backend(request.param, torch.device("cuda" if on_gpu else "cpu"))


@pytest.fixture
def triton_backend(monkeypatch):
    """The Triton kernels only, on the GPU where there is one (else under the interpreter)."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    monkeypatch.setenv("SPARSEMB_BACKEND", "triton")
    return Backend("triton", torch.device("cuda" if torch.cuda.is_available() else "cpu"))


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)
