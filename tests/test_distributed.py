"""sparsemb.distributed.ShardedEmbedding in real multi-process runs (gloo on 127.0.0.1).

Each test launches world-size processes (``forkserver``, torch imported once), runs one
scenario function below on every rank, and fails with every rank's traceback. Everything has a
timeout: the process group's (collectives), and the launcher's (a hung rank is killed and the
test fails). The oracle is one unsharded ``sparsemb.Embedding`` trained on the concatenated
global batch with the ranks' losses summed (or averaged, with ``grad_reduction="mean"``).
"""

from __future__ import annotations

import datetime
import os
import socket
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sparsemb
from sparsemb.optim import SparseAdam, SparseAware, SparseSGD

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)

PG_TIMEOUT_S = 30  # a collective that waits longer raises on the waiting ranks
LAUNCH_TIMEOUT_S = 120  # the whole run; past it every rank is killed and the test fails


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, scenario, out_dir, kwargs):
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
            timeout=datetime.timedelta(seconds=PG_TIMEOUT_S),
        )
        result = globals()[scenario](rank, world, **kwargs)
        torch.save({"ok": True, "result": result}, os.path.join(out_dir, f"rank{rank}.pt"))
    except BaseException:
        torch.save({"ok": False, "error": traceback.format_exc()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(scenario, world, tmp_path, expect_exit=None, **kwargs):
    """Run ``scenario(rank, world, **kwargs)`` on ``world`` processes; return each rank's result.
    ``expect_exit``: {rank: exit code} for ranks that are meant to die."""
    expect_exit = expect_exit or {}
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "sparsemb", "sparsemb.distributed"])
    out_dir = tmp_path / f"{scenario}-{world}"
    out_dir.mkdir()
    port = _free_port()
    procs = [
        ctx.Process(target=_rank_main, args=(r, world, port, scenario, str(out_dir), kwargs))
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
    assert not hung, f"ranks {hung} of {scenario} did not finish in {LAUNCH_TIMEOUT_S} s"
    results, errors = [], []
    for r, p in enumerate(procs):
        if r in expect_exit:
            assert p.exitcode == expect_exit[r], f"rank {r} exited with {p.exitcode}"
            results.append(None)
            continue
        path = out_dir / f"rank{r}.pt"
        if not path.exists():
            errors.append(f"rank {r}: exit code {p.exitcode}, no result")
            continue
        record = torch.load(path, weights_only=False)
        if not record["ok"]:
            errors.append(f"rank {r}:\n{record['error']}")
        results.append(record.get("result"))
    assert not errors, "\n".join(errors)
    return results


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


def scenario_adam_ddp_max_norm(rank, world):
    """Adam through SparseAware (fused backward on the sharded side), the dense layer under
    DDP, max_norm on the owner, averaged losses: equals the unsharded model on the global
    batch within float tolerance."""
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
    opt = SparseAware(model, sparse="adam", dense=torch.optim.SGD, lr=0.05, fused_backward=True)
    ref_opt = SparseAware(ref, sparse="adam", dense=torch.optim.SGD, lr=0.05)
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
    return True


def test_parity_sgd_world2(tmp_path):
    launch("scenario_parity_sgd", 2, tmp_path)


def test_parity_sgd_world4(tmp_path):
    launch("scenario_parity_sgd", 4, tmp_path)


def test_adam_ddp_max_norm_world2(tmp_path):
    launch("scenario_adam_ddp_max_norm", 2, tmp_path)


def test_bad_index_raises_on_every_rank(tmp_path):
    launch("scenario_bad_index", 2, tmp_path)
