"""Every sparse optimizer and the fused backward with EmbeddingBag gradients, on both backends.

The oracle is the same rule fed by ``torch.nn.EmbeddingBag(sparse=True)``'s own (uncoalesced)
gradient; max mode, whose sparse gradient torch refuses, is checked against the two-step path.
"""

import pytest
import torch

import sparsemb
from sparsemb.optim import SPARSE_RULES

STEPS = 4


def batch(step, device):
    g = torch.Generator().manual_seed(step)
    idx = torch.randint(0, 50, (40,), generator=g)
    idx[:10] = step % 5  # hot rows
    offsets = torch.tensor([0, 3, 3, 17, 30])
    psw = torch.rand(40, generator=g)
    return idx.to(device), offsets.to(device), psw.to(device)


def train(table, rule, mode, device, fused=False):
    opt = SPARSE_RULES[rule]([table.weight], lr=0.05)
    if fused:
        opt.enable_fused_backward()
    for step in range(STEPS):
        idx, offsets, psw = batch(step, device)
        psw = psw if mode == "sum" else None
        opt.zero_grad()
        out = table(idx.clone(), offsets.clone(), per_sample_weights=psw)
        (out * torch.arange(out.numel(), device=device).view_as(out).sin()).sum().backward()
        if fused:
            assert table.weight.grad is None  # the update ran inside backward
        else:
            opt.step()
    return table.weight.detach()


def twin(cls, mode, device):
    torch.manual_seed(0)
    return cls(50, 6, mode=mode, sparse=True, padding_idx=1).to(device)


@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("rule", sorted(SPARSE_RULES))
def test_rules_train_like_torch_sparse_gradient(backend, rule, mode):
    ours = train(twin(sparsemb.EmbeddingBag, mode, backend.device), rule, mode, backend.device)
    theirs = train(twin(torch.nn.EmbeddingBag, mode, backend.device), rule, mode, backend.device)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("rule", ["sgd", "adam", "rowwise_adagrad"])
def test_fused_backward_equals_two_step(backend, rule, mode):
    two_step = train(twin(sparsemb.EmbeddingBag, mode, backend.device), rule, mode, backend.device)
    fused = train(
        twin(sparsemb.EmbeddingBag, mode, backend.device), rule, mode, backend.device, fused=True
    )
    torch.testing.assert_close(fused, two_step, atol=0, rtol=0)
    assert not torch.equal(fused, twin(sparsemb.EmbeddingBag, mode, backend.device).weight)
