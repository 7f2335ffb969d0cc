"""Forward + backward time of one lookup: sparsemb vs torch.nn.Embedding (dense and sparse).

V=1,000,000, D=128, N=65,536 Zipf(1.2) indices over a shuffled vocabulary, float32, this CPU.
The systems are timed round-robin (one call each per round, median over rounds), so no system
is favoured by running first or last. Run: python bench/fwd_bwd_cpu.py [--repeat 20]
"""

import argparse
import statistics
import time

import numpy as np
import torch

import sparsemb


def zipf_indices(num_embeddings, n, a=1.2, seed=0):
    rng = np.random.default_rng(seed)
    ranks = rng.zipf(a, size=4 * n)
    ranks = ranks[ranks <= num_embeddings][:n] - 1
    shuffle = rng.permutation(num_embeddings)
    return torch.from_numpy(shuffle[ranks]).to(torch.int64)


def round_robin(calls, repeat, warmup=2):
    """Median seconds per call of each named callable, timed one call each per round."""
    times = {name: [] for name in calls}
    for round_index in range(warmup + repeat):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def fwd_bwd(table, idx, grad):
    def call():
        table.weight.grad = None
        table(idx).backward(grad)

    return call


def forward(table, idx):
    def call():
        with torch.no_grad():
            table(idx)

    return call


def report(title, medians):
    print(title)
    first = next(iter(medians.values()))
    for name, t in medians.items():
        print(f"  {name:34s} {t * 1e3:8.2f} ms   ratio to the first row: {t / first:5.2f}x")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--vocab", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=65_536)
    args = parser.parse_args()
    torch.manual_seed(0)
    idx = zipf_indices(args.vocab, args.batch)
    grad = torch.randn(args.batch, args.dim)
    weight = torch.randn(args.vocab, args.dim)
    v, d = args.vocab, args.dim
    print(f"V={v} D={d} N={args.batch} unique={idx.unique().numel()} "
          f"torch={torch.__version__} threads={torch.get_num_threads()}")  # fmt: skip
    report("forward + backward:", round_robin({
        "sparsemb.Embedding(sparse=True)": fwd_bwd(
            sparsemb.Embedding(v, d, _weight=weight.clone(), sparse=True), idx, grad),
        "nn.Embedding(sparse=False)": fwd_bwd(
            torch.nn.Embedding(v, d, _weight=weight.clone()), idx, grad),
        "nn.Embedding(sparse=True)": fwd_bwd(
            torch.nn.Embedding(v, d, _weight=weight.clone(), sparse=True), idx, grad),
    }, args.repeat))  # fmt: skip
    shared = weight.clone()  # max_norm tables renormalize their rows: give them their own copy
    report("forward only (no grad):", round_robin({
        "sparsemb bounds_check='raise'": forward(sparsemb.Embedding(v, d, _weight=shared), idx),
        "sparsemb bounds_check='none'": forward(
            sparsemb.Embedding(v, d, _weight=shared, bounds_check="none"), idx),
        "nn.Embedding": forward(torch.nn.Embedding(v, d, _weight=shared), idx),
        "sparsemb max_norm=1.0": forward(
            sparsemb.Embedding(v, d, _weight=weight.clone(), max_norm=1.0), idx),
        "nn.Embedding max_norm=1.0": forward(
            torch.nn.Embedding(v, d, _weight=weight.clone(), max_norm=1.0), idx),
    }, args.repeat))  # fmt: skip


if __name__ == "__main__":
    main()
