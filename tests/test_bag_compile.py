"""EmbeddingBag under torch.compile: the pooled lookup with gradients runs outside the graph (a
graph break), no-grad lookups trace through the ops' fake impls; results equal eager torch."""

import pytest
import torch

import sparsemb


@pytest.mark.parametrize("sparse", [False, True])
def test_compiled_bag_matches_torch(sparse):
    torch.manual_seed(0)
    ours = sparsemb.EmbeddingBag(50, 4, mode="sum", sparse=sparse)
    theirs = torch.nn.EmbeddingBag(50, 4, mode="sum", sparse=sparse)
    theirs.load_state_dict(ours.state_dict())
    idx = torch.randint(0, 50, (20,), generator=torch.Generator().manual_seed(1))
    offsets = torch.tensor([0, 5, 12])
    compiled = torch.compile(lambda i, o: ours(i, o))
    out, ref = compiled(idx.clone(), offsets.clone()), theirs(idx.clone(), offsets.clone())
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    ref.sum().backward()
    assert ours.weight.grad.is_sparse == sparse
    torch.testing.assert_close(ours.weight.grad.to_dense(), theirs.weight.grad.to_dense())
    with torch.no_grad():
        torch.testing.assert_close(compiled(idx.clone(), offsets.clone()), ref.detach())


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_bag_ops_pass_opcheck(mode):
    """The bag ops' schemas and fake impls agree with their real impls (torch.library)."""
    from sparsemb import _ops

    g = torch.Generator().manual_seed(0)
    weight = torch.randn(10, 3, generator=g)
    idx = torch.tensor([1, 2, 2, 9, 0, 4])
    offsets = torch.tensor([0, 2, 2, 6])
    psw = torch.randn(6, generator=g) if mode == 0 else None
    torch.library.opcheck(_ops.bag_forward, (weight, idx, offsets, psw, mode, 4, True))
    _, argmax = _ops.bag_forward(weight, idx, offsets, psw, mode, 4, True)
    grad = torch.randn(3, 3, generator=g)
    args = (grad, idx, offsets, psw, argmax, mode, 4)
    torch.library.opcheck(_ops.bag_expand_grad, args)
    torch.library.opcheck(_ops.bag_psw_grad, (grad, weight, idx, offsets, 4))
