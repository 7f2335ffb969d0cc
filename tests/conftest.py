"""Shared fixtures: the backend switch and the device list.

On a machine without CUDA, Triton's interpreter is switched on here, before any test imports
``sparsemb.kernels`` (``TRITON_INTERPRET`` is read when ``@triton.jit`` decorates), so the same
tests drive the Triton kernels on CPU tensors through ``SPARSEMB_BACKEND=triton``.
"""

import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_TRITON = importlib.util.find_spec("triton") is not None
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=["torch", "triton"])
def backend(request, monkeypatch):
    """Run the test once on the pure-PyTorch path and once on the Triton kernels."""
    if request.param == "triton" and not HAS_TRITON:
        pytest.skip("triton is not installed")
    monkeypatch.setenv("SPARSEMB_BACKEND", request.param)
    return request.param


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)
