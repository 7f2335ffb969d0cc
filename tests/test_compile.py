"""torch.compile and torch.library checks of the sparsemb ops (CPU: the ops' PyTorch kernels)."""

import pytest
import torch
from helpers import dense, random_indices
from torch import nn

import sparsemb
from sparsemb import _ops


def model(sparse, **options):
    torch.manual_seed(0)
    return nn.Sequential(sparsemb.Embedding(50, 8, sparse=sparse, **options), nn.Linear(8, 1))


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("options", [{}, {"max_norm": 1.0, "padding_idx": 3}])
def test_dense_training_compiles_without_graph_breaks(options):
    eager, compiled_src = model(False, **options), model(False, **options)
    compiled = torch.compile(compiled_src, fullgraph=True)
    idx = random_indices(50, (4, 6), hot=3)
    for net in (eager, compiled):
        net(idx).sum().backward()
    torch.testing.assert_close(compiled_src[0].weight, eager[0].weight)
    torch.testing.assert_close(compiled_src[0].weight.grad, eager[0].weight.grad)


def test_sparse_inference_compiles_without_graph_breaks():
    net = model(True)
    compiled = torch.compile(net, fullgraph=True)
    idx = random_indices(50, (4, 6))
    with torch.no_grad():
        torch.testing.assert_close(compiled(idx), net(idx))


def test_sparse_training_under_compile_keeps_a_sparse_grad():
    """AOTAutograd would densify a sparse gradient; sparsemb runs that lookup outside the graph
    (one graph break, documented) so weight.grad stays a coalesced sparse tensor."""
    eager, compiled_src = model(True), model(True)
    compiled = torch.compile(compiled_src)
    idx = random_indices(50, (4, 6), hot=7)
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
        _ops.dedup_grad, (grad, idx, -1, False), test_utils=("test_schema", "test_faketensor")
    )
