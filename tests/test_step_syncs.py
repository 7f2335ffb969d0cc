"""Host syncs and launches of one warm training step on the Triton path (issue 12, items 3-4).

Counted on CPU under Triton's interpreter with ``dispatch_count.StepCounter``: what makes the
host wait on a GPU (a value read, a data-dependent output size) and what launches a kernel are
the same ops on CPU tensors. The step is forward, backward (with a given output gradient, so no
loss ops are counted) and SparseAdam, at V=2000, D=16, N=512 Zipf(1.2), after one warm step.
"""

import pytest
import torch
from dispatch_count import StepCounter

import sparsemb

V, D, N = 2000, 16, 512


def zipf_indices(seed=0):
    g = torch.Generator().manual_seed(seed)
    probs = 1.0 / torch.arange(1, V + 1, dtype=torch.float64) ** 1.2
    return torch.multinomial(probs, N, replacement=True, generator=g)


def count_step(device, *, fused: bool, bounds_check: str) -> tuple[StepCounter, StepCounter]:
    """Counters of (forward + backward, optimizer step) of the second of two steps."""
    torch.manual_seed(0)
    table = sparsemb.Embedding(V, D, sparse=True, bounds_check=bounds_check, device=device)
    opt = sparsemb.optim.SparseAdam(table.parameters(), lr=0.01)
    if fused:
        opt.enable_fused_backward()
    steps = [(zipf_indices(s).to(device), torch.randn(N, D, device=device)) for s in range(2)]
    lookup, update = StepCounter(), StepCounter()
    idx, grad_out = steps[0]  # the first step warms up (state, compiles)
    table(idx).backward(grad_out)
    if not fused:
        opt.step()
        opt.zero_grad()
    idx, grad_out = steps[1]
    if fused:  # the update runs inside backward
        with lookup.counting_triton():
            table(idx).backward(grad_out)
        return lookup, update
    # A dispatch mode holds a reference to every tensor it sees, so AccumulateGrad would copy
    # the gradient it stores (a clone, and a gradient step() no longer recognizes as
    # sparsemb's). Counted: the lookup's forward and backward up to the gradient, then step()
    # on the gradient a plain backward stored.
    with lookup.counting_triton():
        torch.autograd.grad(table(idx), table.weight, grad_out)
    table(idx).backward(grad_out)
    with update.counting_triton():
        opt.step()
        opt.zero_grad()
    print(f"bounds_check={bounds_check}: forward+backward: {lookup.report()}; "
          f"step(): {update.report()}")
    return lookup, update


def total(counters, what):
    return sum(sum(getattr(c, what).values()) for c in counters)


@pytest.mark.parametrize("fused,bounds_check", [(False, "raise"), (True, "none")])
def test_counter_sees_a_step(triton_backend, fused, bounds_check):
    """The counter is live: the step's Triton kernels (gather, reduce, Adam) are all seen."""
    counters = count_step(triton_backend.device, fused=fused, bounds_check=bounds_check)
    names = {name for c in counters for name in c.launches if name.startswith("triton:")}
    assert {"triton:_gather_kernel", "triton:_window_kernel", "triton:_adam_kernel"} <= names


def test_default_step_syncs_and_launches(triton_backend):
    """Default step (bounds check, sparse COO gradient, step()): forward and backward read the
    device twice (the bounds flag, the COO's nnz); step() reads nothing (the gradient is the one
    sparsemb produced, so its rows need no range check); at most 9 launches in all."""
    lookup, update = count_step(triton_backend.device, fused=False, bounds_check="raise")
    assert total([lookup], "syncs") <= 2, lookup.report()
    assert total([update], "syncs") == 0, update.report()
    assert total([lookup, update], "launches") <= 9, lookup.report() + update.report()


def test_fused_unchecked_step_is_sync_free(triton_backend, monkeypatch):
    """Fused backward with bounds_check="none": no host sync at all, at most 10 launches.

    On CUDA tensors the fused step takes the padded gradient and the optimizer skips its
    row-range check (both would read the device). On CPU tensors both are on (a read is free
    there), so the test takes the CUDA branches: the padded gradient, and no CPU-only check."""
    if triton_backend.device.type == "cpu":
        monkeypatch.setattr(sparsemb._ops, "pads_fused_rows", lambda grad: True)
        monkeypatch.setattr(sparsemb.optim.base, "check_grad_rows", lambda *args: None)
    counters = count_step(triton_backend.device, fused=True, bounds_check="none")
    assert total(counters, "syncs") == 0, counters[0].report()
    assert total(counters, "launches") <= 10, counters[0].report()
