"""One full training step (forward, backward, optimizer) of an embedding table on this CPU.

    sparsemb.Embedding(sparse=True) + sparsemb.optim.SparseAdam        ("sparsemb")
    nn.Embedding + torch.optim.Adam (dense gradient, dense moments)    ("torch_adam")
    nn.Embedding(sparse=True) + torch.optim.SparseAdam                 ("torch_sparse_adam")

V=1,000,000, D=128, N=65,536 Zipf(1.2) indices over a shuffled vocabulary (seed 0), float32; the
step is zero_grad, out = table(idx), out.backward(upstream) with a fixed normal (N, D) upstream
gradient (as bench/fwd_bwd_cpu.py does, so no loss computation is timed), optimizer.step().
Each configuration runs in its own subprocess, so its peak memory is its own: "extra peak RSS" is
ru_maxrss at the end minus the resident set just before the first step (table and indices
already built), i.e. what training adds (gradient, optimizer state, temporaries).
"state" counts the optimizer state tensors exactly (tensor accounting).

Run: python bench/optim_step_cpu.py [--repeat 20] [--threads N] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

CONFIGS = ("sparsemb", "torch_adam", "torch_sparse_adam")


def zipf_indices(num_embeddings: int, n: int, a: float, seed: int) -> torch.Tensor:
    """Zipf(a) ranks truncated to the vocabulary (P(r) ~ r**-a), mapped through a shuffle."""
    gen = torch.Generator().manual_seed(seed)
    cdf = torch.cumsum(torch.arange(1, num_embeddings + 1, dtype=torch.float64).pow_(-a), 0)
    u = torch.rand(n, dtype=torch.float64, generator=gen) * cdf[-1]
    rank = torch.searchsorted(cdf, u).clamp_(max=num_embeddings - 1)
    return torch.randperm(num_embeddings, generator=gen)[rank]


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build(config: str, vocab: int, dim: int):
    import sparsemb
    import sparsemb.optim

    weight = torch.randn(vocab, dim, generator=torch.Generator().manual_seed(1))
    if config == "sparsemb":
        table = sparsemb.Embedding(vocab, dim, sparse=True, _weight=weight)
        opt = sparsemb.optim.SparseAdam(table.parameters(), lr=1e-3)
    elif config == "torch_adam":
        table = torch.nn.Embedding(vocab, dim, _weight=weight)
        opt = torch.optim.Adam(table.parameters(), lr=1e-3)
    elif config == "torch_sparse_adam":
        table = torch.nn.Embedding(vocab, dim, sparse=True, _weight=weight)
        opt = torch.optim.SparseAdam(table.parameters(), lr=1e-3)
    else:
        raise ValueError(config)
    return table, opt


def run_one(args) -> dict:
    idx = zipf_indices(args.vocab, args.batch, 1.2, seed=0)
    upstream = torch.randn(args.batch, args.dim, generator=torch.Generator().manual_seed(2))
    table, opt = build(args.config, args.vocab, args.dim)
    baseline = current_rss()

    def step() -> tuple[float, float]:
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        table(idx).backward(upstream)
        middle = time.perf_counter()
        opt.step()
        end = time.perf_counter()
        return middle - start, end - middle

    for _ in range(args.warmup):
        step()
    times = [step() for _ in range(args.repeat)]
    total = [a + b for a, b in times]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    state_bytes = sum(
        v.numel() * v.element_size()
        for s in opt.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor)
    )
    result = {
        "config": args.config,
        "median_step_ms": statistics.median(total) * 1e3,
        "p20_ms": sorted(total)[len(total) // 5] * 1e3,
        "p80_ms": sorted(total)[(4 * len(total)) // 5] * 1e3,
        "median_fwd_bwd_ms": statistics.median(a for a, _ in times) * 1e3,
        "median_opt_step_ms": statistics.median(b for _, b in times) * 1e3,
        "extra_peak_rss_mb": (peak - baseline) / 2**20,
        "peak_rss_mb": peak / 2**20,
        "baseline_rss_mb": baseline / 2**20,
        "state_mb": state_bytes / 2**20,
        "unique_rows": int(idx.unique().numel()),
    }
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step()
        result["profile"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=CONFIGS, help="run one configuration (subprocess)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=65_536)
    parser.add_argument("--profile", action="store_true", help="torch.profiler table per config")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.config:
        print(json.dumps(run_one(args)))
        return
    print(f"V={args.vocab} D={args.dim} N={args.batch} Zipf(1.2) seed 0, float32, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"SPARSEMB_BACKEND={os.environ.get('SPARSEMB_BACKEND', 'auto')}")  # fmt: skip
    results = []
    for config in CONFIGS:
        keys = ("repeat", "warmup", "vocab", "dim", "batch", "threads")
        cmd = [sys.executable, __file__, "--config", config]
        cmd += [f"--{k}={getattr(args, k)}" for k in keys] + ["--profile"] * args.profile
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    ours = results[0]["median_step_ms"]
    print(f"unique rows in the batch: {results[0]['unique_rows']}\n")
    print("| configuration | median step (ms) | p20-p80 (ms) | fwd+bwd (ms) | optimizer (ms) "
          "| vs sparsemb | extra peak RSS (MiB) | optimizer state (MiB) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['config']} | {r['median_step_ms']:.1f} | {r['p20_ms']:.1f}-{r['p80_ms']:.1f} "
            f"| {r['median_fwd_bwd_ms']:.1f} | {r['median_opt_step_ms']:.1f} "
            f"| {r['median_step_ms'] / ours:.2f}x | {r['extra_peak_rss_mb']:.0f} "
            f"| {r['state_mb']:.0f} |"
        )
    if args.profile:
        for r in results:
            print(f"\n### profile: {r['config']}\n```\n{r['profile']}\n```")


if __name__ == "__main__":
    main()
