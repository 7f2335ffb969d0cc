"""Host syncs and launches of one warm training step on the Triton path (issue 12, items 3-4).

Counted on CPU under Triton's interpreter with ``dispatch_count.StepCounter``: what makes the
host wait on a GPU (a value read, a data-dependent output size) and what launches a kernel are
the same ops on CPU tensors. The step is forward, backward (with a given output gradient, so no
loss ops are counted) and SparseAdam, at V=2000, D=16, N=512 Zipf(1.2), after one warm step.
"""

import pytest
import torch

import sparsemb
from dispatch_count import StepCounter

V, D, N = 2000, 16, 512


def zipf_indices(seed=0):
    g = torch.Generator().manual_seed(seed)
    probs = 1.0 / torch.arange(1, V + 1, dtype=torch.float64) ** 1.2
    return torch.multinomial(probs, N, replacement=True, generator=g)


def count_step(device, *, fused: bool, bounds_check: str) -> StepCounter:
    torch.manual_seed(0)
    table = sparsemb.Embedding(V, D, sparse=True, bounds_check=bounds_check, device=device)
    opt = sparsemb.optim.SparseAdam(table.parameters(), lr=0.01)
    if fused:
        opt.enable_fused_backward()
    steps = [(zipf_indices(s).to(device), torch.randn(N, D, device=device)) for s in range(2)]

    def step(idx, grad_out):
        table(idx).backward(grad_out)
        if not fused:
            opt.step()
            opt.zero_grad()

    step(*steps[0])  # warm: state allocated, kernels compiled
    counter = StepCounter()
    with counter.counting_triton():
        step(*steps[1])
    print(f"fused={fused} bounds_check={bounds_check}: {counter.report()}")
    return counter


@pytest.mark.parametrize("fused,bounds_check", [(False, "raise"), (True, "none")])
def test_counter_sees_a_step(triton_backend, fused, bounds_check):
    """The counter is live: the step's Triton kernels (gather, reduce, Adam) are all seen."""
    counter = count_step(triton_backend.device, fused=fused, bounds_check=bounds_check)
    names = {name for name in counter.launches if name.startswith("triton:")}
    assert {"triton:_gather_kernel", "triton:_adam_kernel"} <= names


def test_default_step_syncs_and_launches(triton_backend):
    """Default step (bounds check, sparse COO gradient, step()): at most two host syncs (the
    bounds flag and the COO's nnz) and at most 12 launches."""
    counter = count_step(triton_backend.device, fused=False, bounds_check="raise")
    assert sum(counter.syncs.values()) <= 2, counter.report()
    assert sum(counter.launches.values()) <= 12, counter.report()


def test_fused_unchecked_step_is_sync_free(triton_backend):
    """Fused backward with bounds_check="none": no host sync at all."""
    counter = count_step(triton_backend.device, fused=True, bounds_check="none")
    assert sum(counter.syncs.values()) == 0, counter.report()
