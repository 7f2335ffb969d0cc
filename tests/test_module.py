"""sparsemb.Embedding behaves as torch.nn.Embedding in every observable way."""

import pytest
import torch
from torch import nn

import sparsemb
from helpers import dense, random_indices, twin_tables


def test_same_init_as_torch_with_same_seed():
    torch.manual_seed(3)
    ours = sparsemb.Embedding(40, 8, padding_idx=-2)
    torch.manual_seed(3)
    theirs = nn.Embedding(40, 8, padding_idx=-2)
    assert torch.equal(ours.weight, theirs.weight)
    assert ours.padding_idx == theirs.padding_idx == 38
    assert torch.count_nonzero(ours.weight[38]) == 0
    assert isinstance(ours, nn.Embedding)


def test_repr_and_attributes_match_torch():
    kwargs = dict(padding_idx=1, max_norm=2.0, norm_type=3.0, scale_grad_by_freq=True, sparse=True)
    ours, theirs = twin_tables(10, 3, **kwargs)
    assert ours.extra_repr() == theirs.extra_repr()
    for name in ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type",
                 "scale_grad_by_freq", "sparse"):  # fmt: skip
        assert getattr(ours, name) == getattr(theirs, name)


def test_reset_parameters_zeroes_padding_row():
    table = sparsemb.Embedding(10, 4, padding_idx=5)
    with torch.no_grad():
        table.weight.fill_(7.0)
    table.reset_parameters()
    assert torch.count_nonzero(table.weight[5]) == 0
    assert table.weight.std() > 0.5


def test_state_dict_round_trips_both_ways():
    ours, theirs = twin_tables(12, 5, seed=1)
    fresh_torch = nn.Embedding(12, 5)
    fresh_torch.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == ["weight"]
    assert torch.equal(fresh_torch.weight, ours.weight)
    fresh_ours = sparsemb.Embedding(12, 5)
    fresh_ours.load_state_dict(theirs.state_dict())
    assert torch.equal(fresh_ours.weight, theirs.weight)


@pytest.mark.parametrize("freeze", [True, False])
def test_from_pretrained(freeze):
    vectors = torch.randn(7, 3)
    ours = sparsemb.Embedding.from_pretrained(vectors, freeze=freeze, padding_idx=0, sparse=True)
    theirs = nn.Embedding.from_pretrained(vectors, freeze=freeze, padding_idx=0, sparse=True)
    assert type(ours) is sparsemb.Embedding
    assert ours.weight.requires_grad is theirs.weight.requires_grad is (not freeze)
    idx = random_indices(7, (2, 4))
    assert torch.equal(ours(idx), theirs(idx))
    if not freeze:
        ours(idx).sum().backward()
        theirs(idx).sum().backward()
        torch.testing.assert_close(dense(ours.weight.grad), dense(theirs.weight.grad))


def test_frozen_table_gets_no_grad():
    table = sparsemb.Embedding(6, 2)
    table.requires_grad_(False)
    out = table(torch.tensor([1, 2]))
    assert not out.requires_grad and table.weight.grad is None


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_module_moves_with_to(dtype):
    ours, theirs = twin_tables(9, 4)
    ours.to(dtype)
    theirs.to(dtype)
    assert ours.weight.dtype == dtype
    idx = random_indices(9, (5,))
    assert torch.equal(ours(idx), theirs(idx))


def test_torch_init_functions_on_weight():
    ours, theirs = twin_tables(20, 6)
    torch.manual_seed(9)
    nn.init.xavier_uniform_(ours.weight)
    torch.manual_seed(9)
    nn.init.xavier_uniform_(theirs.weight)
    assert torch.equal(ours.weight, theirs.weight)


def test_transformer_front_end_trains_like_torch():
    """The README's example: embedding -> nn.Transformer encoder -> Linear, one SGD step."""

    def model(embedding_cls):
        torch.manual_seed(0)
        return nn.Sequential(
            embedding_cls(100, 16, padding_idx=0),
            nn.TransformerEncoder(
                nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 1
            ),
            nn.Linear(16, 100),
        )

    ours, theirs = model(sparsemb.Embedding), model(nn.Embedding)
    tokens = random_indices(100, (4, 10), seed=5)
    for net in (ours, theirs):
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        logits = net(tokens)
        nn.functional.cross_entropy(logits.reshape(-1, 100), tokens.reshape(-1)).backward()
        opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
