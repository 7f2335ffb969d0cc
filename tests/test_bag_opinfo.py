"""PyTorch's own OpInfo samples for ``nn.functional.embedding_bag``, run against sparsemb on
both backends (``torch.testing._internal``, which needs ``expecttest``).

Every sample must give torch's output, weight after the call (max_norm renorms in place),
weight gradient and per_sample_weights gradient. Output gradients are integer-valued; 16-bit
tables are compared with torch run in float32 and rounded once (sparsemb pools and sums in
float32: ``float32_grad_accumulation``). Each side gets its own clones.
"""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("expecttest", reason="torch.testing._internal imports expecttest")
from torch.testing._internal.common_methods_invocations import op_db

import sparsemb
from helpers import TOLERANCES, dense, integer_grad

OPINFO = next(op for op in op_db if op.name == "nn.functional.embedding_bag")
DTYPES = sorted(OPINFO.dtypes, key=str)
HALF = (torch.bfloat16, torch.float16)


def pooled(fn, weight, indices, kwargs, grad_seed, dtype):
    """(output, weight after, weight grad, psw grad) of one side, on its own clones in ``dtype``."""
    weight = weight.detach().clone().to(dtype).requires_grad_()
    kwargs = {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}
    psw = kwargs.get("per_sample_weights")
    if psw is not None:
        kwargs["per_sample_weights"] = psw = psw.to(dtype).requires_grad_()
    out = fn(indices.clone(), weight, **kwargs)
    out.backward(integer_grad(out.shape, dtype, seed=grad_seed, device=out.device))
    return out.detach(), weight.detach(), dense(weight.grad), None if psw is None else psw.grad


@pytest.mark.parametrize("dtype", DTYPES)
def test_opinfo_samples(backend, dtype):
    samples = list(OPINFO.sample_inputs(backend.device, dtype, requires_grad=True))
    assert samples
    oracle_dtype = torch.float32 if dtype in HALF else dtype
    atol, rtol = TOLERANCES[dtype]
    if dtype in HALF:  # pooled sums rounded once from float32 vs torch's own rounding
        atol, rtol = 3e-2, 3e-2
    for i, sample in enumerate(samples):
        (indices,) = sample.args
        kwargs = dict(sample.kwargs)
        msg = f"sample {i}: weight {tuple(sample.input.shape)}, indices {tuple(indices.shape)}, "
        msg += str({k: tuple(v.shape) if hasattr(v, "shape") else v for k, v in kwargs.items()})
        ours = pooled(sparsemb.embedding_bag, sample.input, indices, kwargs, i, dtype)
        theirs = pooled(F.embedding_bag, sample.input, indices, kwargs, i, oracle_dtype)
        for name, a, b in zip(("output", "weight", "grad", "psw grad"), ours, theirs, strict=True):
            if b is None:
                assert a is None, f"{msg}: {name}"
                continue
            torch.testing.assert_close(
                a, b.to(dtype), atol=atol, rtol=rtol, msg=lambda m, n=name, s=msg: f"{s}: {n}\n{m}"
            )
