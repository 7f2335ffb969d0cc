"""pytest-benchmark suites of sparsemb and its peers: ``pytest bench/ --benchmark-only``.

Each benchmark group is one workload of one kind of work (``forward``, ``fwd_bwd_sparse``,
``step_adam``, ...) and holds every provider of that work on identical inputs: sparsemb (ours),
``torch.nn.Embedding`` with torch's optimizers, ``torch.compile`` of it, FBGEMM's TBE. The
workloads and providers are ``bench.harness``, shared with the report (``python -m bench.harness``).

Knobs (option or environment variable):
  --bench-grid / SPARSEMB_BENCH_GRID   smoke | default | full. default: on CPU the report's quick
                                       sizes (V = 1e5, 1e6; D = 128; N = 65,536; Zipf; float32);
                                       on CUDA V = 1e6 and 1e7 in float32 and V = 1e6 in bfloat16.
                                       full: D in {64,128,256} x V in {1e5,1e6,1e7} x Zipf/uniform
                                       x float32/bfloat16 (what does not fit in memory is skipped).
  SPARSEMB_BENCH_SMOKE=1               same as --bench-grid smoke (tiny sizes, for CI).
  --bench-device / SPARSEMB_BENCH_DEVICE  cpu | cuda (default: cuda when present).
  --bench-compile / SPARSEMB_BENCH_COMPILE=1  torch.compile peers on CPU (on CUDA they always
                                       run; on CPU each compile costs seconds, so off by default).
  --bench-out DIR                      folder of the summary JSON (default bench/out/, ignored by
                                       git): DIR/pytest-<device>-<date>.json, one row per benchmark
                                       (median, extra_info). SPARSEMB_BENCH_JSON=0: no summary.
  --benchmark-json PATH                pytest-benchmark's own JSON (every timing), ratios included;
                                       to record a run: --benchmark-json
                                       bench/results/pytest-<device>-<date>.json.

Every benchmark's extra_info carries the workload, unique rows, peak memory (see
``PeakMemory``) and bytes per step; the summary and pytest-benchmark's JSON (through its public
``pytest_benchmark_update_json`` hook) add GB/s (gathers, optimizer steps), ``ratio_vs_ours``
(this provider's median / sparsemb's, > 1: sparsemb is faster) and on sparsemb's row
``peer_ratios``. Nothing here touches pytest-benchmark's private session object.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from pathlib import Path

import pytest
import torch

from bench.harness import measure
from bench.harness import workloads as wl
from bench.harness.providers import GROUPS, Unavailable

GRIDS = ("smoke", "default", "full")
TIMED = pytest.StashKey[list]()  # (extra_info, median seconds) of each timed benchmark
SUMMARY_PATH = pytest.StashKey[Path]()  # where the summary JSON went


def pytest_addoption(parser):
    group = parser.getgroup("sparsemb-bench")
    group.addoption("--bench-grid", choices=GRIDS, default=None, help="workload grid")
    group.addoption("--bench-device", choices=("cpu", "cuda"), default=None)
    group.addoption(
        "--bench-compile", action="store_true", default=False, help="torch.compile peers on CPU"
    )
    group.addoption("--bench-out", type=Path, default=None,
                    help="folder of the summary JSON (default: bench/out/)")


def bench_grid(config) -> str:
    grid = config.getoption("--bench-grid") or os.environ.get("SPARSEMB_BENCH_GRID")
    if os.environ.get("SPARSEMB_BENCH_SMOKE", "0") not in ("", "0"):
        grid = "smoke"
    grid = grid or "default"
    if grid not in GRIDS:
        raise pytest.UsageError(f"SPARSEMB_BENCH_GRID must be one of {GRIDS}, got {grid!r}")
    return grid


def bench_device(config) -> torch.device:
    name = config.getoption("--bench-device") or os.environ.get("SPARSEMB_BENCH_DEVICE")
    name = name or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--bench-device cuda: torch sees no CUDA device")
    return torch.device(name)


def compile_enabled(config) -> bool:
    if bench_device(config).type == "cuda":
        return True
    env = os.environ.get("SPARSEMB_BENCH_COMPILE", "0") not in ("", "0")
    return bool(config.getoption("--bench-compile") or env)


def workloads(config) -> list[wl.Workload]:
    grid = bench_grid(config)
    if grid == "smoke":
        return [wl.Workload(1000, 16, 256, "zipf", dt) for dt in ("float32", "bfloat16")]
    if grid == "full":
        return wl.grid("full")
    if bench_device(config).type == "cuda":
        return [
            wl.Workload(10**6, 128),
            wl.Workload(10**7, 128),
            wl.Workload(10**6, 128, dtype="bfloat16"),
        ]
    return [wl.Workload(v, 128) for v in (10**5, 10**6)]


def pytest_configure(config):
    config.stash[TIMED] = []


def pytest_report_header(config):
    device = bench_device(config)
    line = (
        f"sparsemb bench: grid={bench_grid(config)} device={device.type} "
        f"torch.compile peers={'on' if compile_enabled(config) else 'off'}"
    )
    if device.type == "cpu":
        line += f" threads={torch.get_num_threads()}"
        line += f" OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
        if load > 0.5 * (os.cpu_count() or 1) and "OMP_WAIT_POLICY" not in os.environ:
            line += (
                f"\nWARNING: load average {load:.1f} on {os.cpu_count()} CPUs: OpenMP regions "
                "stall behind other processes; set OMP_WAIT_POLICY=PASSIVE for steadier numbers"
            )
    return line


# ----- parametrization: each test module lists its groups in GROUPS ----------------------------


def pytest_generate_tests(metafunc):
    if "bench_case" not in metafunc.fixturenames:
        return
    groups = metafunc.module.GROUPS
    params, ids = [], []
    for w in workloads(metafunc.config):
        for g in groups:
            for p in GROUPS[g].providers:
                params.append((w, g, p.name))
                ids.append(f"{g}|{w.slug()}|{p.name}")
    metafunc.parametrize("bench_case", params, ids=ids)


class _InputsCache:
    """The inputs of the last workload used (one at a time: tables can be gigabytes)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.workload: wl.Workload | None = None
        self.inputs: wl.Inputs | None = None

    def get(self, workload: wl.Workload) -> wl.Inputs:
        if workload != self.workload:
            self.inputs = None
            self.inputs = wl.make_inputs(workload, self.device)
            self.workload = workload
        return self.inputs


@pytest.fixture(scope="session")
def bench_env(request):
    return BenchEnv(request.config)


class BenchEnv:
    """Builds and times one provider through pytest-benchmark's ``pedantic``."""

    def __init__(self, config):
        self.config = config
        self.device = bench_device(config)
        self.compile = compile_enabled(config)
        self.smoke = bench_grid(config) == "smoke"
        self.cache = _InputsCache(self.device)

    def run(self, benchmark, bench_case) -> None:
        workload, group_name, provider_name = bench_case
        group = GROUPS[group_name]
        provider = group.provider(provider_name)
        if provider.needs_compile and not self.compile:
            pytest.skip("torch.compile peers are off on CPU (--bench-compile to include them)")
        reason = measure.memory_check(provider, workload, self.device)
        if reason:
            pytest.skip(reason)
        inputs = self.cache.get(workload)
        benchmark.group = f"{group_name} | {workload.label()} | {self.device.type}"
        mem = measure.PeakMemory(self.device)
        with mem:
            try:
                case = provider.build(inputs)
            except Unavailable as exc:
                pytest.skip(str(exc))
            run = measure.timed(case.step, self.device)
            rounds, warmup, iterations = self._rounds(run)
            benchmark.pedantic(run, rounds=rounds, warmup_rounds=warmup, iterations=iterations)
            weights_b, state_b = case.resident_bytes()
            state_row = case.state_row_bytes(workload.num_embeddings)
        if group.kind == "forward":
            nbytes = measure.gather_bytes(workload, inputs.unique_rows, "max_norm" in group_name)
        elif group.kind == "optim":
            nbytes = measure.optimizer_bytes(workload, inputs.unique_rows, state_row)
        else:
            nbytes = None
        benchmark.extra_info.update(
            {
                "group": group_name,
                "provider": provider_name,
                "system": provider.system,
                "ours": provider.ours,
                "device": self.device.type,
                "workload": workload.as_dict(),
                "unique_rows": inputs.unique_rows,
                "bytes_per_step": nbytes,
                "memory_method": mem.method,
                "peak_bytes": mem.peak_bytes,
                "weights_bytes": weights_b,
                "state_bytes": state_b,
                "scratch_bytes": None
                if mem.peak_bytes is None
                else mem.peak_bytes - weights_b - state_b,
            }
        )
        stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
        if stats is not None:
            self.config.stash[TIMED].append((benchmark.extra_info, stats.stats.median))

    def _rounds(self, run) -> tuple[int, int, int]:
        """(rounds, warmup rounds, iterations per round): two probe steps, then about 2 s (CPU)
        or 0.3 s (CUDA) of rounds, 3 to 20; on CUDA each round repeats the step (each with its
        synchronize) for about 5 ms, so short kernels are not timed against the timer."""
        if self.smoke:
            return 1, 0, 1
        run()  # first call: lazy state, compilation, allocator warm-up
        t1 = time.perf_counter()
        run()
        probe = max(time.perf_counter() - t1, 1e-7)
        iterations = 1
        if self.device.type == "cuda":
            iterations = max(1, min(200, int(0.005 / probe)))
        budget = 2.0 if self.device.type == "cpu" else 0.3
        rounds = max(3, min(20, int(budget / (probe * iterations))))
        return rounds, (0 if probe > 0.5 else 2), iterations


# ----- GB/s and peer ratios: the summary JSON, pytest-benchmark's JSON, the terminal ----------


def derived(entries: list[tuple[dict, float]]) -> list[dict]:
    """For each (extra_info, median s): GB/s, this provider's median over ours, and on ours
    ``peer_ratios`` ({peer: ratio}), within each (group, device, workload)."""
    ours = {_key(info): median for info, median in entries if info.get("ours")}
    out = [{} for _ in entries]
    by_key = {}
    for (info, median), extra in zip(entries, out, strict=True):
        if info.get("bytes_per_step"):
            extra["gbps"] = info["bytes_per_step"] / median / 1e9
        if _key(info) in ours:
            extra["ratio_vs_ours"] = median / ours[_key(info)]
        if info.get("ours"):
            by_key[_key(info)] = extra
    for (info, _), extra in zip(entries, out, strict=True):
        hit = by_key.get(_key(info))
        if hit is not None and not info.get("ours") and "ratio_vs_ours" in extra:
            hit.setdefault("peer_ratios", {})[info["provider"]] = extra["ratio_vs_ours"]
    return out


def _key(info: dict) -> tuple:
    w = info.get("workload", {})
    return (info.get("group"), info.get("device"), tuple(sorted(w.items())))


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config, benchmarks, output_json):
    """pytest-benchmark's public hook: the same GB/s and ratios into its JSON's extra_info."""
    rows = [b for b in output_json.get("benchmarks", []) if "group" in b.get("extra_info", {})]
    entries = [(b["extra_info"], b["stats"]["median"]) for b in rows]
    for b, extra in zip(rows, derived(entries), strict=True):
        b["extra_info"] = {**b["extra_info"], **extra}


def pytest_sessionfinish(session, exitstatus):
    """The summary JSON, into --bench-out (bench/out/ by default: git-ignored)."""
    config = session.config
    entries = config.stash.get(TIMED, [])
    if not entries or os.environ.get("SPARSEMB_BENCH_JSON", "1") in ("", "0"):
        return
    folder = config.getoption("--bench-out") or Path(config.rootpath) / "bench" / "out"
    folder.mkdir(parents=True, exist_ok=True)
    device = bench_device(config).type
    rows = [
        {**info, "median_s": median, **extra}
        for (info, median), extra in zip(entries, derived(entries), strict=True)
    ]
    payload = {"device": device, "grid": bench_grid(config),
               "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "torch": torch.__version__, "benchmarks": rows}
    path = folder / f"pytest-{device}-{_dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(payload, indent=1, default=str))
    config.stash[SUMMARY_PATH] = path


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    entries = config.stash.get(TIMED, [])
    rows = [(info, extra) for (info, _), extra in zip(entries, derived(entries), strict=True)]
    ours = [(info, extra) for info, extra in rows if info.get("ours") and extra.get("peer_ratios")]
    tr = terminalreporter
    if ours:
        tr.write_sep("-", "sparsemb speedup over each peer (peer median / sparsemb median)")
    for info, extra in ours:
        w = wl.Workload(**info["workload"])
        ratios = ", ".join(f"{k}: {v:.2f}x" for k, v in extra["peer_ratios"].items())
        tr.write_line(f"{info['group']} | {w.label()}: {ratios}")
    if SUMMARY_PATH in config.stash:
        tr.write_line(f"summary: {config.stash[SUMMARY_PATH]}")
