"""PyTorch's own test inputs for embedding, run against sparsemb on both backends.

The OpInfo "nn.functional.embedding" (samples and error inputs) and the ModuleInfo of
``torch.nn.Embedding`` (module samples and error inputs) ship in the torch wheel
(``torch.testing._internal``, which needs ``expecttest``). Every sample must give torch's output,
weight after the call and gradient (output gradients are integer-valued, so sums are exact in
float32 in any order); every error input must raise, with the exception type
``deliberate_differences.ERROR_TYPES`` maps torch's to. Each side gets its own clones.
"""

import pytest
import torch

pytest.importorskip("expecttest", reason="torch.testing._internal imports expecttest")
from deliberate_differences import (
    grad_accumulation_dtype,
    sparsemb_error_for,
    torch_can_take,
    torch_weight_grad,
)
from torch.testing._internal.common_methods_invocations import op_db
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db

import sparsemb
from helpers import TOLERANCES, dense, integer_grad

OPINFO = next(op for op in op_db if op.name == "nn.functional.embedding")
MODULEINFO = next(info for info in module_db if info.module_cls is torch.nn.Embedding)
DTYPES = sorted(OPINFO.dtypes, key=str)


def explain(context):
    """An assert_close message that puts ``context`` above torch's own report."""
    return lambda report: f"{context}\n{report}"


def lookup(fn, weight, indices, kwargs, sparse):
    """(output, weight after, weight grad) of one side, on its own clones."""
    weight = weight.detach().clone().requires_grad_()
    out = fn(indices.clone(), weight, **{**kwargs, "sparse": sparse})
    out.backward(integer_grad(out.shape, out.dtype, device=out.device))
    return out.detach(), weight.detach(), weight.grad


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_opinfo_samples(backend, dtype, requires_grad):
    samples = list(OPINFO.sample_inputs(backend.device, dtype, requires_grad=requires_grad))
    assert samples
    for i, sample in enumerate(samples):
        (indices,) = sample.args
        kwargs = dict(sample.kwargs)
        sparse = kwargs.pop("sparse", False)
        msg = f"sample {i}: indices {tuple(indices.shape)}, {sample.kwargs}"
        ours = lookup(sparsemb.embedding, sample.input, indices, kwargs, sparse)
        torch_sparse = torch_can_take(sparse, kwargs.get("scale_grad_by_freq", False), 1)
        theirs = lookup(torch.nn.functional.embedding, sample.input, indices, kwargs, torch_sparse)

        atol, rtol = (0, 0) if kwargs.get("max_norm") is None else TOLERANCES[dtype]
        for name, a, b in zip(("output", "weight"), ours[:2], theirs[:2], strict=True):
            torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=explain(f"{msg}: {name}"))
        assert ours[2].is_sparse == sparse, msg
        expected = dense(theirs[2])
        if grad_accumulation_dtype(dtype) != dtype:  # float32_grad_accumulation
            expected = torch_weight_grad(
                indices.clone(),
                integer_grad(ours[0].shape, dtype, device=backend.device),
                sample.input.shape[0],
                kwargs.get("padding_idx"),
                kwargs.get("scale_grad_by_freq", False),
            )
        atol, rtol = TOLERANCES[dtype]
        torch.testing.assert_close(
            dense(ours[2]), expected, atol=atol, rtol=rtol, msg=explain(f"{msg}: gradient")
        )


def test_opinfo_error_inputs(backend):
    errors = list(OPINFO.error_inputs(backend.device))
    assert errors
    for error in errors:
        sample = error.sample_input
        with pytest.raises(error.error_type, match=error.error_regex):  # the oracle still fails
            OPINFO.op(sample.input.clone(), sample.args[0].clone(), **sample.kwargs)
        with pytest.raises(sparsemb_error_for(error.error_regex)):
            sparsemb.embedding(sample.args[0].clone(), sample.input.clone(), **sample.kwargs)


def module_inputs(device, dtype):
    return MODULEINFO.module_inputs_func(
        MODULEINFO, device=device, dtype=dtype, requires_grad=True, training=True
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_moduleinfo_samples(backend, dtype):
    for case in module_inputs(backend.device, dtype):
        build, call = case.constructor_input, case.forward_input
        torch.manual_seed(0)
        theirs = torch.nn.Embedding(*build.args, **build.kwargs, device=backend.device, dtype=dtype)
        ours = sparsemb.Embedding(*build.args, **build.kwargs, device=backend.device, dtype=dtype)
        ours.load_state_dict(theirs.state_dict())  # copies the values into ours' own weight
        outs = []
        for table in (ours, theirs):
            out = table(*[a.clone() for a in call.args], **call.kwargs)
            out.backward(integer_grad(out.shape, dtype, device=backend.device))
            outs.append(out.detach())
        msg = f"ModuleInfo sample {case.desc!r}"
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0, msg=explain(msg))
        expected = theirs.weight.grad
        if grad_accumulation_dtype(dtype) != dtype:  # float32_grad_accumulation
            grad_out = integer_grad(outs[1].shape, dtype, device=backend.device)
            expected = torch_weight_grad(call.args[0].clone(), grad_out, ours.num_embeddings)
        atol, rtol = TOLERANCES[dtype]
        torch.testing.assert_close(
            ours.weight.grad, expected, atol=atol, rtol=rtol, msg=explain(msg)
        )


def test_moduleinfo_error_inputs(backend):
    if MODULEINFO.module_error_inputs_func is None:  # torch 2.11's Embedding entry has none
        pytest.skip(f"torch {torch.__version__}'s ModuleInfo for Embedding has no error inputs")
    errors = MODULEINFO.module_error_inputs_func(
        MODULEINFO, device=backend.device, dtype=torch.float32, requires_grad=True, training=True
    )
    assert errors
    for error in errors:
        case = error.module_error_input
        build, call = case.constructor_input, case.forward_input
        ours_error = sparsemb_error_for(error.error_regex)
        for cls, expected, match in (
            (torch.nn.Embedding, error.error_type, error.error_regex),
            (sparsemb.Embedding, ours_error, None),
        ):
            with pytest.raises(expected, match=match):
                if error.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
                    cls(*build.args, **build.kwargs, device=backend.device)
                else:
                    table = cls(*build.args, **build.kwargs, device=backend.device)
                    table(*[a.clone() for a in call.args], **call.kwargs)
