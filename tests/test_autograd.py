"""Autograd beyond first order, as torch: gradcheck, gradgradcheck, forward-mode AD."""

import pytest
import torch
from torch.autograd import forward_ad, gradcheck, gradgradcheck

import sparsemb
from helpers import random_indices

IDX = random_indices(8, (3, 4), hot=2)


def test_gradcheck_and_gradgradcheck():
    weight = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda w: sparsemb.embedding(IDX, w), (weight,))
    assert gradgradcheck(lambda w: sparsemb.embedding(IDX, w), (weight,))


@pytest.mark.parametrize("padding_idx", [None, 2])
def test_double_backward_matches_torch(padding_idx):
    """padding_idx makes the gradient differ from the true Jacobian (so gradcheck fails for
    torch too); the double backward must still equal torch's."""
    scale_grad_by_freq = False
    weight = torch.randn(8, 3, dtype=torch.float64)
    grad_out = torch.randn(3, 4, 3, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(8, 3, dtype=torch.float64)
    results = []
    for fn in (sparsemb.embedding, torch.nn.functional.embedding):
        w = weight.clone().requires_grad_()
        out = fn(IDX, w, padding_idx=padding_idx, scale_grad_by_freq=scale_grad_by_freq)
        (grad_w,) = torch.autograd.grad(out, w, grad_out, create_graph=True)
        (grad_grad,) = torch.autograd.grad((grad_w * probe).sum(), grad_out)
        results.append((grad_w.detach(), grad_grad))
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize("max_norm", [None, 1.0])
def test_forward_ad_matches_torch(max_norm):
    weight = torch.randn(8, 3, dtype=torch.float64) * 2
    tangent = torch.randn(8, 3, dtype=torch.float64)
    results = []
    for fn in (sparsemb.embedding, torch.nn.functional.embedding):
        w = weight.clone()
        with forward_ad.dual_level():
            out = fn(IDX, forward_ad.make_dual(w, tangent), max_norm=max_norm)
            primal, jvp = forward_ad.unpack_dual(out)
        results.append((primal, jvp, w))
    (p1, j1, w1), (p2, j2, w2) = results
    torch.testing.assert_close(p1, p2)
    torch.testing.assert_close(j1, j2)
    torch.testing.assert_close(w1, w2)


def test_torch_func_jvp():
    weight = torch.randn(8, 3)
    tangent = torch.randn(8, 3)
    _, ours = torch.func.jvp(lambda w: sparsemb.embedding(IDX, w), (weight,), (tangent,))
    _, theirs = torch.func.jvp(
        lambda w: torch.nn.functional.embedding(IDX, w), (weight,), (tangent,)
    )
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.parametrize("padding_idx", [None, 2])
def test_double_backward_with_scale_grad_by_freq_is_the_exact_adjoint(padding_idx):
    """The weight gradient is a linear map of the output gradient; gradcheck of that map proves
    our double backward. (torch's double backward ignores scale_grad_by_freq, so it differs.)"""
    weight = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)

    def weight_grad(grad_out):
        out = sparsemb.embedding(IDX, weight, padding_idx=padding_idx, scale_grad_by_freq=True)
        return torch.autograd.grad(out, weight, grad_out, create_graph=True)[0]

    grad_out = torch.randn(3, 4, 3, dtype=torch.float64, requires_grad=True)
    assert gradcheck(weight_grad, (grad_out,))
