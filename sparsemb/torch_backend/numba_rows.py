"""Adam's, Adagrad's and SGD's CPU updates as a few compiled passes over the touched rows,
where Numba is installed (``pip install 'sparsemb[cpu]'``); the torch-op path of ``optim``
otherwise.

Why: the torch-op path runs up to ~18 ops (Adam; SGD: 3) per cache-sized block of rows (~200
a step at U=10,490, D=128), and under ``OMP_WAIT_POLICY=PASSIVE`` each op wakes the OpenMP team;
it is also one random-row gather and scatter per state. Here one pass reads each touched row of
the state once, updates it in place and leaves the new values in a compact (U, D) buffer; one
more pass applies the update to the weight rows. (Measured on the 2-core VM, V=1e6, D=128,
U=10,490: Adam's update 4.4 ms instead of 11.9-18.8 ms, SGD's 3.0 instead of 4.7 ms.)

Bits: the passes do the same IEEE operations as the torch ops, in the same order and dtype
(``_numba_kernels``). What torch computes with its own kernels stays torch's, run once over the
compact buffers: the square roots (MKL's, not always the correctly rounded value) and the
``add(alpha=)`` steps (a fused multiply-add). So the results equal the torch-op path's, and
torch.optim's, bit for bit (``tests/test_numba_rows.py``).

Used for float32 and float64 tables with round-to-nearest and updates of ``MIN_ELEMENTS`` values
or more; bfloat16/float16 tables, stochastic rounding and small updates stay on the torch-op
path. ``SPARSEMB_NUMBA=0`` turns it off.

The max_norm lookup has one pass here too (``gather_over``): the gather, taking each row's
2-norm on the way with torch's own bits, so deciding which rows to renorm costs next to nothing
over the plain lookup (measured, V=1e6, D=128, N=65,536: 1.05-1.15x the plain lookup in
process, 1.6-1.7x with torch's norms of the gathered blocks).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
import warnings

import numpy as np
import torch
from torch import Tensor

ENV = "SPARSEMB_NUMBA"
DTYPES = (torch.float32, torch.float64)
MIN_ELEMENTS = 32768  # smaller updates stay torch ops: single-threaded there (under torch's grain
# size, no OpenMP wake), and the passes' fixed cost (argument dispatch, waking Numba's threads)
# made them ~100 us slower below this (measured: SGD, Adagrad, Adam at U*D from 256 to 2M)


@functools.lru_cache(maxsize=1)
def _kernels():
    """The compiled passes' module, or None where Numba is not installed, compiles nothing
    (``NUMBA_DISABLE_JIT=1``: the passes would run as Python loops), or cannot load here (then
    with a warning: e.g. a Numba too old for this NumPy; the torch-op path runs)."""
    if importlib.util.find_spec("numba") is None:
        return None
    try:
        import numba

        if numba.config.DISABLE_JIT:
            return None
        from sparsemb.torch_backend import _numba_kernels
    except Exception as exc:  # noqa: BLE001 - any failure to load means: use the torch-op path
        warnings.warn(f"sparsemb: Numba is installed but did not load ({exc!r}); the CPU "
                      "optimizers use torch ops", RuntimeWarning, stacklevel=3)
        return None
    return _numba_kernels


_forked_after_use = False  # this process was forked from one that had run the passes


def _after_fork_in_child() -> None:
    """A child forked after the parent ran the passes must not run them: Numba's OpenMP thread
    pool does not survive a fork (GNU OpenMP aborts the child: "fork() called from a process
    already using GNU OpenMP"), e.g. Hogwild training with fork-started workers."""
    global _forked_after_use
    _forked_after_use = _forked_after_use or _kernels.cache_info().currsize > 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def available() -> bool:
    """Numba is importable, ``SPARSEMB_NUMBA`` is not "0", and this is not a process forked
    after the passes ran (``_after_fork_in_child``)."""
    return (
        os.environ.get(ENV, "1") != "0" and not _forked_after_use and _kernels() is not None
    )


def preload(dtypes: tuple[torch.dtype, ...] = (torch.float32,)) -> bool:
    """Import Numba and load the passes for contiguous tables of ``dtypes`` now (from Numba's
    cache, else compiled: ~2 s once) instead of at the first step; their runtime stays resident
    (~130 MB a process). False where Numba is not available."""
    if not available():
        return False
    for dtype in dtypes:
        tables = [torch.zeros(4, 2, dtype=dtype) for _ in range(3)]
        rows, values = torch.tensor([0, 2]), torch.ones(2, 2, dtype=dtype)
        adam_update_(*tables[:1], rows, values, *tables[1:], one_minus_beta1=0.1,
                     one_minus_beta2=0.1, eps=1e-8, neg_step_size=-0.1, decay=0.5)
        adagrad_update_(tables[0], rows, values, tables[1], neg_clr=-0.1, eps=1e-8,
                        weight_decay=0.0)
        sgd_update_(tables[0], rows, values, neg_lr=-0.1, weight_decay=0.0)
        gather_over(torch.ones(4, 16, dtype=dtype), rows, torch.empty(2, 16, dtype=dtype), 1.0)
    return True


def usable(weight: Tensor, states: tuple[Tensor, ...], values: Tensor, sr_seed) -> bool:
    """Whether this update can take the compiled passes: CPU, a float32/float64 table whose
    state and gradient share its dtype, round-to-nearest, at least ``MIN_ELEMENTS`` gradient
    values, Numba available."""
    return (
        sr_seed is None
        and values.numel() >= MIN_ELEMENTS
        and weight.device.type == "cpu"
        and weight.dtype in DTYPES
        and values.dtype == weight.dtype
        and all(s.dtype == weight.dtype and s.device.type == "cpu" for s in states)
        and available()
    )


def _arrays(*tensors: Tensor) -> list[np.ndarray]:
    """NumPy views sharing the tensors' memory (any strides)."""
    return [t.detach().numpy() for t in tensors]


def _mark_written(*tensors: Tensor) -> None:
    """Bump the autograd version of what the passes wrote through NumPy, as an in-place torch
    op would: a graph that saved the weight before the step then refuses to backward."""
    for t in tensors:
        torch.autograd.graph.increment_version(t)


_one_at_a_time = threading.Lock()


def _parallel_section(update):
    """Run ``update`` with Numba's threads following torch's (``torch.set_num_threads``), and
    one caller at a time where Numba runs on its fallback "workqueue" threading layer (no
    OpenMP found), which aborts the process on concurrent use; its OpenMP and TBB layers take
    concurrent callers."""

    @functools.wraps(update)
    def run(*args, **kwargs):
        import numba

        numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
        try:
            layer = numba.threading_layer()
        except ValueError:  # nothing has run in parallel yet: the layer is not chosen
            layer = None
        if layer in (None, "workqueue"):
            with _one_at_a_time:
                return update(*args, **kwargs)
        return update(*args, **kwargs)

    return run


@_parallel_section
def adam_update_(
    weight: Tensor, rows: Tensor, values: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, *,
    one_minus_beta1: float, one_minus_beta2: float, eps: float, neg_step_size: float,
    decay: float,
) -> None:
    """``optim.adam_update_`` (round to nearest) in two passes and two torch ops."""
    k = _kernels()
    scalar = np.dtype(str(weight.dtype).removeprefix("torch.")).type
    u, d = values.shape
    new_avg = torch.empty(u, d, dtype=weight.dtype)
    new_avg_sq = torch.empty(u, d, dtype=weight.dtype)
    w, m, v, r, g, m_out, v_out = _arrays(
        weight, exp_avg, exp_avg_sq, rows, values, new_avg, new_avg_sq
    )
    k.adam_moments(m, v, r, g, scalar(one_minus_beta1), scalar(one_minus_beta2), m_out, v_out)
    denom = new_avg_sq.sqrt_().add_(eps)  # torch's sqrt, as the torch-op path
    k.add_scaled_ratio(
        w, r, m_out, denom.numpy(), scalar(neg_step_size), scalar(decay), decay != 1
    )
    _mark_written(weight, exp_avg, exp_avg_sq)


@_parallel_section
def sgd_update_(
    weight: Tensor, rows: Tensor, values: Tensor, *, neg_lr: float, weight_decay: float
) -> None:
    """``optim.sgd_update_`` (round to nearest): a gather, torch's ``add(alpha=)`` on the compact
    rows (one op, not one a block), a scatter."""
    gathered = _gather(weight, rows)
    g = values if weight_decay == 0 else values.add(gathered, alpha=weight_decay)
    gathered.add_(g, alpha=neg_lr)
    _scatter(weight, rows, gathered)
    _mark_written(weight)


def _gather(table: Tensor, rows: Tensor) -> Tensor:
    """``table[rows]`` as a new compact tensor (a pass over the rows)."""
    out = torch.empty(rows.shape[0], table.shape[1], dtype=table.dtype)
    _kernels().gather_rows(*_arrays(table, rows, out))
    return out


def _scatter(table: Tensor, rows: Tensor, values: Tensor) -> None:
    """``table[rows] = values`` (rows unique; a pass over the rows)."""
    _kernels().scatter_rows(*_arrays(table, rows, values))


@_parallel_section
def adagrad_update_(
    weight: Tensor, rows: Tensor, values: Tensor, state_sum: Tensor, *, neg_clr: float,
    eps: float, weight_decay: float,
) -> None:
    """``optim.adagrad_update_`` (round to nearest): a gather, one pass for the sums, four torch
    ops on the compact rows, a scatter."""
    k = _kernels()
    gathered = _gather(weight, rows)
    g = values if weight_decay == 0 else values.add(gathered, alpha=weight_decay)
    new_sum = torch.empty_like(gathered)
    k.add_squares(*_arrays(state_sum, rows, g, new_sum))
    std = new_sum.sqrt_().add_(eps)
    update = torch.div(g, std, out=std)
    gathered.add_(update, alpha=neg_clr)
    _scatter(weight, rows, gathered)
    _mark_written(weight, state_sum)


PASSES = tuple(  # (register bytes, tail elements added without a fused multiply-add), in order
    (width, plain_tail) for width in (32, 64) for plain_tail in (1 << 30, 0, 4)
)


def _probe_rows(dtype: torch.dtype, dim: int) -> Tensor:
    """Rows that tell the passes apart: 512 of random values at mixed scales (another order of
    the lanes' sums gives other bits on ~30% of them), and 512 whose last 15 values dwarf the
    rest, so that a tail added with or without a fused multiply-add rounds differently on many
    of them (on mixed rows alone it shows on ~0.2%: too few to decide on)."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(1024, dim, dtype=dtype, generator=generator)
    rows[:512] *= torch.rand(512, 1, dtype=dtype, generator=generator).mul_(8).exp2_()
    rows[512:, : max(dim - 15, 0)] *= 2.0**-12
    return rows


@functools.cache
def _norms_pass(dtype: torch.dtype, dim: int) -> tuple[int, int] | None:
    """Which gather pass (register width, how it adds the row's tail) gives torch's own
    ``vector_norm`` bits for rows of ``dim`` ``dtype`` values, or None. Each is checked once,
    256-bit first, against ``torch.linalg.vector_norm`` on ``_probe_rows``, and the first that
    matches is taken: the width torch's norm kernel really uses (256-bit on AVX2 and AVX512
    hosts alike, torch 2.11 and 2.13), and how its build adds a row's tail (on this AVX2 host,
    torch 2.13: fused for tails of 1-3, 4 elements squared in a register first for 4-7). Where
    torch sums otherwise the pass declines rather than diverges."""
    probe = _probe_rows(dtype, dim)
    expected = torch.linalg.vector_norm(probe, dim=1)
    for width, plain_tail in PASSES:
        lanes = width // dtype.itemsize
        if dim < lanes or (plain_tail != PASSES[0][1] and dim % lanes == 0):
            continue  # no whole vector (torch takes another path); no tail: one pass will do
        if dim % lanes == 0:
            plain_tail = _kernels().NO_TAIL  # rows of whole vectors: the pass without a tail
        out, norms = torch.empty_like(probe), torch.empty_like(expected)
        over = torch.empty(probe.shape[0], dtype=torch.bool)
        _kernels().GATHER_OVER[width, plain_tail](
            *_arrays(probe, torch.arange(probe.shape[0]), out), 1.0, *_arrays(norms, over)
        )
        if torch.equal(norms, expected) and torch.equal(out, probe):
            return width, plain_tail
    return None


@_parallel_section
def gather_over(weight: Tensor, indices: Tensor, out: Tensor, max_norm: float) -> Tensor | None:
    """``out[:] = weight[indices]`` and which gathered rows have a 2-norm over ``max_norm``,
    decided as torch's CPU renorm decides it (its own norm's bits, compared in float64), in one
    pass over the rows: the norms cost next to nothing (each row is in registers). Returns the
    (N,) mask, or an empty one where no row is over. None, with ``out`` untouched or partly
    written, where it does not apply: Numba unavailable, not a contiguous float32/float64 CPU
    table, an index outside the table (the caller's gather then raises), or this torch's norms
    not reproduced for this row length (``_norms_pass``)."""
    if not (
        available() and weight.device.type == "cpu" and weight.dtype in DTYPES
        and weight.is_contiguous() and out.is_contiguous() and weight.shape[1] > 0
    ):
        return None
    chosen = _norms_pass(weight.dtype, weight.shape[1])
    if chosen is None:
        return None
    norms = torch.empty(indices.shape[0], dtype=weight.dtype)
    over = torch.empty(indices.shape[0], dtype=torch.bool)
    count, outside = _kernels().GATHER_OVER[chosen](
        *_arrays(weight, indices, out), float(max_norm), *_arrays(norms, over)
    )
    if outside:
        return None
    return over if count else over[:0]
