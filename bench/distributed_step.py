"""Time a sharded training step and count the bytes it exchanges, per world size.

One step: ``ShardedEmbedding`` forward on N indices per rank, a loss, backward (gradient rows
to their owners), and the sparse optimizer step on each shard. Reported per world size: the
median step time (the slowest rank's, per step), and the bytes each rank sends to *other*
ranks per step (counts + indices + rows forward + gradient rows backward; the part of an
all-to-all a rank sends to itself is a local copy and not counted). World size 1 is the same
module on one rank (no traffic), next to a plain ``sparsemb.Embedding`` step.

CPU, gloo, processes on one machine (from the repository root):

    python -m bench.distributed_step --world-sizes 1 2 4 --out bench/results/distributed-cpu

GPUs, NCCL, one process per GPU (the same code under torchrun; N per rank as in the README):

    torchrun --nproc-per-node 8 -m bench.distributed_step --rows 100000000 --per-rank 65536
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sparsemb
from bench.harness.workloads import ZIPF_A, zipf_indices
from sparsemb.distributed import ShardedEmbedding
from sparsemb.optim import SPARSE_RULES


def _batch(args, rank: int, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * rank + step)
    if args.dist == "zipf":
        return zipf_indices(args.rows, args.per_rank, ZIPF_A, g)
    return torch.randint(0, args.rows, (args.per_rank,), generator=g)


def _bytes_sent(table: ShardedEmbedding, idx: torch.Tensor, dim: int, elt: int) -> dict:
    """What this rank sends to other ranks in one step, from the lookup's own bucketing."""
    world, rank = table.world_size, table.rank
    unique = torch.unique(idx)
    owner, _ = table.layout.owner_and_local(unique)
    asks = torch.bincount(owner, minlength=world)  # rows this rank asks each owner for
    asked = torch.empty_like(asks)  # rows each rank asks this rank for
    dist.all_to_all_single(asked, asks, group=table.group)
    off_asks, off_asked = int(asks.sum() - asks[rank]), int(asked.sum() - asked[rank])
    counts = 2 * 8 * (world - 1)  # (count, flag) int64 pairs
    return {
        "counts": counts,
        "indices": 8 * off_asks,
        "rows_forward": off_asked * dim * elt,  # as owner: the rows others asked for
        "grads_backward": off_asks * dim * elt,  # the gradient rows of what this rank asked
        "unique_per_rank": int(unique.numel()),
    }


def _step_fn(table, opt, idx):
    def step():
        opt.zero_grad()
        table(idx).square().mean().backward()
        opt.step()
    return step


def run_rank(args) -> dict | None:
    """The measurement on one rank of an initialized group; rank 0 returns the summary."""
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if args.cuda else "cpu"
    torch.manual_seed(rank)
    table = ShardedEmbedding(args.rows, args.dim, sparse=True, device=device)
    opt = SPARSE_RULES[args.optim](table.parameters(), lr=0.01)
    idx = _batch(args, rank, 0).to(device)
    step = _step_fn(table, opt, idx)
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        dist.barrier()
        if args.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if args.cuda:
            torch.cuda.synchronize()
        elapsed = torch.tensor([time.perf_counter() - start], device=device)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the step ends when the slowest does
        times.append(float(elapsed))
    sent = _bytes_sent(table, idx, args.dim, table.weight.element_size())
    totals = torch.tensor([sum(v for k, v in sent.items() if k != "unique_per_rank")],
                          dtype=torch.float64, device=device)
    dist.all_reduce(totals, op=dist.ReduceOp.MAX)
    if rank != 0:
        return None
    result = {
        "world_size": world, "backend": dist.get_backend(), "median_ms": 1e3 *
        statistics.median(times), "min_ms": 1e3 * min(times),
        "bytes_sent_rank0": sent, "max_bytes_sent_per_rank": int(totals),
        "local_rows": table.weight.shape[0],
    }
    if world == 1:  # the same step on a plain, unsharded sparsemb.Embedding
        plain = sparsemb.Embedding(args.rows, args.dim, sparse=True, device=device)
        popt = SPARSE_RULES[args.optim](plain.parameters(), lr=0.01)
        pstep = _step_fn(plain, popt, idx)
        for _ in range(args.warmup):
            pstep()
        ptimes = []
        for _ in range(args.steps):
            start = time.perf_counter()
            pstep()
            ptimes.append(time.perf_counter() - start)
        result["plain_embedding_median_ms"] = 1e3 * statistics.median(ptimes)
    return result


def _spawned(rank, world, port, args, out_file):
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=300))
    try:
        result = run_rank(args)
        if result is not None:
            Path(out_file).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--per-rank", type=int, default=16_384, help="indices per rank and step")
    parser.add_argument("--dist", choices=("zipf", "uniform"), default="zipf")
    parser.add_argument("--optim", choices=sorted(SPARSE_RULES), default="adam")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json")
    args = parser.parse_args()

    if "RANK" in os.environ:  # under torchrun: this process is one rank
        args.cuda = torch.cuda.is_available()
        if args.cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if args.cuda else "gloo")
        result = run_rank(args)
        dist.destroy_process_group()
        if result is not None:
            print(_line(result))
            _report([result], args)
        return

    args.cuda = False
    results = []
    for world in args.world_sizes:
        with tempfile.TemporaryDirectory() as tmp:
            out_file = os.path.join(tmp, "result.json")
            mp.spawn(_spawned, args=(world, _free_port(), args, out_file), nprocs=world)
            results.append(json.loads(Path(out_file).read_text()))
        print(_line(results[-1]), flush=True)
    _report(results, args)


def _line(r: dict) -> str:
    mib = r["max_bytes_sent_per_rank"] / 2**20
    extra = (f", plain sparsemb.Embedding {r['plain_embedding_median_ms']:.1f} ms"
             if "plain_embedding_median_ms" in r else "")
    return (f"world {r['world_size']} ({r['backend']}): {r['median_ms']:.1f} ms/step, "
            f"{mib:.2f} MiB sent to other ranks per rank and step{extra}")


def _report(results: list[dict], args) -> None:
    record = {
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "date": datetime.date.today().isoformat(), "results": results,
    }
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
