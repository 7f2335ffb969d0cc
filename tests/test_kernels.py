"""The Triton kernels themselves: dispatch, wide rows, strides, int64 offsets, bounds flag.

On CPU these run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
"""

import math

import pytest
import torch

import sparsemb
from helpers import TOLERANCES, integer_grad, random_indices
from sparsemb._backend import kernel_module
from sparsemb.torch_backend import grad as torch_grad
from sparsemb.torch_backend import renorm as torch_renorm


def test_dispatch_reaches_every_kernel(triton_backend, monkeypatch):
    """Guards the parity suite: with SPARSEMB_BACKEND=triton each op runs a Triton launcher."""
    calls = []
    for module_name, names in (("gather", ("gather",)), ("renorm", ("renorm_rows_",)),
                               ("grad", ("dedup_grad", "dense_grad"))):  # fmt: skip
        module = kernel_module(module_name)
        for name in names:
            original = getattr(module, name)

            def spy(*args, _original=original, _name=name, **kwargs):
                calls.append(_name)
                return _original(*args, **kwargs)

            monkeypatch.setattr(module, name, spy)
    for sparse in (True, False):
        table = sparsemb.Embedding(10, 4, max_norm=1.0, sparse=sparse, device=triton_backend.device)
        table(torch.tensor([1, 2, 2], device=triton_backend.device)).sum().backward()
    assert sorted(set(calls)) == ["dedup_grad", "dense_grad", "gather", "renorm_rows_"]


@pytest.mark.parametrize("dim", [1024, 4096, 5000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wide_rows(triton_backend, dim, dtype):
    weight = torch.randn(6, dim, dtype=dtype, device=triton_backend.device) * 3
    idx = torch.tensor([5, 0, 5, 2], device=triton_backend.device)
    grad = integer_grad((4, dim), dtype, device=triton_backend.device)
    expected_weight = weight.clone()
    torch_renorm.renorm_(expected_weight, idx, 10.0, 2.0)
    unique = torch.unique(idx)
    kernel_module("renorm").renorm_rows_(weight, unique, 10.0, 2.0, torch_renorm.RENORM_EPS)
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(weight, expected_weight, atol=atol, rtol=rtol)
    out, _ = kernel_module("gather").gather(weight, idx, False)
    assert torch.equal(out, weight[idx])
    unique, values = kernel_module("grad").dedup_grad(grad, idx, 6, -1, False)
    ref_unique, ref_values = torch_grad.dedup_grad(grad, idx, 6, -1, False)
    assert torch.equal(unique, ref_unique) and torch.equal(values, ref_values)


def test_strided_weight(triton_backend):
    """Strides are passed to the kernels: a transposed (non-contiguous) table works."""
    storage = torch.randn(7, 30, device=triton_backend.device)
    weight = storage.t()  # (30, 7), column-major
    idx = random_indices(30, (12,), hot=4, device=triton_backend.device)
    out = sparsemb.embedding(idx, weight)
    assert torch.equal(out, weight[idx])
    expected = weight.contiguous()
    torch_renorm.renorm_(expected, idx, 0.5, 2.0)
    sparsemb.embedding(idx, weight, max_norm=0.5)
    assert torch.linalg.vector_norm(weight[idx], dim=1).max() <= 0.5 + 1e-6
    torch.testing.assert_close(weight, expected, atol=1e-6, rtol=1e-6)  # written via strides


@pytest.mark.parametrize("max_norm", [0.1, 0.3, 1.0, 1.1, 3e-5])
def test_renorm_at_max_norm_decides_as_torch_on_the_device(triton_backend, max_norm):
    """Rows of one value have a norm that is that value in every summation order, so rows at
    the float32 neighbours of max_norm test the kernel's comparison alone: it must renorm the
    rows torch's ``embedding_renorm_`` renorms on the same device (CPU: compared in float64;
    CUDA: with max_norm rounded to float32; they differ where max_norm is not a float32)."""
    center = torch.tensor(max_norm, dtype=torch.float32)
    values = [center]
    for direction in (math.inf, -math.inf):
        value = center
        for _ in range(3):
            value = torch.nextafter(value, torch.tensor(direction))
            values.append(value)
    weight = torch.stack(values).view(-1, 1).to(triton_backend.device)
    expected = weight.clone()
    idx = torch.arange(weight.shape[0], device=triton_backend.device)
    torch.embedding_renorm_(expected, idx.clone(), max_norm, 2.0)
    kernel_module("renorm").renorm_rows_(weight, idx, max_norm, 2.0, torch_renorm.RENORM_EPS)
    assert torch.equal(weight != torch.stack(values).view(-1, 1).to(weight.device),
                       expected != torch.stack(values).view(-1, 1).to(weight.device))


@pytest.mark.parametrize("chunked", [False, True])
def test_long_segments_are_split_and_summed_in_order(triton_backend, chunked):
    """A hot row longer than the stage-1 chunk is reduced over several chunks, exactly."""
    chunk = kernel_module("grad").CHUNK
    n = 5 * chunk + 3 if chunked else chunk - 1
    idx = torch.full((n,), 2, device=triton_backend.device)
    idx[::7] = 9
    grad = integer_grad((n, 5), torch.float32, device=triton_backend.device)
    for padding_idx in (-1, 9):
        unique, values = kernel_module("grad").dedup_grad(grad, idx, 10, padding_idx, True)
        ref_unique, ref_values = torch_grad.dedup_grad(grad, idx, 10, padding_idx, True)
        assert torch.equal(unique, ref_unique)
        torch.testing.assert_close(values, ref_values, atol=1e-6, rtol=1e-6)


def test_bounds_flag_is_set_only_for_bad_indices(triton_backend):
    weight = torch.randn(8, 3, device=triton_backend.device)
    _, flag = kernel_module("gather").gather(
        weight, torch.tensor([0, 7, 3], device=triton_backend.device), True
    )
    assert int(flag) == 0
    _, flag = kernel_module("gather").gather(
        weight, torch.tensor([0, 8, 3], device=triton_backend.device), True
    )
    assert int(flag) == 1
    _, flag = kernel_module("gather").gather(
        weight, torch.tensor([-1], dtype=torch.int32, device=triton_backend.device), True
    )
    assert int(flag) == 1
    out, flag = kernel_module("gather").gather(
        weight, torch.tensor([1, 99], device=triton_backend.device), False
    )
    assert flag is None and torch.equal(out[0], weight[1]) and not out[1].any()


def test_offsets_are_int64_past_2_pow_31_elements(triton_backend):
    """A bfloat16 table of just over 2^31 elements (4 GiB): rows near its end are gathered and
    renormalized in place correctly. With int32 offsets, row * 128 would wrap negative here."""
    dim = 128
    num_rows = 2**31 // dim + 64
    assert (num_rows - 1) * dim > 2**31
    weight = torch.empty(num_rows, dim, dtype=torch.bfloat16, device=triton_backend.device)
    rows = torch.tensor(
        [num_rows - 1, num_rows - 64, 5, num_rows - 1], device=triton_backend.device
    )
    weight[rows] = torch.linspace(1, 3, 4 * dim).view(4, dim).to(weight)
    expected = weight[rows].clone()
    assert torch.equal(sparsemb.embedding(rows, weight), expected)
    sparsemb.embedding(rows, weight, max_norm=1.0)
    norms = torch.linalg.vector_norm(weight[rows].float(), dim=1)
    assert ((norms - 1.0).abs() < 0.02).all()
    del weight


def test_unchecked_bad_indices_never_write_outside_the_table(triton_backend):
    """bounds_check="none" makes a bad index undefined in value, never a stray write: the
    renorm and the dense gradient skip rows outside [0, V)."""
    storage = torch.randn(14, 4, device=triton_backend.device) * 10
    weight = storage[:10]  # rows 10..13 lie just past the table
    beyond = storage[10:].clone()
    idx = torch.tensor([1, 12, 3, 12, 11], device=triton_backend.device)
    sparsemb.embedding(idx, weight, max_norm=1.0, bounds_check="none")
    assert torch.equal(storage[10:], beyond)
    assert torch.linalg.vector_norm(weight[[1, 3]], dim=1).max() <= 1.0 + 1e-6
    grad = integer_grad((5, 4), torch.float32, device=triton_backend.device)
    dense = kernel_module("grad").dense_grad(grad, idx, 10, -1, False)
    expected = torch.zeros(10, 4, device=triton_backend.device)
    expected[1], expected[3] = grad[0], grad[2]
    assert torch.equal(dense, expected)
