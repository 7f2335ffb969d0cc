"""``python -m bench.harness`` (from the repository root; ``make bench``): sparsemb against
its peers.

Runs a sweep of workloads (``--quick``: the issue's target sizes, V = 1e5 and 1e6, D = 128,
N = 65,536 Zipf indices, float32; ``--full``: D in {64, 128, 256}, V up to 1e7 where memory
allows, Zipf and uniform, float32 and bfloat16) on the detected device (CUDA if present, else
CPU), then prints one table per group (median step time, steps/s, each peer's time over ours,
peak memory, GB/s for gathers and optimizer steps against the measured copy bandwidth, and a
training step's forward / backward / optimizer times), the
issue's targets as MET/MISSED, and writes ``results.json``, ``report.md`` and ``plot.png``
into ``--out`` (default ``bench/out/<device>-<date>/``).

Each workload runs in its own subprocess (``--isolate provider``: each provider too, about 5x
slower, and steadier: providers sharing a process can slow whichever runs first, as seen on the
CPU's sparsemb + SparseAdam step), so one table of 1e7 rows never shares memory with the next
and peak memory is measured cleanly; ``--malloc both`` (CPU's default) runs every workload twice,
in workers with glibc's default allocator and with its mmap and trim thresholds raised
(``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``), and judges the targets in each. On CPU,
peak RSS over the RSS before the provider was built (VmHWM, reset per provider); on GPU,
``torch.cuda.max_memory_allocated`` over the memory in use before it was built.

``main`` is four steps: ``plan`` (device, tasks, copy bandwidth), ``run`` (the workers, the
targets, profiles of missed ones), ``report.render`` and ``report.write``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import machine, measure, report
from .providers import GROUPS, QUICK_GROUPS, fbgemm_status
from .targets import TARGET_WORKLOAD, evaluate_targets, missed_rows
from .worker import ROOT, malloc_modes, run_workers, worker_env
from .workloads import Workload, grid


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m bench.harness",
        description="Benchmark sparsemb against torch.nn.Embedding, torch.compile and FBGEMM.",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="V=1e5,1e6 D=128 N=65536 Zipf float32, main groups (default; ~2 min "
                      "on 2 CPU cores)")
    size.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="D in {64,128,256}, V in {1e5,1e6,1e7} where memory allows, Zipf and "
                      "uniform, float32 and bfloat16, all groups")
    size.add_argument("--smoke", dest="mode", action="store_const", const="smoke",
                      help="tiny sizes, seconds: checks that everything runs (CI)")
    p.set_defaults(mode="quick")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if present, else cpu")
    p.add_argument("--dtype", help="comma list of float32,bfloat16,float16 (default: per mode)")
    p.add_argument("--out", type=Path, help="output folder (default bench/out/<device>-<date>/)")
    p.add_argument("--repeat", type=int, help="timed rounds per configuration")
    p.add_argument("--groups", nargs="+", help="groups to run (default: per mode)")
    p.add_argument("--vocab", type=int, nargs="+", help="restrict to these vocabulary sizes")
    comp = p.add_mutually_exclusive_group()
    comp.add_argument("--compile", dest="compile", action="store_true", default=None,
                      help="include torch.compile peers (default: on, except --quick on CPU)")
    comp.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--isolate", choices=["workload", "provider", "none"], default="workload",
                   help="one subprocess per workload (default), per provider, or none (all in "
                   "this process: faster start, memory of one provider can linger into the next; "
                   "a malloc mode other than this process' own still runs in workers)")
    p.add_argument("--malloc", choices=["default", "tuned", "both"],
                   help="glibc allocator mode of the workers: default, tuned "
                   "(MALLOC_MMAP_THRESHOLD_=MALLOC_TRIM_THRESHOLD_=4294967296 in their "
                   "environment), or both, every provider in each (default: both on CPU, "
                   "default on CUDA)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads in the workers")
    p.add_argument("--omp-wait-policy", choices=["passive", "default"], default="passive",
                   help="CPU workers: OMP_WAIT_POLICY=PASSIVE (default; steady on a shared "
                   "machine) or OpenMP's own default (an OMP_WAIT_POLICY already set wins)")
    p.add_argument("--time-limit", type=float, metavar="S",
                   help="start no configuration after S seconds (the rest is reported skipped)")
    p.add_argument("--profile-missed", action="store_true",
                   help="profile ours and the peer of each missed target (torch.profiler)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dry-run", action="store_true",
                   help="list the configurations (and the ones memory rules out), run nothing")
    return p.parse_args(argv)


def plan_tasks(args) -> list[tuple[Workload, str, str, str]]:
    """(workload, group, provider, malloc mode) in run order: per workload, each mode in turn."""
    groups = args.groups or (list(QUICK_GROUPS) if args.mode != "full" else list(GROUPS))
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise SystemExit(f"unknown group(s) {unknown}; choose from {list(GROUPS)}")
    dtypes = args.dtype.split(",") if args.dtype else None
    workloads = grid(args.mode, dtypes)
    if args.vocab:
        workloads = [w for w in workloads if w.num_embeddings in args.vocab] or [
            Workload(v, w.embedding_dim, w.num_indices, w.distribution, w.dtype)
            for v in args.vocab
            for w in workloads[:1]
        ]
    tasks = []
    for w in workloads:
        for malloc in malloc_modes(args):
            for g in groups:
                for p in GROUPS[g].providers:
                    tasks.append((w, g, p.name, malloc))
    return tasks



@dataclass
class Plan:
    """What a run will do, and where: decided before anything is timed."""

    args: argparse.Namespace
    device: str
    tasks: list[tuple[Workload, str, str, str]]
    out: Path
    today: str
    command: str
    info: dict
    copy: dict  # copy bandwidth, the GB/s yardstick
    fbgemm: str | None  # None: FBGEMM imports; else why not
    t_start: float


@dataclass
class Sweep:
    """What a run measured."""

    rows: list[dict]
    targets: list[dict]
    profiles: list[dict]
    elapsed_s: float
    memory_method: str
    omp: str
    load_start: float | None
    load_end: float | None


def plan(args: argparse.Namespace, argv: list[str]) -> Plan:
    """Device, tasks and output folder from the arguments; the copy bandwidth of the device."""
    t_start = time.perf_counter()
    args.deadline = None if args.time_limit is None else time.time() + args.time_limit
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    if args.compile is None:
        args.compile = not (device == "cpu" and args.mode == "quick")
    if args.malloc is None:
        args.malloc = "both" if device == "cpu" else "default"
    today = _dt.date.today().isoformat()
    out = args.out or ROOT / "bench" / "out" / f"{device}-{today}"
    info = machine.device_info(device)
    if args.threads and device == "cpu":
        info["threads"] = args.threads
    copy = measure.measure_copy_bandwidth(
        torch.device(device), nbytes=(16 << 20) if args.mode == "smoke" else None
    )
    fb = fbgemm_status()
    print(
        f"sparsemb bench {args.mode} on {device} ({info['device_name']}), torch {info['torch']}; "
        f"copy bandwidth {copy['gbps']:.1f} GB/s; "
        f"fbgemm: {'available' if fb is None else fb}; "
        f"torch.compile peers: {'on' if args.compile else 'off (--compile to include)'}; "
        f"glibc malloc: {' and '.join(malloc_modes(args))}",
        file=sys.stderr,
    )
    command = "python -m bench.harness " + " ".join(shlex.quote(a) for a in argv)
    return Plan(args, device, plan_tasks(args), out, today, command, info, copy, fb, t_start)


def print_plan(p: Plan) -> None:
    """``--dry-run``: each configuration, and why memory or options rule it out."""
    for w, g, name, malloc in p.tasks:
        prov = GROUPS[g].provider(name)
        why = measure.memory_check(prov, w, torch.device(p.device))
        if prov.needs_compile and not p.args.compile:
            why = "torch.compile peers off"
        print(f"{w.label():45s} {malloc:8s} {g:22s} {name:40s} "
              f"{'skip: ' + why if why else 'run'}")
    print(f"{len(p.tasks)} configurations in {len({t[0] for t in p.tasks})} workloads")


def run(p: Plan) -> Sweep:
    """Time every task in workers, judge the targets, profile the missed ones if asked."""
    args = p.args
    p.out.mkdir(parents=True, exist_ok=True)
    omp = (
        os.environ.get("OMP_WAIT_POLICY", "unset")
        if args.isolate == "none"
        else worker_env(args, p.device, malloc_modes(args)[0]).get("OMP_WAIT_POLICY", "unset")
    )
    load_start = machine.load()
    rows = run_workers(p.tasks, args, p.device, p.out / "logs")
    load_end = machine.load()
    measure.add_ratios(rows)
    targets = evaluate_targets(rows)
    profiles = _profile_missed(targets, p) if args.profile_missed else []
    mem_method = next((r.get("memory_method") for r in rows if r.get("memory_method")), "none")
    elapsed = time.perf_counter() - p.t_start
    return Sweep(rows, targets, profiles, elapsed, mem_method, omp, load_start, load_end)


def _profile_missed(targets: list[dict], p: Plan) -> list[dict]:
    """torch.profiler tables of the rows behind each missed target, at the target size."""
    wl = Workload(**TARGET_WORKLOAD)
    tasks = [(wl, group, provider, malloc) for group, provider, malloc in missed_rows(targets)]
    if not tasks:
        return []
    rows = run_workers(tasks, p.args, p.device, p.out / "logs", profile=True)
    for r in rows:
        if r.get("profile"):
            name = f"{r['group']}__{r['provider']}__{r['malloc']}"
            slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
            (p.out / f"profile_{slug}.txt").write_text(r["profile"])
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    the_plan = plan(args, argv)
    if args.dry_run:
        print_plan(the_plan)
        return 0
    sweep = run(the_plan)
    text = report.render(the_plan, sweep)
    print("\n" + text)
    report.write(the_plan, sweep, text)
    return 0
