"""torch.compile and torch.library checks of the sparsemb ops (CPU: the ops' PyTorch kernels)."""

import pytest
import torch
from torch import nn

import sparsemb
from helpers import dense, random_indices
from sparsemb import _ops


def model(sparse, device="cpu", **options):
    torch.manual_seed(0)
    table = sparsemb.Embedding(50, 8, sparse=sparse, **options)
    return nn.Sequential(table, nn.Linear(8, 1)).to(device)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("options", [{}, {"max_norm": 1.0, "padding_idx": 3}])
def test_dense_training_compiles_without_graph_breaks(backend, options):
    """The custom ops are opaque to the compiler, so the Triton path compiles too (on CPU its
    kernels then run under the interpreter at run time; traced, only the fake impls run)."""
    eager = model(False, backend.device, **options)
    compiled_src = model(False, backend.device, **options)
    compiled = torch.compile(compiled_src, fullgraph=True)
    idx = random_indices(50, (4, 6), hot=3, device=backend.device)
    for net in (eager, compiled):
        net(idx).sum().backward()
    torch.testing.assert_close(compiled_src[0].weight, eager[0].weight)
    torch.testing.assert_close(compiled_src[0].weight.grad, eager[0].weight.grad)


def test_sparse_inference_compiles_without_graph_breaks(backend):
    net = model(True, backend.device)
    compiled = torch.compile(net, fullgraph=True)
    idx = random_indices(50, (4, 6), device=backend.device)
    with torch.no_grad():
        torch.testing.assert_close(compiled(idx), net(idx))


def test_sparse_training_under_compile_keeps_a_sparse_grad(backend):
    """AOTAutograd would densify a sparse gradient; sparsemb's compiled backward hands it to an
    opaque op instead (no graph break), so weight.grad stays a coalesced sparse tensor."""
    eager, compiled_src = model(True, backend.device), model(True, backend.device)
    compiled = torch.compile(compiled_src, fullgraph=True)
    idx = random_indices(50, (4, 6), hot=7, device=backend.device)
    for net in (eager, compiled):
        net(idx).sum().backward()
    grad = compiled_src[0].weight.grad
    assert grad.is_sparse and grad.is_coalesced()
    assert grad._nnz() <= idx.numel()  # O(batch), not O(vocabulary)
    torch.testing.assert_close(dense(grad), dense(eager[0].weight.grad))


def test_ops_pass_opcheck():
    weight = torch.randn(10, 4)
    idx = torch.tensor([1, 3, 3, 9])
    grad = torch.randn(4, 4)
    torch.library.opcheck(_ops.gather, (weight, idx, True))
    torch.library.opcheck(_ops.dense_grad, (grad, idx, 10, 3, True))
    torch.library.opcheck(_ops.dense_grad_backward, (weight, idx, -1, False))
    torch.library.opcheck(_ops.renorm_, (weight.clone(), idx, 1.0, 2.0, True))
    torch.library.opcheck(
        _ops.dedup_grad, (grad, idx, 100, -1, False), test_utils=("test_schema", "test_faketensor")
    )
