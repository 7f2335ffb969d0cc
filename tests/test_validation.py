"""Bad input raises a clear, named exception before anything is written."""

import pytest
import torch

import sparsemb
from helpers import random_indices


@pytest.fixture
def table():
    torch.manual_seed(0)
    return sparsemb.Embedding(10, 4, max_norm=0.5, padding_idx=2)


def assert_rejected_without_writes(table, idx, error, match):
    before = table.weight.detach().clone()
    with pytest.raises(error, match=match):
        table(idx)
    assert torch.equal(table.weight.detach(), before)


@pytest.mark.parametrize("bad", [10, 11, 10**12])
def test_index_too_large(backend, table, bad):
    table.to(backend.device)
    idx = torch.tensor([0, 1, 3, bad, 4], device=backend.device)
    assert_rejected_without_writes(table, idx, IndexError, rf"index {bad} .*num_embeddings=10")


def test_negative_index(backend, table):
    table.to(backend.device)
    idx = torch.tensor([[0, 1], [-1, 4]], dtype=torch.int32, device=backend.device)
    assert_rejected_without_writes(table, idx, IndexError, r"index -1 is negative")


def test_out_of_range_without_max_norm(backend):
    table = sparsemb.Embedding(10, 4, device=backend.device)
    with pytest.raises(IndexError, match=r"index 12 .*num_embeddings=10"):
        table(torch.tensor([1, 12], device=backend.device))


def test_torch_writes_before_it_notices_but_we_do_not(table):
    """torch renormalizes valid rows under max_norm, then fails; we validate first."""
    theirs = torch.nn.Embedding(10, 4, max_norm=0.5)
    with torch.no_grad():
        theirs.weight.copy_(table.weight * 10)
        table.weight.mul_(10)
    idx = torch.tensor([1, 3, 99])
    before = theirs.weight.detach().clone()
    with pytest.raises((IndexError, RuntimeError)):
        theirs(idx)
    assert not torch.equal(theirs.weight.detach(), before)  # torch 2.11-2.13 do write
    assert_rejected_without_writes(table, idx, IndexError, "99")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bool, torch.uint8])
def test_non_integer_or_wrong_integer_indices(table, dtype):
    idx = torch.tensor([1, 2]).to(dtype)
    assert_rejected_without_writes(table, idx, TypeError, "int64 or torch.int32")


def test_non_tensor_indices(table):
    with pytest.raises(TypeError, match="torch.Tensor"):
        table([1, 2])


def test_bounds_check_none_skips_the_check():
    table = sparsemb.Embedding(10, 4, bounds_check="none")
    assert table(torch.tensor([1, 2])).shape == (2, 4)
    with pytest.raises(ValueError, match="bounds_check"):
        sparsemb.Embedding(10, 4, bounds_check="maybe")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"padding_idx": 10}, ValueError, "padding_idx=10"),
        ({"padding_idx": -11}, ValueError, "padding_idx=-11"),
        ({"max_norm": 0.0}, ValueError, "max_norm"),
        ({"max_norm": -1.0}, ValueError, "max_norm"),
        ({"norm_type": 0.0}, ValueError, "norm_type"),
        ({"_weight": torch.zeros(9, 4)}, ValueError, r"_weight has shape \(9, 4\)"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        sparsemb.Embedding(10, 4, **kwargs)


@pytest.mark.parametrize("sizes", [(-1, 4), (10, -2)])
def test_negative_sizes(sizes):
    with pytest.raises(ValueError, match="must be >= 0"):
        sparsemb.Embedding(*sizes)


def test_functional_rejects_bad_weight_and_padding():
    idx = torch.tensor([1])
    with pytest.raises(ValueError, match="2-D"):
        sparsemb.embedding(idx, torch.zeros(10))
    with pytest.raises(ValueError, match="2-D"):
        sparsemb.embedding(idx, torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="padding_idx"):
        sparsemb.embedding(idx, torch.zeros(5, 2), padding_idx=5)
    with pytest.raises(ValueError, match="max_norm"):
        sparsemb.embedding(idx, torch.zeros(5, 2), max_norm=0)


def test_from_pretrained_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        sparsemb.Embedding.from_pretrained(torch.zeros(3))
    with pytest.raises(TypeError, match="floating-point"):
        sparsemb.Embedding.from_pretrained(torch.zeros(3, 2, dtype=torch.int64), freeze=False)


def test_rejected_call_leaves_grad_and_weight_untouched(backend):
    table = sparsemb.Embedding(10, 4, sparse=True, max_norm=1.0, device=backend.device)
    table(random_indices(10, (5,), device=backend.device)).sum().backward()
    grad_before = table.weight.grad.clone()
    weight_before = table.weight.detach().clone()
    with pytest.raises(IndexError):
        table(torch.tensor([3, 10], device=backend.device))
    assert torch.equal(table.weight.detach(), weight_before)
    assert torch.equal(table.weight.grad.to_dense(), grad_before.to_dense())
