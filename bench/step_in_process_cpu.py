"""Time the report's Adam training-step providers in this process, back to back.

Used to check the report's figures outside its subprocess harness (no memory measurement, no
``malloc_trim`` between providers), and to show the effect of glibc's malloc thresholds on CPU
step time (see bench/results/cpu-2026-11-25/ANALYSIS.md). From the repository root:

    python -m bench.step_in_process_cpu
    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 \\
        python -m bench.step_in_process_cpu
"""

import statistics
import time

from bench.harness.providers import GROUPS, STEP_ADAM, Unavailable
from bench.harness.workloads import grid, make_inputs


def main(steps: int = 8, warmup: int = 3) -> None:
    workload = grid("quick")[0]  # V=1e6, D=128, N=65,536 Zipf, float32
    inputs = make_inputs(workload)
    for provider in GROUPS[STEP_ADAM].providers:
        if "dense" in provider.name:
            continue  # seconds per step: not what this script is for
        try:
            case = provider.build(inputs)
        except Unavailable as exc:
            print(f"{provider.name:40s} skipped: {exc}")
            continue
        for _ in range(warmup):
            case.step()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            case.step()
            times.append(time.perf_counter() - start)
        print(f"{provider.name:40s} {statistics.median(times) * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
