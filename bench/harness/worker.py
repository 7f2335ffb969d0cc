"""The worker protocol: each workload (or provider) of a sweep runs in its own subprocess.

The driver (``run_workers``) writes a JSON spec (a workload and its (group, provider) tasks),
starts ``python -m bench.harness.worker SPEC`` from the repository root, and reads the
worker's stdout: each line starting with ``MARKER`` is one JSON event ("start" of a task, or its
"row" of numbers); anything else goes to the worker's log. A task the worker never reported
(crash, out of memory) still gets a row, with the error and the log's last line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from tqdm import tqdm

from sparsemb.torch_backend import numba_rows

from . import measure
from .providers import GROUPS, Unavailable
from .workloads import Workload, human_count, make_inputs

ROOT = Path(__file__).resolve().parents[2]  # the repository: `python -m bench...` runs from it
MARKER = "@@sparsemb-bench "
TIME_LIMIT_REASON = "the --time-limit was reached"
# glibc allocator modes a sweep runs its providers in, each through the workers' environment
# (the same for every provider of a mode): "default" leaves glibc's dynamic mmap threshold,
# "tuned" raises both thresholds so freed temporaries stay in the heap (no munmap, and no fresh
# page faults on the next step's mmap)
MALLOC_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
MALLOC_TUNED_VALUE = "4294967296"
MALLOC_MODES = ("default", "tuned")


def malloc_modes(args) -> tuple[str, ...]:
    """The malloc modes of a sweep (``--malloc``: default, tuned or both), in run order."""
    return MALLOC_MODES if args.malloc == "both" else (args.malloc or "default",)


MODES = {
    # warmup rounds, timed rounds, seconds of timed rounds before stopping early (min 3 rounds)
    "smoke": {"warmup": 1, "repeat": 2, "budget_s": 0.5},
    "quick": {"warmup": 2, "repeat": 5, "budget_s": 2.0},
    "full": {"warmup": 3, "repeat": 10, "budget_s": 5.0},
}


# ----- in the worker ----------------------------------------------------------------------------


def _emit(obj: dict) -> None:
    sys.stdout.write(MARKER + json.dumps(obj) + "\n")
    sys.stdout.flush()


def worker_main(spec_path: str) -> int:
    run_spec(json.loads(Path(spec_path).read_text()), _emit)
    return 0


def run_spec(spec: dict, emit) -> None:
    """Run one worker spec (a workload and its (group, provider) tasks), ``emit`` each event."""
    import torch

    device = torch.device(spec["device"])
    threads_before = torch.get_num_threads()
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    try:
        _run_tasks(spec, emit, device)
    finally:
        torch.set_num_threads(threads_before)


def _run_tasks(spec: dict, emit, device) -> None:
    workload = Workload(**spec["workload"])
    inputs = make_inputs(workload, device)
    if device.type == "cpu":
        # Numba's runtime (sparsemb[cpu]) loads before any provider's memory baseline, as
        # torch's own libraries do: a fixed ~130 MB a process, not a step's scratch
        numba_rows.preload()
    deadline = spec.get("deadline")
    malloc = spec.get("malloc", "default")

    def emit_row(row: dict) -> None:
        row["malloc"] = malloc
        row["malloc_env"] = {k: os.environ.get(k) for k in MALLOC_VARS}  # what glibc read
        emit({"event": "row", "row": row})

    for group_name, provider_name in spec["tasks"]:
        group = GROUPS[group_name]
        provider = group.provider(provider_name)
        emit({"event": "start", "group": group_name, "provider": provider_name})
        if deadline is not None and time.time() > deadline:
            row = skipped_row(group_name, provider, workload, TIME_LIMIT_REASON)
        elif spec.get("profile"):
            row = _profile_provider(group, provider, inputs)
        else:
            try:
                row = measure.run_provider(
                    group,
                    provider,
                    inputs,
                    warmup=spec["warmup"],
                    repeat=spec["repeat"],
                    budget_s=spec["budget_s"],
                    compile_ok=spec["compile"],
                )
            except Exception as exc:  # one broken provider must not end the sweep
                traceback.print_exc()
                row = skipped_row(group_name, provider, workload, None)
                row["unique_rows"] = inputs.unique_rows
                row["error"] = f"{type(exc).__name__}: {exc}"
        emit_row(row)


def skipped_row(group_name, provider, workload, reason) -> dict:
    return {
        "group": group_name,
        "provider": provider.name,
        "system": provider.system,
        "ours": provider.ours,
        "workload": workload.as_dict(),
        "workload_label": workload.label(),
        "skipped": reason,
    }


def _profile_provider(group, provider, inputs) -> dict:
    """torch.profiler summary (top ops by self time) of a few steps of one provider."""
    from torch.profiler import ProfilerActivity, profile

    row = {"group": group.name, "provider": provider.name, "profile": None, "skipped": None}
    try:
        case = provider.build(inputs)
    except Unavailable as exc:
        row["skipped"] = str(exc)
        return row
    run = measure.timed(case.step, inputs.device)
    for _ in range(2):
        run()
    activities = [ProfilerActivity.CPU]
    sort = "self_cpu_time_total"
    if inputs.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        sort = "self_cuda_time_total"
    steps = 3
    with profile(activities=activities) as prof:
        for _ in range(steps):
            run()
    row["profile"] = prof.key_averages().table(sort_by=sort, row_limit=18, max_name_column_width=60)
    row["profile_steps"] = steps
    return row


# ----- in the driver ----------------------------------------------------------------------------


def run_workers(tasks, args, device: str, log_dir: Path, profile: bool = False) -> list[dict]:
    """Run ``tasks`` ((workload, group, provider, malloc mode)) in subprocess workers, one per
    workload and malloc mode (or per provider); return their rows (a row per task, always).

    With ``--isolate none`` a batch runs in this process when this process' environment is the
    batch's malloc mode (glibc reads it at start), else in a worker like the others."""
    batches: list[tuple[Workload, str, list[tuple[str, str]]]] = []
    for w, g, p, malloc in tasks:
        if args.isolate == "provider" or not batches or batches[-1][:2] != (w, malloc):
            batches.append((w, malloc, []))
        batches[-1][2].append((g, p))
    mode = MODES[args.mode]
    rows: list[dict] = []
    bar = tqdm(total=len(tasks), desc="profile" if profile else "sweep", unit="cfg",
               disable=args.no_progress, dynamic_ncols=True, file=sys.stderr)
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sparsemb-bench-") as tmp:
        for i, (w, malloc, pairs) in enumerate(batches):
            spec = {
                "malloc": malloc,
                "device": device,
                "workload": w.as_dict(),
                "tasks": pairs,
                "warmup": mode["warmup"],
                "repeat": args.repeat or mode["repeat"],
                "budget_s": mode["budget_s"],
                "compile": args.compile,
                "profile": profile,
                "threads": args.threads,
                "deadline": args.deadline,
            }
            spec_path = Path(tmp) / f"spec-{i}.json"
            spec_path.write_text(json.dumps(spec))
            kind = "profile" if profile else "worker"
            log_path = log_dir / f"{kind}-{i:03d}-{w.slug()}-{malloc}.log"
            got = set()

            def on_event(msg, w=w, got=got, malloc=malloc):
                if msg["event"] == "start":
                    bar.set_postfix_str(
                        f"{human_count(w.num_embeddings)} {malloc} {msg['group']} | "
                        f"{msg['provider']}"[:70]
                    )
                elif msg["event"] == "row":
                    row = msg["row"]
                    got.add((row["group"], row["provider"]))
                    rows.append(row)
                    bar.update(1)

            if args.deadline is not None and time.time() > args.deadline:
                for g, p in pairs:
                    row = skipped_row(g, GROUPS[g].provider(p), w, TIME_LIMIT_REASON)
                    row["malloc"] = malloc
                    on_event({"event": "row", "row": row})
                continue
            env = worker_env(args, device, malloc)
            if args.isolate == "none" and _same_malloc_env(env):
                run_spec(spec, on_event)
                continue
            rc = _run_worker(spec_path, log_path, env, on_event)
            if rc != 0 or len(got) < len(pairs):
                tail = log_path.read_text().strip().splitlines()[-1:] or [""]
                for g, p in pairs:
                    if (g, p) in got:
                        continue
                    row = skipped_row(g, GROUPS[g].provider(p), w, None)
                    row["malloc"] = malloc
                    row["error"] = f"worker exited with code {rc} ({tail[0][:200]}); {log_path}"
                    rows.append(row)
                    bar.update(1)
    bar.close()
    return rows


def _run_worker(spec_path: Path, log_path: Path, env: dict[str, str], on_event) -> int:
    """One worker subprocess: events to ``on_event``, everything else to its log."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.harness.worker", str(spec_path)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            bufsize=1,
            env=env,
            cwd=ROOT,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if not line.startswith(MARKER):
                log.write(line)
                continue
            on_event(json.loads(line[len(MARKER) :]))
        return proc.wait()


def _same_malloc_env(env: dict[str, str]) -> bool:
    return all(os.environ.get(k) == env.get(k) for k in MALLOC_VARS)


def worker_env(args, device: str, malloc: str = "default") -> dict[str, str]:
    """The workers' environment: ours, plus OMP_WAIT_POLICY=PASSIVE on CPU unless told otherwise,
    and the malloc mode's variables (``MALLOC_VARS`` unset for "default", set to
    ``MALLOC_TUNED_VALUE`` for "tuned", whatever this process has).

    With OpenMP's default (spin, then sleep), a parallel region on a machine where other
    processes hold a core waits for its descheduled thread for whole scheduler slices: a 65,536
    element sort took 190-280 ms instead of 2-5 ms on a shared 2-core VM. Passive waiting keeps
    the numbers steady there and costs little on an idle machine; every provider runs under it.
    """
    if malloc not in MALLOC_MODES:
        raise ValueError(f"unknown malloc mode {malloc!r}; choose from {MALLOC_MODES}")
    env = dict(os.environ)
    if device == "cpu" and args.omp_wait_policy == "passive":
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    for k in MALLOC_VARS:
        if malloc == "tuned":
            env[k] = MALLOC_TUNED_VALUE
        else:
            env.pop(k, None)
    return env


if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1]))
