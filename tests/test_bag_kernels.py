"""kernels/bag.py against torch_backend/bag.py, directly: wide rows (several column blocks),
many bags (several programs of several bags), empty bags, padding, int32 and int64 indices."""

import pytest
import torch

from sparsemb._backend import kernel_module
from sparsemb.torch_backend import bag as torch_bag


def bag_case(num_bags, dim, index_dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 6, (num_bags,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    n = int(offsets[-1])
    idx = torch.randint(0, 40, (n,), generator=g)
    idx[::3] = 5  # a padding row, repeated
    weight = torch.randn(40, dim, generator=g)
    return weight, idx.to(index_dtype), offsets, torch.randn(n, generator=g), g


@pytest.mark.parametrize("dim", [1, 300])
@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_kernels_match_the_torch_path(triton_backend, dim, mode, index_dtype):
    kernels = kernel_module("bag")
    num_bags = 70  # more than one program's bags at dim 1
    weight, idx, offsets, psw, g = bag_case(num_bags, dim, index_dtype)
    psw = psw if mode == 0 else None
    dev = triton_backend.device
    on = [t.to(dev) if t is not None else None for t in (weight, idx, offsets, psw)]
    out, argmax, bad = kernels.bag_forward(*on, mode, 5, True)
    ref, ref_argmax = torch_bag.bag_forward(weight, idx, offsets, psw, mode, 5)
    assert int(bad) == 0
    torch.testing.assert_close(out.cpu(), ref, atol=1e-5, rtol=1e-5)
    if mode == 2:
        assert torch.equal(argmax.cpu(), ref_argmax)
    grad = torch.randn(num_bags, dim, generator=g)
    rows = kernels.expand_grad(grad.to(dev), on[1], on[2], on[3], argmax, mode, 5)
    ref_rows = torch_bag.expand_grad(grad, idx, offsets, psw, ref_argmax, mode, 5)
    torch.testing.assert_close(rows.cpu(), ref_rows, atol=1e-6, rtol=1e-5)
    psw_grad = kernels.per_sample_weights_grad(grad.to(dev), on[0], on[1], on[2], 5)
    ref_psw = torch_bag.per_sample_weights_grad(grad, weight, idx, offsets, 5)
    torch.testing.assert_close(psw_grad.cpu(), ref_psw, atol=1e-5, rtol=1e-5)


def test_forward_flags_an_index_outside_the_table(triton_backend):
    kernels = kernel_module("bag")
    weight, idx, offsets, _, _ = bag_case(8, 4, torch.int64)
    idx[-1] = 40
    dev = triton_backend.device
    out, _, bad = kernels.bag_forward(weight.to(dev), idx.to(dev), offsets.to(dev), None, 0, -1,
                                      True)
    assert int(bad) == 1
