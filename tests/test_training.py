"""20 steps of torch's own optimizers: sparsemb.Embedding trains exactly like nn.Embedding."""

import pytest
import torch
from torch import nn

import sparsemb
from helpers import random_indices

OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.5),
    "sgd_momentum": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    "adagrad": lambda params: torch.optim.Adagrad(params, lr=0.3),
    "sparse_adam": lambda params: torch.optim.SparseAdam(params, lr=0.05),
}


def bag_model(embedding_cls, sparse):
    torch.manual_seed(0)
    return nn.ModuleDict(
        {"table": embedding_cls(60, 8, sparse=sparse, padding_idx=0), "head": nn.Linear(8, 3)}
    )


def forward(model, idx):
    return model["head"](model["table"](idx).mean(dim=1))


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_twenty_steps_match_torch(backend, name, sparse):
    if name == "sparse_adam" and not sparse:
        pytest.skip("SparseAdam takes sparse gradients only")
    if name == "sgd_momentum" and sparse:
        pytest.skip("torch's SGD momentum does not take sparse gradients")
    ours = bag_model(sparsemb.Embedding, sparse).to(backend.device)
    theirs = bag_model(nn.Embedding, sparse).to(backend.device)
    make = OPTIMIZERS[name]
    if name == "sparse_adam":
        opts = [
            (make(list(m["table"].parameters())), torch.optim.Adam(m["head"].parameters(), 0.05))
            for m in (ours, theirs)
        ]
    else:
        opts = [(make(m.parameters()),) for m in (ours, theirs)]
    for step in range(20):
        idx = random_indices(60, (16, 5), seed=step, hot=step % 7, device=backend.device)
        target = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(step))
        target = target.to(backend.device)
        for model, model_opts in zip((ours, theirs), opts, strict=True):
            for opt in model_opts:
                opt.zero_grad()
            nn.functional.cross_entropy(forward(model, idx), target).backward()
            for opt in model_opts:
                opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
