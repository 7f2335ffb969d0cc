"""The gradient reduce's window sum on the GPU, both ways, in one process: "scan" (each window
adds its rows in sorted order, ``kernels.grad._window_kernel``) against "tree" (a masked
(CHUNK, CHUNK, BLOCK_D) ``tl.sum``, ``_window_tree_kernel``), and torch's ``coalesce()`` of the
same sparse gradient (what ``torch.optim.SparseAdam`` runs) for scale.

Times ``dedup_grad_padded`` (the fused step's reduce: no host read) with CUDA events after the
sort, which both share; checks that both ways give the same rows and values (integer-valued
gradients: every sum is exact, so the values must be equal bit for bit).

    python scripts/gpu_reduce_ab.py --out DIR/reduce_ab.md      # on a CUDA machine
    TRITON_INTERPRET=1 python scripts/gpu_reduce_ab.py --smoke --out /tmp/ab.md  # CPU dry run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sparsemb.kernels import grad as kernels  # noqa: E402

CASES = [  # (V, D, N, distribution)
    (1_000_000, 128, 65_536, "zipf"),
    (1_000_000, 128, 65_536, "uniform"),
    (100_000, 16, 65_536, "zipf"),
    (1_000_000, 64, 262_144, "zipf"),
    (1_000_000, 512, 16_384, "zipf"),
]


def indices(v, n, dist, device):
    g = torch.Generator().manual_seed(0)
    if dist == "uniform":
        return torch.randint(0, v, (n,), generator=g).to(device)
    probs = 1.0 / torch.arange(1, v + 1, dtype=torch.float64) ** 1.2
    return torch.multinomial(probs, n, replacement=True, generator=g).to(device)


def timed(fn, reps):
    if not torch.cuda.is_available():  # --smoke on CPU: one call, no timing
        fn()
        return float("nan")
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps * 1e3  # us


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny cases on CPU (interpreter)")
    args = parser.parse_args()
    device = torch.device("cpu" if args.smoke else "cuda")
    cases = [(300, 8, 200, "zipf"), (300, 40, 200, "uniform")] if args.smoke else CASES
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    lines = [
        "# Gradient reduce: scan vs tree window sum",
        "",
        f"device: {name}; torch {torch.__version__}; "
        "times: dedup_grad_padded after the shared sort (us, CUDA events, mean of 20); "
        "GB/s: gradient read + values written, over the scan time",
        "",
        "| V | D | N | indices | unique | tree us | scan us | tree/scan | scan GB/s | "
        "torch coalesce us | same result |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v, d, n, dist in cases:
        idx = indices(v, n, dist, device)
        g = torch.Generator(device=device).manual_seed(1)
        grad = torch.randint(-8, 8, (n, d), generator=g, device=device).float()
        presorted = kernels.sort_keys(idx, v)
        unique = int(torch.unique(idx).numel())
        results, times = {}, {}
        for mode in ("tree", "scan"):
            kernels.WINDOW_SUM = mode

            def run(grad=grad, idx=idx, v=v, presorted=presorted):
                return kernels.dedup_grad_padded(grad, idx, v, -1, False, presorted=presorted)

            results[mode] = run()
            times[mode] = timed(run, 20)
        kernels.WINDOW_SUM = "scan"
        (rows_t, values_t), (rows_s, values_s) = results["tree"], results["scan"]
        used = rows_s < v  # the unused slots (row V) hold no values
        same = torch.equal(rows_t, rows_s) and torch.equal(values_t[used], values_s[used])
        coo = torch.sparse_coo_tensor(idx[None], grad, (v, d), check_invariants=False)
        coalesce_us = timed(coo.coalesce, 5)
        gbps = (n + unique) * d * 4 / (times["scan"] * 1e-6) / 1e9
        lines.append(
            f"| {v:,} | {d} | {n:,} | {dist} | {unique:,} | {times['tree']:.1f} | "
            f"{times['scan']:.1f} | {times['tree'] / times['scan']:.2f}x | {gbps:.0f} | "
            f"{coalesce_us:.1f} | {'yes' if same else 'NO'} |"
        )
        print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
