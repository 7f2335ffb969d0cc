"""Forward + backward time of one lookup: sparsemb vs torch.nn.Embedding (dense and sparse).

V=1,000,000, D=128, N=65,536 Zipf(1.2) indices over a shuffled vocabulary, float32, this CPU.
Run: python bench/fwd_bwd_cpu.py [--repeat 20]
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


def time_fwd_bwd(table, idx, grad, repeat):
    times = []
    for _ in range(repeat + 2):
        table.weight.grad = None
        start = time.perf_counter()
        table(idx).backward(grad)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def time_forward(table, idx, repeat):
    times = []
    with torch.no_grad():
        for _ in range(repeat + 2):
            start = time.perf_counter()
            table(idx)
            times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


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
    systems = {
        "sparsemb.Embedding(sparse=True)": sparsemb.Embedding(
            args.vocab, args.dim, _weight=weight.clone(), sparse=True),
        "nn.Embedding(sparse=False)": torch.nn.Embedding(
            args.vocab, args.dim, _weight=weight.clone()),
        "nn.Embedding(sparse=True)": torch.nn.Embedding(
            args.vocab, args.dim, _weight=weight.clone(), sparse=True),
    }  # fmt: skip
    print(f"V={args.vocab} D={args.dim} N={args.batch} unique={idx.unique().numel()} "
          f"torch={torch.__version__} threads={torch.get_num_threads()}")  # fmt: skip
    ours = None
    for name, table in systems.items():
        t = time_fwd_bwd(table, idx, grad, args.repeat)
        ours = ours or t
        print(f"{name:34s} {t * 1e3:8.2f} ms   ratio to sparsemb: {t / ours:5.2f}x")
    print("forward only (no grad):")
    forwards = {
        "sparsemb bounds_check='raise'": sparsemb.Embedding(
            args.vocab, args.dim, _weight=weight.clone()),
        "sparsemb bounds_check='none'": sparsemb.Embedding(
            args.vocab, args.dim, _weight=weight.clone(), bounds_check="none"),
        "sparsemb max_norm=1.0": sparsemb.Embedding(
            args.vocab, args.dim, _weight=weight.clone(), max_norm=1.0),
        "nn.Embedding": torch.nn.Embedding(args.vocab, args.dim, _weight=weight.clone()),
        "nn.Embedding max_norm=1.0": torch.nn.Embedding(
            args.vocab, args.dim, _weight=weight.clone(), max_norm=1.0),
    }  # fmt: skip
    base = None
    for name, table in forwards.items():
        t = time_forward(table, idx, args.repeat)
        base = base or t
        print(f"{name:34s} {t * 1e3:8.2f} ms   ratio to the first row: {t / base:5.2f}x")


if __name__ == "__main__":
    main()
