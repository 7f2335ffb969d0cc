"""The compiled CPU passes of Adam and Adagrad (``sparsemb.torch_backend.numba_rows``) against
the torch-op path they replace: the same bits, over several steps, on float32 and float64
tables, contiguous and strided tables and state, with and without decay; and the cases that
must stay on the torch-op path. Skipped where Numba is not installed."""

import multiprocessing
import os
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F

import sparsemb.optim
from sparsemb.torch_backend import numba_rows
from sparsemb.torch_backend import optim as rules

pytest.importorskip("numba")

V, D, U = 300, 24, 70


@pytest.fixture(autouse=True)
def small_updates_take_the_passes(monkeypatch):
    """These small tables take the passes too (in use they start at ``MIN_ELEMENTS`` values)."""
    monkeypatch.setattr(numba_rows, "MIN_ELEMENTS", 0)


def table(dtype, layout, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(V, D, generator=g, dtype=torch.float64).to(dtype)
    if layout == "transposed":  # the same values, rows not contiguous
        return t.t().contiguous().t()
    if layout == "row_strided":  # every other column of a wider buffer
        wide = torch.zeros(V, 2 * D, dtype=dtype)
        wide[:, ::2] = t
        return wide[:, ::2]
    return t


def steps(dtype, seed=0):
    """(rows, values) of three steps: unique rows, values with exact zeros and large entries."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(3):
        rows = torch.randperm(V, generator=g)[:U].sort().values
        values = torch.randn(U, D, generator=g, dtype=torch.float64).to(dtype)
        values[0, :3] = 0
        values[1] *= 1e3
        out.append((rows, values))
    return out


def run(rule, tensors, monkeypatch, numba_on, dtype, **kwargs):
    monkeypatch.setenv(numba_rows.ENV, "1" if numba_on else "0")
    tensors = [t.clone() if t.is_contiguous() else table_like(t) for t in tensors]
    batches = steps(dtype)
    assert numba_rows.usable(tensors[0], tuple(tensors[1:]), batches[0][1], None) == numba_on
    for rows, values in batches:
        rule(tensors[0], rows, values, *tensors[1:], sr_seed=None, **kwargs)
    return tensors


def table_like(t):
    """A copy with the same strides (clone of a non-contiguous view would make it contiguous
    only for some layouts; empty_strided keeps them)."""
    copy = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype)
    copy.copy_(t)
    return copy


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "row_strided"])
@pytest.mark.parametrize("decay", [1.0, 0.99])
def test_adam_passes_equal_the_torch_op_path(monkeypatch, dtype, layout, decay):
    tensors = [table(dtype, layout, 1), table(dtype, layout, 2).abs(),
               table(dtype, layout, 3).abs()]
    kwargs = dict(one_minus_beta1=0.1, one_minus_beta2=0.001, eps=1e-8, neg_step_size=-3e-3,
                  decay=decay)
    ours = run(rules.adam_update_, tensors, monkeypatch, True, dtype, **kwargs)
    ref = run(rules.adam_update_, tensors, monkeypatch, False, dtype, **kwargs)
    for a, b, name in zip(ours, ref, ("weight", "exp_avg", "exp_avg_sq"), strict=True):
        assert torch.equal(a, b), name
        assert a.stride() == b.stride()
    assert not torch.equal(ours[0], tensors[0])  # it did update


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adagrad_passes_equal_the_torch_op_path(monkeypatch, dtype, layout, weight_decay):
    tensors = [table(dtype, layout, 1), table(dtype, layout, 2).abs()]
    kwargs = dict(neg_clr=-0.05, eps=1e-10, weight_decay=weight_decay)
    ours = run(rules.adagrad_update_, tensors, monkeypatch, True, dtype, **kwargs)
    ref = run(rules.adagrad_update_, tensors, monkeypatch, False, dtype, **kwargs)
    for a, b, name in zip(ours, ref, ("weight", "state_sum"), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(ours[0], tensors[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "row_strided"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_sgd_passes_equal_the_torch_op_path(monkeypatch, dtype, layout, weight_decay):
    tensors = [table(dtype, layout, 1)]
    kwargs = dict(neg_lr=-0.05, weight_decay=weight_decay)
    ours = run(rules.sgd_update_, tensors, monkeypatch, True, dtype, **kwargs)
    ref = run(rules.sgd_update_, tensors, monkeypatch, False, dtype, **kwargs)
    assert torch.equal(ours[0], ref[0])
    assert not torch.equal(ours[0], tensors[0])


def test_only_rows_in_the_batch_are_written(monkeypatch):
    monkeypatch.setenv(numba_rows.ENV, "1")
    weight, m, v = table(torch.float32, "contiguous", 1), torch.zeros(V, D), torch.zeros(V, D)
    before = [t.clone() for t in (weight, m, v)]
    versions = [t._version for t in (weight, m, v)]
    rows, values = steps(torch.float32)[0]
    rules.adam_update_(weight, rows, values, m, v, one_minus_beta1=0.1, one_minus_beta2=0.001,
                       eps=1e-8, neg_step_size=-1e-3, decay=1.0, sr_seed=None)
    # written in place, as torch's in-place ops would: their autograd versions move
    assert all(t._version > old for t, old in zip((weight, m, v), versions, strict=True))
    untouched = torch.ones(V, dtype=torch.bool)
    untouched[rows] = False
    for after, old in zip((weight, m, v), before, strict=True):
        assert torch.equal(after[untouched], old[untouched])
        assert not torch.equal(after[rows], old[rows])


def test_small_updates_stay_torch_ops(monkeypatch):
    monkeypatch.undo()  # the real MIN_ELEMENTS
    weight, state = torch.zeros(4096, 8), torch.zeros(4096, 8)
    small, large = torch.zeros(4095, 8), torch.zeros(4096, 8)  # 32,760 and 32,768 values
    assert numba_rows.MIN_ELEMENTS == 32768
    assert not numba_rows.usable(weight, (state,), small, None)
    assert numba_rows.usable(weight, (state,), large, None) == numba_rows.available()


@pytest.mark.parametrize("case", ["bfloat16", "stochastic", "mixed_state", "off"])
def test_what_stays_on_the_torch_op_path(monkeypatch, case):
    weight, state = torch.zeros(4, 3), torch.zeros(4, 3)
    values, seed = torch.zeros(2, 3), None
    monkeypatch.setenv(numba_rows.ENV, "1")
    assert numba_rows.usable(weight, (state,), values, seed)
    if case == "bfloat16":
        weight, values = weight.bfloat16(), values.bfloat16()
    elif case == "stochastic":
        seed = 7
    elif case == "mixed_state":
        state = state.double()
    else:
        monkeypatch.setenv(numba_rows.ENV, "0")
    assert not numba_rows.usable(weight, (state,), values, seed)


TWINS = {
    "adam": (lambda p: sparsemb.optim.SparseAdam(p, lr=1e-2),
             lambda p: torch.optim.SparseAdam(p, lr=1e-2)),
    "adagrad": (lambda p: sparsemb.optim.SparseAdagrad(p, lr=0.1),
                lambda p: torch.optim.Adagrad(p, lr=0.1)),
    "sgd": (lambda p: sparsemb.optim.SparseSGD(p, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
}


@pytest.mark.parametrize("rule", sorted(TWINS))
def test_optimizers_at_full_size_equal_torchs(monkeypatch, rule):
    """sparsemb's optimizers, on updates large enough for the passes (the real MIN_ELEMENTS),
    against torch.optim fed the same gradients: the same weights and state, bit for bit."""
    monkeypatch.undo()
    monkeypatch.setenv(numba_rows.ENV, "1")
    g = torch.Generator().manual_seed(5)
    start = torch.randn(3000, 64, generator=g)
    ours_p, theirs_p = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    ours, theirs = TWINS[rule][0]([ours_p]), TWINS[rule][1]([theirs_p])
    for _ in range(3):
        rows = torch.randperm(3000, generator=g)[:600].sort().values  # 38,400 values
        values = torch.randn(600, 64, generator=g)
        assert numba_rows.usable(ours_p, (), values, None)
        ours_p.grad = torch.sparse_coo_tensor(rows[None], values.clone(), start.shape,
                                              is_coalesced=True)
        theirs_p.grad = torch.sparse_coo_tensor(rows[None], values.clone(), start.shape)
        ours.step()
        theirs.step()
    assert torch.equal(ours_p.detach(), theirs_p.detach())


def _update_in_child(queue):
    weight, m, v = torch.zeros(100, 8), torch.zeros(100, 8), torch.zeros(100, 8)
    rules.adam_update_(weight, torch.arange(10), torch.ones(10, 8), m, v, one_minus_beta1=0.1,
                       one_minus_beta2=0.1, eps=1e-8, neg_step_size=-1.0, decay=1.0, sr_seed=None)
    queue.put((numba_rows.available(), weight[:10].tolist()))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_after_the_passes_ran_uses_torch_ops(monkeypatch):
    """Hogwild-style workers started by fork: GNU OpenMP would abort a child that runs the
    parent's Numba thread pool; the child takes the torch-op path and gets the same update."""
    monkeypatch.setenv(numba_rows.ENV, "1")
    rules.adam_update_(torch.zeros(100, 8), torch.arange(10), torch.ones(10, 8),
                       torch.zeros(100, 8), torch.zeros(100, 8), one_minus_beta1=0.1,
                       one_minus_beta2=0.1, eps=1e-8, neg_step_size=-1.0, decay=1.0,
                       sr_seed=None)  # the parent runs the passes (MIN_ELEMENTS is 0 here)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_update_in_child, args=(queue,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    available_in_child, rows = queue.get(timeout=5)
    assert not available_in_child and numba_rows.available()
    monkeypatch.setenv(numba_rows.ENV, "0")
    _update_in_child(queue)  # the same update here, on the torch-op path
    assert rows == queue.get(timeout=5)[1]


def test_two_threads_at_once_get_their_own_updates(monkeypatch):
    """Python threads stepping their own tables at the same time (Hogwild with threads): each
    gets the update a lone caller gets."""
    monkeypatch.setenv(numba_rows.ENV, "1")
    batches = steps(torch.float32)

    def train(seed, results):
        tensors = [table(torch.float32, "contiguous", seed), torch.zeros(V, D), torch.zeros(V, D)]
        for _ in range(5):
            for rows, values in batches:
                rules.adam_update_(tensors[0], rows, values, *tensors[1:], one_minus_beta1=0.1,
                                   one_minus_beta2=0.001, eps=1e-8, neg_step_size=-1e-3,
                                   decay=1.0, sr_seed=None)
        results[seed] = tensors[0]

    alone, together = {}, {}
    for seed in (1, 2):
        train(seed, alone)
    threads = [threading.Thread(target=train, args=(seed, together)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(torch.equal(alone[s], together[s]) for s in (1, 2))


def test_two_threads_on_numbas_workqueue_layer():
    """Numba's fallback threading layer (no OpenMP) aborts the process on concurrent use: the
    passes take one caller at a time there. The test above, in a process on that layer."""
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         f"{__file__}::test_two_threads_at_once_get_their_own_updates"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_no_passes_when_numba_compiles_nothing(monkeypatch):
    """NUMBA_DISABLE_JIT=1 (a user debugging other Numba code) would run the passes as Python
    loops over every value: the torch-op path runs instead."""
    import numba

    monkeypatch.setattr(numba.config, "DISABLE_JIT", True)
    numba_rows._kernels.cache_clear()
    try:
        assert not numba_rows.available()
    finally:
        monkeypatch.undo()
        numba_rows._kernels.cache_clear()
    assert numba_rows.available()


def test_a_numba_that_fails_to_load_warns_and_leaves_torch_ops(monkeypatch):
    """E.g. a Numba release too old for the installed NumPy: a warning, then the torch-op path
    (the update still runs)."""
    import sparsemb.torch_backend as package

    monkeypatch.setitem(sys.modules, "sparsemb.torch_backend._numba_kernels", None)  # import fails
    monkeypatch.delattr(package, "_numba_kernels", raising=False)
    numba_rows._kernels.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="Numba is installed but did not load"):
            assert not numba_rows.available()
        weight = torch.zeros(V, D)
        rows, values = steps(torch.float32)[0]
        rules.sgd_update_(weight, rows, values, neg_lr=-1.0, weight_decay=0.0, sr_seed=None)
        assert torch.equal(weight[rows], -values)
    finally:
        monkeypatch.undo()
        numba_rows._kernels.cache_clear()
    assert numba_rows.available()


# The max_norm lookup's pass: the gather that takes torch's own norms on the way
# (``numba_rows.gather_over``, used by ``torch_backend.renorm.gather_renormed_``).

on_x86_vectors = pytest.mark.skipif(
    not torch.backends.cpu.get_cpu_capability().startswith("AVX"),
    reason="torch's norm kernel is known to sum in 256-bit lanes on AVX2/AVX512 hosts only",
)


def boundary_table(rows, dim, dtype, seed=0):
    """Random rows of mixed scales, a third of them renormed by torch to sit at max_norm=1.1
    (at its float32 rounding: where a norm summed in another order decides otherwise)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, dim, generator=g, dtype=dtype)
    weight *= torch.rand(rows, 1, generator=g, dtype=dtype).mul_(2)
    torch.embedding_renorm_(weight, torch.arange(0, rows, 3), 1.1, 2.0)
    return weight


def takes_the_pass(dim):
    """Where the pass must run: D a multiple of torch's 256-bit lanes on an AVX2/AVX512 host
    (seen with torch 2.11 and 2.13); also D with a tail under torch 2.13 on AVX2, the build CI
    runs, whose tail was probed (1-3 fused, 4-7 squared first); elsewhere it may decline (then
    the torch-op norms decide)."""
    capability = torch.backends.cpu.get_cpu_capability()
    return dim % 8 == 0 or (capability == "AVX2" and torch.__version__.startswith("2.13"))


def index_layout(idx, layout):
    """The same indices as int64, int32, a strided view, or an expanded (stride-0) view."""
    if layout == "int32":
        return idx.to(torch.int32)
    if layout == "strided":
        return torch.stack([idx, torch.zeros_like(idx)], 1)[:, 0]
    if layout == "expanded":
        return idx[:1].expand(idx.shape[0])
    return idx


@on_x86_vectors
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [64, 128, 256, 50, 100, 300, 303])  # tails of 2, 4, 4, 7
@pytest.mark.parametrize("layout", ["int64", "int32", "strided", "expanded"])
def test_gather_over_decides_with_torchs_own_norms(dtype, dim, layout):
    weight = boundary_table(600, dim, dtype)
    idx = torch.randint(0, 600, (1500,), generator=torch.Generator().manual_seed(1))
    idx = index_layout(idx, layout)
    out = torch.empty(1500, dim, dtype=dtype)
    over = numba_rows.gather_over(weight, idx, out, 1.1)
    if over is None and not takes_the_pass(dim):
        pytest.skip(f"this torch's norms for D={dim} are not reproduced here: the pass declines")
    assert over is not None
    assert torch.equal(out, weight[idx])
    expected = torch.linalg.vector_norm(weight[idx], dim=1).double() > 1.1
    if layout != "expanded":  # one row repeated: all over or none
        assert expected.any() and not expected.all()
    assert torch.equal(over if over.numel() else torch.zeros_like(expected), expected)  # empty:
    # none over


@on_x86_vectors
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("max_norm", [0.3, 1.0, 1.1])
@pytest.mark.parametrize("dim", [64, 300])
def test_lookup_with_max_norm_equals_torch_and_the_blocked_path(monkeypatch, dtype, max_norm, dim):
    """Through the pass and without it: the same output and table, bit for bit, as torch's
    ``F.embedding`` with max_norm, over lookups whose rows sit at the boundary; a NaN row is
    left alone and an inf row renormed as torch does."""
    from sparsemb.torch_backend import renorm

    weight = boundary_table(600, dim, dtype)
    weight[5] = float("nan")
    weight[7, 3] = float("inf")
    calls = []
    monkeypatch.setattr(numba_rows, "gather_over",
                        lambda *a, _f=numba_rows.gather_over: calls.append(_f(*a)) or calls[-1])
    tables = {"pass": weight.clone(), "blocked": weight.clone(), "torch": weight.clone()}
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        idx = torch.randint(0, 600, (1500,), generator=g)
        idx[:2] = torch.tensor([5, 7])
        outs = {"torch": F.embedding(idx.clone(), tables["torch"], max_norm=max_norm)}
        outs["pass"] = renorm.gather_renormed_(tables["pass"], idx.clone(), max_norm, 2.0)
        monkeypatch.setenv(numba_rows.ENV, "0")
        outs["blocked"] = renorm.gather_renormed_(tables["blocked"], idx.clone(), max_norm, 2.0)
        monkeypatch.delenv(numba_rows.ENV)
        for name in ("pass", "blocked"):
            torch.testing.assert_close(outs[name], outs["torch"], rtol=0, atol=0, equal_nan=True)
            torch.testing.assert_close(tables[name], tables["torch"], rtol=0, atol=0,
                                       equal_nan=True)
        noise = torch.randn(600, dim, generator=g, dtype=dtype).mul_(1e-7)
        for table in tables.values():
            table.add_(noise)
    if takes_the_pass(dim):
        assert [over is not None for over in calls] == [True, False] * 3  # the pass, then not


def test_gather_over_declines_what_it_does_not_reproduce(monkeypatch):
    """Not a contiguous float32/float64 table, a row shorter than torch's lanes, an index
    outside the table (then the caller's torch gather raises, the table untouched), or a
    torch whose norms it does not reproduce (here: only the 512-bit pass on offer; torch's
    norm kernel sums in 256-bit lanes on AVX2 and AVX512 hosts alike)."""
    from sparsemb.torch_backend import renorm

    weight = boundary_table(300, 64, torch.float32)
    idx = torch.arange(0, 300, 2)
    out = torch.empty(150, 64)
    assert numba_rows.gather_over(weight.t().contiguous().t(), idx, out, 1.0) is None
    assert numba_rows.gather_over(weight.half(), idx, out.half(), 1.0) is None
    assert numba_rows.gather_over(weight[:, :36], idx, out[:, :36].contiguous(), 1.0) is None
    assert numba_rows.gather_over(torch.zeros(300, 4), idx, torch.empty(150, 4), 1.0) is None
    bad = idx.clone()
    bad[-1] = 300
    assert numba_rows.gather_over(weight, bad, out, 1.0) is None
    before = weight.clone()
    with pytest.raises(IndexError):
        renorm.gather_renormed_(weight, bad, 1.0, 2.0)
    assert torch.equal(weight, before)
    numba_rows._norms_pass.cache_clear()
    monkeypatch.setattr(numba_rows, "PASSES", ((64, False), (64, True)))  # 512-bit lanes only
    try:
        assert numba_rows.gather_over(weight, idx, out, 1.0) is None
    finally:
        monkeypatch.undo()
        numba_rows._norms_pass.cache_clear()
    assert numba_rows.gather_over(weight, idx, out, 1.0) is not None


def test_gather_over_runs_no_numba_compiler_pass_once_warm(monkeypatch):
    """After its first call the pass is plain dispatch: Numba's compiler passes must not run on
    every lookup (``numba.literally`` on the width did that, making the lookup 6x slower)."""
    from numba.core import compiler_machinery

    weight = boundary_table(300, 64, torch.float32)
    idx = torch.arange(0, 300, 2)
    out = torch.empty(150, 64)
    assert numba_rows.gather_over(weight, idx, out, 1.0) is not None
    runs = []
    original = compiler_machinery.PassManager.run
    monkeypatch.setattr(compiler_machinery.PassManager, "run",
                        lambda self, state: runs.append(1) or original(self, state))
    for _ in range(3):
        assert numba_rows.gather_over(weight, idx, out, 1.0) is not None
    assert runs == []
