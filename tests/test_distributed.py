"""sparsemb.distributed.ShardedEmbedding in real multi-process runs (gloo on 127.0.0.1).

Each test launches world-size processes (``forkserver``, torch imported once), runs one
scenario function below on every rank, and fails with every rank's traceback. Everything has a
timeout: the process group's (collectives), and the launcher's (a hung rank is killed and the
test fails). The oracle is one unsharded ``sparsemb.Embedding`` trained on the concatenated
global batch with the ranks' losses summed (or averaged, with ``grad_reduction="mean"``).
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import socket
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sparsemb
from sparsemb.distributed import load_sharded_state_dict, sharded_state_dict
from sparsemb.optim import SparseAdam, SparseAware, SparseSGD

pytestmark = [pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"),
    # dcp.save / dcp.load in the test process itself (no process group) say so; that is the case
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning"),
]

HAS_TRITON = importlib.util.find_spec("triton") is not None
PG_TIMEOUT_S = 30  # a collective that waits longer raises on the waiting ranks
KILL_TIMEOUT_S = 10  # the group's timeout in the run where a rank is killed
LAUNCH_TIMEOUT_S = 120  # the whole run; past it every rank is killed and the test fails


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, plan, out_dir, pg_timeout_s):
    """One rank: run each (scenario, kwargs) of ``plan`` in order, saving {scenario: result or
    traceback} after each, so a rank that dies on purpose still reports what it ran before."""
    torch.set_num_threads(1)
    # The ranks hold CPU tensors (gloo): the Triton scenario runs the kernels under the
    # interpreter, also on a machine with a GPU (read when sparsemb.kernels is first imported,
    # which the forkserver's preload does not do).
    os.environ.setdefault("TRITON_INTERPRET", "1")
    path = os.path.join(out_dir, f"rank{rank}.pt")
    results = {}
    try:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
            timeout=datetime.timedelta(seconds=pg_timeout_s),
        )
        for scenario, kwargs in plan:
            torch.save(results, path)
            try:
                results[scenario] = {"ok": True,
                                     "result": globals()[scenario](rank, world, **kwargs)}
            except Exception:
                results[scenario] = {"ok": False, "error": traceback.format_exc()}
    except Exception:
        results["launch"] = {"ok": False, "error": traceback.format_exc()}
    finally:
        torch.save(results, path)
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(plan, world, out_dir, pg_timeout_s=PG_TIMEOUT_S, expect_exit=None):
    """Run the scenarios of ``plan`` ([(name, kwargs)]) on ``world`` processes.

    Returns, per rank, {name: {"ok", "result" or "error"}}. ``expect_exit``: {rank: exit
    code} of ranks that are meant to die. A run past LAUNCH_TIMEOUT_S is killed and fails."""
    expect_exit = expect_exit or {}
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "sparsemb", "sparsemb.distributed"])
    out_dir.mkdir(parents=True)
    port = _free_port()
    procs = [
        ctx.Process(target=_rank_main,
                    args=(r, world, port, plan, str(out_dir), pg_timeout_s))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for r in hung:
        procs[r].kill()
        procs[r].join()
    assert not hung, f"ranks {hung} did not finish in {LAUNCH_TIMEOUT_S} s"
    for r, p in enumerate(procs):
        assert p.exitcode == expect_exit.get(r, 0), f"rank {r} exited with {p.exitcode}"
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world)]


def results_of(runs, scenario, ranks=None):
    """The scenario's result on each rank (``ranks``: default all); fails with every rank's
    traceback."""
    ranks = range(len(runs)) if ranks is None else ranks
    errors = [f"rank {r}: " + runs[r].get(scenario, runs[r].get("launch", {"error": "not run"}))
              .get("error", "") for r in ranks if not runs[r].get(scenario, {}).get("ok")]
    assert not errors, f"{scenario} failed:\n" + "\n".join(errors)
    return [runs[r][scenario]["result"] for r in ranks]


# ----- shared builders


def _global_batch(world, per_rank, num_rows, seed, hot=None):
    """(world, per_rank) indices with cross-rank duplicates (a hot row on every rank)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, num_rows, (world, per_rank), generator=g)
    if hot is not None:
        idx[:, ::3] = hot
    return idx


def _table(num_rows, dim, seed=0):
    return torch.randn(num_rows, dim, generator=torch.Generator().manual_seed(seed))


def _sgd_parity(rank, world, steps=3, padding_idx=3, row_map=None, empty_rank=None):
    """SGD on integer-valued gradients, lr 0.5: every sum is exact, so the sharded table must
    equal the unsharded one bit for bit after each step."""
    from sparsemb.distributed import ShardedEmbedding

    num_rows, dim = 37, 5  # 37 rows over 2 or 4 ranks: uneven shards
    full = _table(num_rows, dim)
    sharded = ShardedEmbedding.from_pretrained(
        full.clone(), freeze=False, padding_idx=padding_idx, sparse=True, row_map=row_map
    )
    ref = sparsemb.Embedding.from_pretrained(full.clone(), freeze=False,
                                             padding_idx=padding_idx, sparse=True)
    opt, ref_opt = SparseSGD(sharded.parameters(), lr=0.5), SparseSGD(ref.parameters(), lr=0.5)
    for step in range(steps):
        batch = _global_batch(world, 11, num_rows, seed=10 + step, hot=padding_idx)
        batch[:, 1] = 7  # a row every rank looks up
        target = torch.randint(-3, 4, (world, 11, dim),
                               generator=torch.Generator().manual_seed(20 + step)).float()
        keep = [0 if r == empty_rank else 11 for r in range(world)]  # an empty batch too
        batches = [batch[r, : keep[r]] for r in range(world)]
        targets = [target[r, : keep[r]] for r in range(world)]
        out = sharded(batches[rank])
        ref_out = ref(torch.cat(batches))
        torch.testing.assert_close(out, ref_out.split(keep)[rank], rtol=0, atol=0)
        (out * targets[rank]).sum().backward()
        (ref_out * torch.cat(targets)).sum().backward()  # the sum of every rank's loss
        opt.step(); ref_opt.step(); opt.zero_grad(); ref_opt.zero_grad()  # noqa: E702
        got = sharded.full_weight()
        assert torch.equal(got, ref.weight.detach()), f"step {step}: weights differ"
        assert torch.equal(got[padding_idx], full[padding_idx]), "padding row moved"
    return True


def scenario_parity_sgd(rank, world):
    _sgd_parity(rank, world)
    row_map = torch.randint(0, world, (37,), generator=torch.Generator().manual_seed(5))
    _sgd_parity(rank, world, steps=2, row_map=row_map)
    _sgd_parity(rank, world, steps=2, empty_rank=world - 1)
    # the forward itself: rows equal the table's, in the batch's order and shape
    from sparsemb.distributed import ShardedEmbedding

    full = _table(37, 5)
    table = ShardedEmbedding.from_pretrained(full.clone())
    idx = _global_batch(world, 12, 37, seed=3)[rank].view(3, 4)
    assert torch.equal(table(idx), full[idx])
    assert torch.equal(table(idx.to(torch.int32)), full[idx])
    return True


class _Model(torch.nn.Module):
    def __init__(self, table, dense):
        super().__init__()
        self.emb, self.dense = table, dense

    def forward(self, idx):
        return self.dense(self.emb(idx)).sum(-1)


def scenario_ddp_max_norm(rank, world):
    """SGD (which sees the gradient's scale: Adam would not notice a missing 1/world) and Adam
    through SparseAware, fused backward on the sharded side, the dense layer under DDP,
    max_norm on the owner, averaged losses: equals the unsharded model on the global batch
    within float tolerance."""
    for rule in ("sgd", "adam"):
        _ddp_max_norm(rank, world, rule)
    return True


def _ddp_max_norm(rank, world, rule):
    from torch.nn.parallel import DistributedDataParallel

    from sparsemb.distributed import ShardedEmbedding

    num_rows, dim = 41, 8
    full = _table(num_rows, dim, seed=1) * 2  # norms above max_norm: the renorm acts
    torch.manual_seed(0)
    linear = torch.nn.Linear(dim, 3)
    ref_linear = torch.nn.Linear(dim, 3)
    ref_linear.load_state_dict(linear.state_dict())
    table = ShardedEmbedding.from_pretrained(full.clone(), freeze=False, max_norm=1.5,
                                             sparse=True, grad_reduction="mean")
    model = _Model(table, DistributedDataParallel(linear))
    ref = _Model(sparsemb.Embedding.from_pretrained(full.clone(), freeze=False, max_norm=1.5,
                                                    sparse=True), ref_linear)
    opt = SparseAware(model, sparse=rule, dense=torch.optim.SGD, lr=0.05, fused_backward=True)
    ref_opt = SparseAware(ref, sparse=rule, dense=torch.optim.SGD, lr=0.05)
    assert table.weight in [p for g in opt.sparse_optimizer.param_groups for p in g["params"]]
    for step in range(3):
        batch = _global_batch(world, 9, num_rows, seed=30 + step, hot=5)
        target = torch.randn(world, 9, generator=torch.Generator().manual_seed(40 + step))
        opt.zero_grad(); ref_opt.zero_grad()  # noqa: E702
        loss = ((model(batch[rank]) - target[rank]) ** 2).mean()
        loss.backward()
        opt.step()
        ref_loss = ((ref(batch) - target) ** 2).mean(dim=1).mean()  # mean of the ranks' losses
        ref_loss.backward()
        ref_opt.step()
        assert table.weight.grad is None  # fused: the update ran inside backward
        torch.testing.assert_close(table.full_weight(), ref.emb.weight.detach())
        torch.testing.assert_close(linear.weight, ref_linear.weight)
    with torch.no_grad():
        table(batch[rank])  # a lookup renorms, on their owners, the rows any rank looked up
    looked_up = table.full_weight()[torch.unique(batch)]
    assert (looked_up.norm(dim=1) <= 1.5 + 1e-5).all()


def scenario_subgroups(rank, world):
    """Two tables on the process groups {0, 1} and {2, 3}: each is sharded over its own group
    only and looks up what that group's ranks ask for."""
    from sparsemb.distributed import ShardedEmbedding

    groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # every rank creates both
    mine = rank // 2
    full = _table(9, 4, seed=mine)
    table = ShardedEmbedding.from_pretrained(full.clone(), process_group=groups[mine])
    assert table.world_size == 2 and table.rank == rank % 2
    assert table.weight.shape[0] == (5 if rank % 2 == 0 else 4)
    idx = torch.tensor([8, rank, 0, 8])
    assert torch.equal(table(idx), full[idx])
    assert torch.equal(table.full_weight(), full)
    return True


def _interpreter_problem() -> str | None:
    """Why Triton's interpreter cannot run the kernels here, or None. Triton 3.6's interpreter
    turns a loop bound taken from a kernel argument into a Python int with ``int(array)``, which
    NumPy >= 2.4 refuses for a 1-element array (seen on the H200 machine: triton 3.6, numpy 2.4);
    Triton 3.9's squeezes the array first."""
    import numpy
    import triton
    import triton.language as tl

    @triton.jit
    def _loop_over_argument(x_ptr, n, BLOCK: tl.constexpr):
        for start in range(0, n, BLOCK):
            offsets = start + tl.arange(0, BLOCK)
            tl.store(x_ptr + offsets, offsets.to(tl.float32), mask=offsets < n)

    x = torch.zeros(5)
    try:
        _loop_over_argument[(1,)](x, 5, BLOCK=2)
    except Exception as exc:  # the interpreter wraps what failed in its own error
        return (f"Triton {triton.__version__}'s interpreter cannot run a loop over a kernel "
                f"argument with NumPy {numpy.__version__}: {exc!r}")
    return None if torch.equal(x, torch.arange(5.0)) else "the interpreter's loop gave wrong values"


def scenario_parity_triton(rank, world):
    """The owners' lookups, gradients and updates on the Triton kernels (under the interpreter:
    the ranks' tensors are on CPU, see ``_rank_main``). Returns {"skip": reason} where the
    interpreter cannot run here."""
    if not HAS_TRITON:
        return None
    problem = _interpreter_problem()
    if problem is not None:
        return {"skip": problem}
    from sparsemb._backend import uses_triton

    os.environ["SPARSEMB_BACKEND"] = "triton"
    try:
        assert uses_triton(torch.zeros(1, 1))
        return _sgd_parity(rank, world, steps=2)
    finally:
        del os.environ["SPARSEMB_BACKEND"]


def scenario_dense_grad(rank, world):
    """sparse=False: the shard gets a dense (local rows, D) gradient that torch's SGD takes;
    integer-valued gradients and lr 0.5 keep every sum exact, so the tables match bit for bit."""
    from sparsemb.distributed import ShardedEmbedding

    full = _table(13, 3, seed=4)
    table = ShardedEmbedding.from_pretrained(full.clone(), freeze=False, padding_idx=-1)
    ref = sparsemb.Embedding.from_pretrained(full.clone(), freeze=False, padding_idx=-1)
    opt = torch.optim.SGD(table.parameters(), lr=0.5)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    batch = _global_batch(world, 10, 13, seed=8, hot=12)
    target = torch.randint(-2, 3, (world, 10, 3),
                           generator=torch.Generator().manual_seed(9)).float()
    (table(batch[rank]) * target[rank]).sum().backward()
    (ref(batch) * target).sum().backward()
    assert not table.weight.grad.is_sparse
    assert table.weight.grad.shape == table.weight.shape  # the shard's size, not the table's
    opt.step()
    ref_opt.step()
    assert torch.equal(table.full_weight(), ref.weight.detach())
    return True


def scenario_bad_index(rank, world):
    """Rank 1 looks up row V: every rank raises IndexError, nothing is written (max_norm
    would renorm), and the group still works for the next lookup."""
    from sparsemb.distributed import ShardedEmbedding

    full = _table(10, 4, seed=2) * 3
    table = ShardedEmbedding.from_pretrained(full.clone(), freeze=False, max_norm=1.0,
                                             sparse=True)
    before = table.weight.detach().clone()
    idx = torch.tensor([1, 2, 9]) if rank != 1 else torch.tensor([0, 10])
    with pytest.raises(IndexError) as info:
        table(idx)
    message = str(info.value)
    assert ("index 10 is out of range" in message) if rank == 1 else ("rank(s) [1]" in message)
    assert torch.equal(table.weight.detach(), before), "a rejected lookup wrote the table"
    out = table(torch.tensor([rank, 9]))  # the group is still in step
    assert out.shape == (2, 4)
    with pytest.raises(TypeError):
        table(torch.tensor([0.0]))
    with pytest.raises(ValueError, match="grad_reduction"):
        ShardedEmbedding(10, 4, grad_reduction="avg")
    with pytest.raises(ValueError, match="shard"):
        ShardedEmbedding(10, 4, _weight=torch.zeros(10, 4))  # the full table, not a shard
    with pytest.raises(ValueError, match="row_map"):
        ShardedEmbedding(10, 4, row_map=torch.zeros(9, dtype=torch.int64))
    return True


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    """One world-2 run of the training scenarios (process start-up is paid once)."""
    plan = [("scenario_parity_sgd", {}), ("scenario_ddp_max_norm", {}),
            ("scenario_bad_index", {}), ("scenario_dense_grad", {}),
            ("scenario_parity_triton", {})]
    return launch(plan, 2, tmp_path_factory.mktemp("dist") / "world2")


@pytest.fixture(scope="module")
def world4(tmp_path_factory):
    """One world-4 run: SGD parity, a DCP checkpoint saved, then rank 3 killed mid-step."""
    root = tmp_path_factory.mktemp("dist")
    plan = [("scenario_parity_sgd", {}),
            ("scenario_save_world4", {"ckpt": str(root / "ckpt-world4")}),
            ("scenario_subgroups", {}),
            ("scenario_killed_rank", {"victim": 3})]
    runs = launch(plan, 4, root / "world4", pg_timeout_s=KILL_TIMEOUT_S, expect_exit={3: 3})
    return runs, root / "ckpt-world4"


def test_parity_sgd_world2(world2):
    assert all(results_of(world2, "scenario_parity_sgd"))


def test_parity_sgd_world4(world4):
    assert all(results_of(world4[0], "scenario_parity_sgd"))


def test_sgd_adam_ddp_mean_max_norm_world2(world2):
    assert all(results_of(world2, "scenario_ddp_max_norm"))


def test_tables_on_subgroups(world4):
    assert all(results_of(world4[0], "scenario_subgroups", ranks=[0, 1, 2, 3]))


def test_parity_sgd_triton_kernels_world2(world2):
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    results = results_of(world2, "scenario_parity_triton")
    skips = [r["skip"] for r in results if isinstance(r, dict)]
    if skips:
        pytest.skip(skips[0])
    assert all(results)


def test_dense_grad_with_torch_sgd(world2):
    assert all(results_of(world2, "scenario_dense_grad"))


def test_bad_index_raises_on_every_rank(world2):
    assert all(results_of(world2, "scenario_bad_index"))


def scenario_killed_rank(rank, world, victim):
    """Rank ``victim`` dies between forward and backward; the others' backward exchange must
    raise (gloo sees the closed connection, else the group's timeout) instead of hanging."""
    from sparsemb.distributed import ShardedEmbedding

    table = ShardedEmbedding.from_pretrained(_table(20, 4), freeze=False, sparse=True)
    table(torch.tensor([rank, 19])).sum().backward()  # one good step first
    out = table(torch.tensor([rank, 11, 19]))
    if rank == victim:
        os._exit(3)
    start = time.monotonic()
    try:
        out.sum().backward()
        table(torch.tensor([0]))
    except Exception as error:  # noqa: BLE001  (whatever the backend raises is the result)
        return {"error": f"{type(error).__name__}: {error}", "seconds": time.monotonic() - start}
    return {"error": None, "seconds": time.monotonic() - start}


def test_killed_rank_surfaces_as_error(world4):
    """Rank 3 exits between forward and backward: ranks 0-2 raise within the group's timeout
    (here KILL_TIMEOUT_S; in practice gloo reports the closed connection at once)."""
    for rank, result in enumerate(results_of(world4[0], "scenario_killed_rank", ranks=[0, 1, 2])):
        assert result["error"] is not None, f"rank {rank} did not notice the dead rank"
        assert result["seconds"] < KILL_TIMEOUT_S + 5, result


# ----- resharding checkpoints: world 4 -> single process -> world 2


class _Holder(torch.nn.Module):
    """The same parameter name ("emb.weight") for the sharded and the single-process table."""

    def __init__(self, table):
        super().__init__()
        self.emb = table


CKPT_ROWS, CKPT_DIM, CKPT_LR = 23, 6, 0.1


def _ckpt_batches(world, step):
    return _global_batch(world, 8, CKPT_ROWS, seed=50 + step, hot=4)


def _train_step(model, opt, batches, rank=None):
    """One Adam step on the sum of the ranks' losses (all of them when ``rank`` is None)."""
    idx = batches.reshape(-1) if rank is None else batches[rank]
    weights = torch.linspace(-1, 1, CKPT_DIM)
    opt.zero_grad()
    (model.emb(idx) * weights).pow(2).sum().backward()
    opt.step()


def _full_state(model, opt):
    """Weight and optimizer state of ``model.emb`` as whole-table tensors."""
    from sparsemb.distributed import ShardedEmbedding
    from sparsemb.distributed.checkpoint import as_global

    table, state = model.emb, opt.state[model.emb.weight]
    if isinstance(table, ShardedEmbedding):
        moments = {k: as_global(table, state[k]).full_tensor() for k in ("exp_avg", "exp_avg_sq")}
        return {"weight": table.full_weight(), "step": state["step"], **moments}
    return {"weight": table.weight.detach().clone(), "step": state["step"],
            "exp_avg": state["exp_avg"].clone(), "exp_avg_sq": state["exp_avg_sq"].clone()}


def _assert_states_equal(got, expected, exact=True):
    assert got["step"] == expected["step"]
    for key in ("weight", "exp_avg", "exp_avg_sq"):
        if exact:
            assert torch.equal(got[key], expected[key]), key
        else:
            torch.testing.assert_close(got[key], expected[key])


def _sharded_model(seed):
    from sparsemb.distributed import ShardedEmbedding

    torch.manual_seed(seed)  # a fresh, different table: the checkpoint must overwrite it
    return _Holder(ShardedEmbedding(CKPT_ROWS, CKPT_DIM, sparse=True))


def scenario_save_world4(rank, world, ckpt):
    import torch.distributed.checkpoint as dcp

    from sparsemb.distributed import ShardedEmbedding

    model = _Holder(ShardedEmbedding.from_pretrained(_table(CKPT_ROWS, CKPT_DIM, seed=7),
                                                     freeze=False, sparse=True))
    opt = SparseAdam(model.parameters(), lr=CKPT_LR)
    for step in range(2):
        _train_step(model, opt, _ckpt_batches(world, step), rank)
    dcp.save(sharded_state_dict(model, opt), checkpoint_id=ckpt)
    return _full_state(model, opt)


def scenario_load_world2(rank, world, ckpt4, ckpt1, saved4, stepped):
    import torch.distributed.checkpoint as dcp

    model = _sharded_model(seed=rank + 100)
    opt = SparseAdam(model.parameters(), lr=CKPT_LR)
    state = sharded_state_dict(model, opt)
    dcp.load(state, checkpoint_id=ckpt4)
    load_sharded_state_dict(model, opt, state)
    _assert_states_equal(_full_state(model, opt), saved4)  # world 4 -> world 2, bit for bit
    _train_step(model, opt, _ckpt_batches(world, 2), rank)  # the step the single process took
    _assert_states_equal(_full_state(model, opt), stepped, exact=False)

    model = _sharded_model(seed=rank + 200)
    opt = SparseAdam(model.parameters(), lr=CKPT_LR)
    state = sharded_state_dict(model, opt)
    dcp.load(state, checkpoint_id=ckpt1)  # saved by the single process
    load_sharded_state_dict(model, opt, state)
    _assert_states_equal(_full_state(model, opt), stepped)
    return True


def test_resharding_checkpoint_4_to_1_to_2(world4, tmp_path):
    """DCP checkpoints with Adam state: saved at world size 4, loaded into one
    sparsemb.Embedding, stepped and saved there, loaded at world size 2 (both checkpoints)."""
    import torch.distributed.checkpoint as dcp

    saved4 = results_of(world4[0], "scenario_save_world4", ranks=[0, 1, 2])
    assert all(_same(saved4[0], other) for other in saved4[1:])
    ckpt4, ckpt1 = str(world4[1]), str(tmp_path / "ckpt-single")

    single = _Holder(sparsemb.Embedding(CKPT_ROWS, CKPT_DIM, sparse=True))
    opt = SparseAdam(single.parameters(), lr=CKPT_LR)
    state = sharded_state_dict(single, opt)
    dcp.load(state, checkpoint_id=ckpt4)
    load_sharded_state_dict(single, opt, state)
    _assert_states_equal(_full_state(single, opt), saved4[0])
    _train_step(single, opt, _ckpt_batches(2, 2))  # the global batch of the world-2 run
    stepped = _full_state(single, opt)
    dcp.save(sharded_state_dict(single, opt), checkpoint_id=ckpt1)

    plan = [("scenario_load_world2", dict(ckpt4=ckpt4, ckpt1=ckpt1, saved4=saved4[0],
                                          stepped=stepped))]
    assert all(results_of(launch(plan, 2, tmp_path / "world2"), "scenario_load_world2"))


def _same(a, b):
    return a["step"] == b["step"] and all(
        torch.equal(a[k], b[k]) for k in ("weight", "exp_avg", "exp_avg_sq"))


# ----- the row layouts (no process group needed)


@pytest.mark.parametrize("rows,world", [(37, 4), (5, 4), (8, 2), (0, 3), (3, 5)])
def test_blocks_layout_is_dtensors_split(rows, world):
    """Shard r holds torch.chunk's r-th block (DTensor's Shard(0) split, which DCP reshards);
    every row has one owner, at its position in that block."""
    from sparsemb.distributed import RowLayout

    layout = RowLayout.blocks(rows, world)
    chunks = list(torch.arange(rows).chunk(world)) if rows else []
    chunks += [torch.arange(0)] * (world - len(chunks))
    for r in range(world):
        assert torch.equal(layout.rows_of(r), chunks[r])
        assert layout.num_rows_of(r) == chunks[r].numel()
    owner, local = layout.owner_and_local(torch.arange(rows))
    for row in range(rows):
        assert layout.rows_of(int(owner[row]))[int(local[row])] == row


def test_map_layout_positions():
    from sparsemb.distributed import RowLayout

    row_map = torch.tensor([2, 0, 2, 1, 0, 2])
    layout = RowLayout.from_map(row_map, 3)
    assert [layout.rows_of(r).tolist() for r in range(3)] == [[1, 4], [3], [0, 2, 5]]
    owner, local = layout.owner_and_local(torch.tensor([5, 0, 4]))
    assert owner.tolist() == [2, 2, 0] and local.tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="outside"):
        RowLayout.from_map(torch.tensor([0, 3]), 3)
    with pytest.raises(TypeError):
        RowLayout.from_map(torch.tensor([0.0, 1.0]), 3)


def test_needs_a_process_group():
    from sparsemb.distributed import ShardedEmbedding

    if dist.is_initialized():
        pytest.skip("a process group is already running in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        ShardedEmbedding(10, 4)


# ----- ShardedEmbeddingBag: pooled lookups over the same shards (one world-2 run)

BAG_ROWS, BAG_DIM, BAG_PAD = 29, 4, 3


def _bag_batches(world, step, two_d, psw):
    """Per rank (indices, offsets or None, per_sample_weights or None): empty bags, the padding
    row, and row 7 on every rank (a cross-rank duplicate)."""
    g = torch.Generator().manual_seed(60 + step)
    batches = []
    for _ in range(world):
        offsets = None
        if two_d:
            idx = torch.randint(0, BAG_ROWS, (4, 3), generator=g)
        else:
            lengths = torch.randint(0, 5, (6,), generator=g)
            lengths[1] = 0
            idx = torch.randint(0, BAG_ROWS, (int(lengths.sum()),), generator=g)
            offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])
        flat = idx.view(-1)
        flat[::4] = BAG_PAD
        if flat.numel() > 1:
            flat[1] = 7
        weights = torch.randint(-2, 3, idx.shape, generator=g).float() if psw else None
        batches.append((idx, offsets, weights))
    return batches


def _concat_bags(batches):
    """The ranks' bags as one batch for the unsharded table, in rank order."""
    idx = torch.cat([b[0] for b in batches])
    offsets = None
    if batches[0][1] is not None:
        starts = torch.tensor([0] + [b[0].numel() for b in batches[:-1]]).cumsum(0)
        offsets = torch.cat([b[1] + s for b, s in zip(batches, starts.tolist(), strict=True)])
    weights = None if batches[0][2] is None else torch.cat([b[2] for b in batches])
    return idx, offsets, weights


def _bag_parity(rank, world, mode, *, two_d=False, psw=False, include_last_offset=False,
                row_map=None, optim="sgd", max_norm=None, steps=2):
    """Outputs, per-sample-weight gradients and trained tables equal an unsharded
    sparsemb.EmbeddingBag trained on the concatenated batch with the ranks' losses summed."""
    from sparsemb.distributed import ShardedEmbeddingBag

    full = _table(BAG_ROWS, BAG_DIM, seed=6) * (3 if max_norm else 1)
    options = dict(freeze=False, mode=mode, padding_idx=BAG_PAD, max_norm=max_norm,
                   sparse=optim != "torch_sgd")
    table = ShardedEmbeddingBag.from_pretrained(
        full.clone(), include_last_offset=include_last_offset, row_map=row_map, **options)
    ref = sparsemb.EmbeddingBag.from_pretrained(full.clone(), **options)
    if optim == "torch_sgd":
        opt, ref_opt = (torch.optim.SGD(t.parameters(), lr=0.5) for t in (table, ref))
    elif optim == "fused":
        opt = SparseAware(_Holder(table), sparse="sgd", dense=torch.optim.SGD, lr=0.5,
                          fused_backward=True)
        assert table.weight in opt.sparse_optimizer.param_groups[0]["params"]
        ref_opt = SparseSGD(ref.parameters(), lr=0.5)
    else:
        opt, ref_opt = SparseSGD(table.parameters(), lr=0.5), SparseSGD(ref.parameters(), lr=0.5)
    for step in range(steps):
        batches = _bag_batches(world, step, two_d, psw)
        idx, offsets, weights = (None if t is None else t.clone() for t in batches[rank])
        if include_last_offset:
            offsets = torch.cat([offsets, torch.tensor([idx.numel()])])
        if psw:
            weights.requires_grad_()
        out = table(idx, offsets, weights)
        ref_idx, ref_offsets, ref_weights = _concat_bags(batches)
        if psw:
            ref_weights.requires_grad_()
        ref_out = ref(ref_idx, ref_offsets, ref_weights)
        bags = [b[0].shape[0] if two_d else b[1].numel() for b in batches]
        torch.testing.assert_close(out, ref_out.split(bags)[rank])
        target = torch.randint(-3, 4, (sum(bags), BAG_DIM),
                               generator=torch.Generator().manual_seed(70 + step)).float()
        (out * target.split(bags)[rank]).sum().backward()
        (ref_out * target).sum().backward()
        if psw:
            lengths = [b[0].shape[0] for b in batches]
            torch.testing.assert_close(weights.grad, ref_weights.grad.split(lengths)[rank])
        opt.step(); ref_opt.step(); opt.zero_grad(); ref_opt.zero_grad()  # noqa: E702
        if optim == "fused":
            assert table.weight.grad is None  # the update ran inside backward
        got = table.full_weight()
        torch.testing.assert_close(got, ref.weight.detach(), msg=f"{mode} step {step}")
        if max_norm is None:
            assert torch.equal(got[BAG_PAD], full[BAG_PAD]), "padding row moved"


def scenario_bag_parity(rank, world):
    _bag_parity(rank, world, "sum", psw=True, include_last_offset=True)
    _bag_parity(rank, world, "mean", optim="torch_sgd")
    row_map = torch.randint(0, world, (BAG_ROWS,), generator=torch.Generator().manual_seed(8))
    _bag_parity(rank, world, "max", two_d=True, row_map=row_map, max_norm=1.5)
    _bag_parity(rank, world, "sum", two_d=True, psw=True, optim="fused")
    _bag_parity(rank, world, "mean", optim="fused", max_norm=1.5)
    return True


def scenario_bag_errors(rank, world):
    """A bad index or bad offsets on rank 1 raise on every rank before anything is written
    (max_norm would renorm); the group then still works."""
    from sparsemb.distributed import ShardedEmbeddingBag

    table = ShardedEmbeddingBag.from_pretrained(_table(10, 4, seed=2) * 3, freeze=False,
                                                max_norm=1.0, mode="sum", sparse=True)
    before = table.weight.detach().clone()
    idx, offsets = (torch.tensor([1, 2, 9]), torch.tensor([0, 1])) if rank != 1 else (
        torch.tensor([0, 10, 4]), torch.tensor([0, 2]))
    with pytest.raises(IndexError) as info:
        table(idx, offsets)
    message = str(info.value)
    assert ("index 10 is out of range" in message) if rank == 1 else ("rank(s) [1]" in message)
    bad_offsets = torch.tensor([0, 5]) if rank == 1 else torch.tensor([0, 2])
    expected = ValueError if rank == 1 else IndexError
    with pytest.raises(expected, match="offsets" if rank == 1 else "rank\\(s\\) \\[1\\]"):
        table(torch.tensor([1, 2, 3]), bad_offsets)
    assert torch.equal(table.weight.detach(), before), "a rejected lookup wrote the table"
    assert table(torch.tensor([rank, 9]), torch.tensor([0, 1])).shape == (2, 4)
    with pytest.raises(ValueError, match="scale_grad_by_freq"):
        ShardedEmbeddingBag(10, 4, scale_grad_by_freq=True)
    with pytest.raises(ValueError, match="mode"):
        ShardedEmbeddingBag(10, 4, mode="avg")
    with pytest.raises(NotImplementedError, match="per_sample_weights"):  # local: no collective
        ShardedEmbeddingBag(10, 4, mode="max")(torch.tensor([[1]]), None, torch.ones(1, 1))
    return True


def scenario_bag_checkpoint(rank, world, ckpt):
    """sharded_state_dict / load_sharded_state_dict on a bag table with Adam state: saved,
    loaded into a fresh (different) table, equal bit for bit."""
    import torch.distributed.checkpoint as dcp

    from sparsemb.distributed import ShardedEmbeddingBag

    model = _Holder(ShardedEmbeddingBag.from_pretrained(
        _table(CKPT_ROWS, CKPT_DIM, seed=9), freeze=False, mode="sum", sparse=True))
    opt = SparseAdam(model.parameters(), lr=CKPT_LR)
    _train_step(model, opt, _ckpt_batches(world, 0).unsqueeze(-1), rank)  # 2-D: bags of one
    saved = _full_state(model, opt)
    dcp.save(sharded_state_dict(model, opt), checkpoint_id=ckpt)
    torch.manual_seed(rank + 300)
    fresh = _Holder(ShardedEmbeddingBag(CKPT_ROWS, CKPT_DIM, mode="sum", sparse=True))
    fresh_opt = SparseAdam(fresh.parameters(), lr=CKPT_LR)
    state = sharded_state_dict(fresh, fresh_opt)
    dcp.load(state, checkpoint_id=ckpt)
    load_sharded_state_dict(fresh, fresh_opt, state)
    _assert_states_equal(_full_state(fresh, fresh_opt), saved)
    return saved


@pytest.fixture(scope="module")
def world2_bag(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    plan = [("scenario_bag_parity", {}), ("scenario_bag_errors", {}),
            ("scenario_bag_checkpoint", {"ckpt": str(root / "ckpt-bag")})]
    return launch(plan, 2, root / "world2-bag"), root / "ckpt-bag"


def test_bag_parity_world2(world2_bag):
    assert all(results_of(world2_bag[0], "scenario_bag_parity"))


def test_bag_bad_index_and_offsets_raise_on_every_rank(world2_bag):
    assert all(results_of(world2_bag[0], "scenario_bag_errors"))


def test_bag_checkpoint_round_trip_and_into_one_process(world2_bag):
    """The world-2 bag checkpoint also loads into a single-process sparsemb.EmbeddingBag."""
    import torch.distributed.checkpoint as dcp

    saved = results_of(world2_bag[0], "scenario_bag_checkpoint")
    assert _same(saved[0], saved[1])
    single = _Holder(sparsemb.EmbeddingBag(CKPT_ROWS, CKPT_DIM, mode="sum", sparse=True))
    opt = SparseAdam(single.parameters(), lr=CKPT_LR)
    state = sharded_state_dict(single, opt)
    dcp.load(state, checkpoint_id=str(world2_bag[1]))
    load_sharded_state_dict(single, opt, state)
    _assert_states_equal(_full_state(single, opt), saved[0])
