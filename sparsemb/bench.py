"""``python -m sparsemb.bench`` (console script ``sparsemb-bench``): sparsemb against its peers.

Runs a sweep of workloads (``--quick``: the issue's target sizes, V = 1e5 and 1e6, D = 128,
N = 65,536 Zipf indices, float32; ``--full``: D in {64, 128, 256}, V up to 1e7 where memory
allows, Zipf and uniform, float32 and bfloat16) on the detected device (CUDA if present, else
CPU), then prints one table per group (median step time, steps/s, each peer's time over ours,
peak memory, GB/s for gathers and optimizer steps against the measured copy bandwidth), the
issue's targets as MET/MISSED, and writes ``results.json``, ``report.md`` and ``plot.png``
into ``--out`` (default ``bench/out/<device>-<date>/``).

Each workload runs in its own subprocess (``--isolate provider``: each provider too, about 5x
slower, and steadier: providers sharing a process can slow whichever runs first, as seen on the
CPU's sparsemb + SparseAdam step), so one table of 1e7 rows never shares memory with the next
and peak memory is measured cleanly: on CPU,
peak RSS over the RSS before the provider was built (VmHWM, reset per provider); on GPU,
``torch.cuda.max_memory_allocated`` over the memory in use before it was built.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MARKER = "@@sparsemb-bench "
TIME_LIMIT_REASON = "the --time-limit was reached"
SCHEMA_VERSION = 1
TARGET_WORKLOAD = {"num_embeddings": 10**6, "embedding_dim": 128, "num_indices": 65_536,
                   "distribution": "zipf", "dtype": "float32"}
SCRATCH_LIMIT_ND = 8  # memory target: scratch <= 8 * N * D * element size
SCRATCH_GROWTH_LIMIT = 0.25  # and it grows by < 25% of the extra table bytes from V=1e5 to 1e6

MODES = {
    # warmup rounds, timed rounds, seconds of timed rounds before stopping early (min 3 rounds)
    "smoke": {"warmup": 1, "repeat": 2, "budget_s": 0.5},
    "quick": {"warmup": 2, "repeat": 5, "budget_s": 2.0},
    "full": {"warmup": 3, "repeat": 10, "budget_s": 5.0},
}


# ----------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    key: str
    text: str
    op: str  # ">=" or "<="
    threshold: float
    unit: str = "x"


TARGETS = (
    Target("adam_vs_torch_dense", "step, Adam: torch dense + Adam time / ours", ">=", 30.0),
    Target("adam_vs_torch_sparse", "step, Adam: torch sparse + SparseAdam time / ours", ">=", 2.5),
    Target(
        "rowwise_adagrad_vs_fbgemm",
        "step, row-wise Adagrad: FBGEMM TBE time / ours",
        ">=",
        1.5,
    ),
    Target("max_norm_overhead", "forward: ours with max_norm / ours plain", "<=", 1.3),
    Target(
        "step_memory",
        "step memory (Adam): scratch over weights+state, in N*D*elem units",
        "<=",
        float(SCRATCH_LIMIT_ND),
        unit=" N*D",
    ),
)


def _find(rows, group, provider, workload):
    for r in rows:
        if (
            r["group"] == group
            and r["provider"] == provider
            and all(r["workload"].get(k) == v for k, v in workload.items())
        ):
            return r
    return None


def evaluate_targets(rows: list[dict]) -> list[dict]:
    """The issue's targets on the target workload, each with value, status MET/MISSED/NOT RUN."""
    wl = TARGET_WORKLOAD
    out = []

    def ratio(group, peer, ours):
        a, b = _find(rows, group, peer, wl), _find(rows, group, ours, wl)
        if a and b and a.get("median_s") and b.get("median_s"):
            detail = f"of min times: {a['min_s'] / b['min_s']:.2f}x"
            if a.get("cpu_median_s") and b.get("cpu_median_s"):
                detail += f", of CPU times: {a['cpu_median_s'] / b['cpu_median_s']:.2f}x"
            return a["median_s"] / b["median_s"], detail
        missing = [n for n, r in ((peer, a), (ours, b)) if not (r and r.get("median_s"))]
        why = "; ".join(
            f"{n}: {(_find(rows, group, n, wl) or {}).get('skipped') or 'not run'}"
            for n in missing
        )
        return None, why

    for t in TARGETS:
        value, detail = None, ""
        if t.key == "adam_vs_torch_dense":
            value, detail = ratio("step_adam", "torch dense + Adam", "sparsemb + SparseAdam")
            fused, _ = ratio("step_adam", "torch dense + Adam(fused=True)", "sparsemb + SparseAdam")
            if fused is not None:
                detail += f"; vs Adam(fused=True): {fused:.1f}x"
        elif t.key == "adam_vs_torch_sparse":
            value, detail = ratio("step_adam", "torch sparse + SparseAdam", "sparsemb + SparseAdam")
        elif t.key == "rowwise_adagrad_vs_fbgemm":
            value, detail = ratio(
                "step_rowwise_adagrad", "fbgemm TBE EXACT_ROWWISE_ADAGRAD",
                "sparsemb + RowWiseAdagrad",
            )
        elif t.key == "max_norm_overhead":
            a = _find(rows, "forward_max_norm", "sparsemb max_norm", wl)
            b = _find(rows, "forward", "sparsemb", wl)
            if a and b and a.get("median_s") and b.get("median_s"):
                value = a["median_s"] / b["median_s"]
                detail = f"of min times: {a['min_s'] / b['min_s']:.2f}x"
                ta = _find(rows, "forward_max_norm", "torch max_norm", wl)
                tb = _find(rows, "forward", "torch", wl)
                if ta and tb and ta.get("median_s") and tb.get("median_s"):
                    detail += f"; torch's: {ta['median_s'] / tb['median_s']:.2f}x"
            else:
                detail = "sparsemb forward rows missing"
        elif t.key == "step_memory":
            value, detail = _memory_target(rows)
        status = "NOT RUN"
        if value is not None:
            ok = value >= t.threshold if t.op == ">=" else value <= t.threshold
            if t.key == "step_memory" and "grows" in detail:
                ok = False
            status = "MET" if ok else "MISSED"
        out.append(
            {
                "key": t.key,
                "text": t.text,
                "op": t.op,
                "threshold": t.threshold,
                "unit": t.unit,
                "value": value,
                "status": status,
                "detail": detail,
                "workload": dict(wl),
            }
        )
    return out


def _memory_target(rows):
    wl = TARGET_WORKLOAD
    ours = _find(rows, "step_adam", "sparsemb + SparseAdam", wl)
    if not ours or ours.get("scratch_bytes") is None:
        return None, "sparsemb + SparseAdam at the target size was not measured"
    elem = 4 if wl["dtype"] == "float32" else 2
    nd = wl["num_indices"] * wl["embedding_dim"] * elem
    value = ours["scratch_bytes"] / nd
    detail = (
        f"peak {ours['peak_bytes'] / 2**20:.0f} MB = weights {ours['weights_bytes'] / 2**20:.0f}"
        f" + state {ours['state_bytes'] / 2**20:.0f} + scratch "
        f"{ours['scratch_bytes'] / 2**20:.0f} MB"
    )
    small = _find(rows, "step_adam", "sparsemb + SparseAdam", {**wl, "num_embeddings": 10**5})
    if small and small.get("scratch_bytes") is not None:
        growth = ours["scratch_bytes"] - small["scratch_bytes"]
        extra_table = (wl["num_embeddings"] - 10**5) * wl["embedding_dim"] * elem
        share = growth / extra_table
        word = "grows" if share > SCRATCH_GROWTH_LIMIT else "flat"
        detail += (
            f"; scratch {word} with V: {growth / 2**20:+.0f} MB from V=1e5 "
            f"({100 * share:.1f}% of the extra table)"
        )
    return value, detail


# ----------------------------------------------------------------------------------------------
# Worker: runs in a subprocess, one workload (or one provider) at a time
# ----------------------------------------------------------------------------------------------


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
    from sparsemb import _bench_workloads as bw

    workload = bw.Workload(**spec["workload"])
    inputs = bw.make_inputs(workload, device)
    deadline = spec.get("deadline")
    for group_name, provider_name in spec["tasks"]:
        group = bw.GROUPS[group_name]
        provider = group.provider(provider_name)
        emit({"event": "start", "group": group_name, "provider": provider_name})
        if deadline is not None and time.time() > deadline:
            row = _skipped_row(group_name, provider, workload, TIME_LIMIT_REASON)
        elif spec.get("profile"):
            row = _profile_provider(group, provider, inputs, spec)
        else:
            try:
                row = bw.run_provider(
                    group,
                    provider,
                    inputs,
                    warmup=spec["warmup"],
                    repeat=spec["repeat"],
                    budget_s=spec["budget_s"],
                    compile_ok=spec["compile"],
                )
            except Exception as exc:  # one broken provider must not end the sweep
                import traceback

                traceback.print_exc()
                row = _skipped_row(group_name, provider, workload, None)
                row["unique_rows"] = inputs.unique_rows
                row["error"] = f"{type(exc).__name__}: {exc}"
        emit({"event": "row", "row": row})


def _skipped_row(group_name, provider, workload, reason) -> dict:
    return {
        "group": group_name,
        "provider": provider.name,
        "system": provider.system,
        "ours": provider.ours,
        "workload": workload.as_dict(),
        "workload_label": workload.label(),
        "skipped": reason,
    }


def _profile_provider(group, provider, inputs, spec) -> dict:
    """torch.profiler summary (top ops by self time) of a few steps of one provider."""
    from torch.profiler import ProfilerActivity, profile

    from sparsemb import _bench_workloads as bw

    row = {"group": group.name, "provider": provider.name, "profile": None, "skipped": None}
    try:
        case = provider.build(inputs)
    except bw.Unavailable as exc:
        row["skipped"] = str(exc)
        return row
    run = bw.timed(case.step, inputs.device)
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


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def _device_info(device: str) -> dict:
    import torch

    info = {"device": device, "torch": torch.__version__, "python": platform.python_version()}
    if device == "cuda":
        info["device_name"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    else:
        info["device_name"] = _cpu_name()
        info["threads"] = torch.get_num_threads()
    for pkg in ("triton", "fbgemm_gpu", "numpy"):
        try:
            from importlib.metadata import version

            name = {"fbgemm_gpu": "fbgemm-gpu-cpu"}.get(pkg, pkg)
            try:
                info[pkg] = version(name)
            except Exception:
                info[pkg] = version("fbgemm-gpu") if pkg == "fbgemm_gpu" else None
        except Exception:
            info[pkg] = None
    try:
        import sparsemb

        info["sparsemb"] = sparsemb.__version__
    except Exception:
        info["sparsemb"] = None
    info["git_commit"] = _git_commit()
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _load_line(start, end, device) -> str:
    """The machine's load around the sweep; a warning where other work competed for the CPUs."""
    if start is None:
        return ""
    cpus = os.cpu_count() or 1
    line = f"- load average (1 min) before / after the sweep: {start} / {end} on {cpus} CPUs"
    if device == "cpu" and start > 0.5 * cpus:
        line += " (**busy machine: other processes competed for the CPUs, timings are noisy**)"
    return line + "\n"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        if out.returncode == 0:
            return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except Exception:
        pass
    return None


def _machine_text(device: str) -> str:
    if device == "cuda":
        cmd = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"]
    else:
        cmd = ["lscpu"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
        return "\n".join(out.splitlines()[:20])
    except Exception:
        return ""


def plan_tasks(args, bw) -> list[tuple]:
    """(workload, group, provider) in run order."""
    groups = args.groups or (list(bw.QUICK_GROUPS) if args.mode != "full" else list(bw.GROUPS))
    unknown = [g for g in groups if g not in bw.GROUPS]
    if unknown:
        raise SystemExit(f"unknown group(s) {unknown}; choose from {list(bw.GROUPS)}")
    dtypes = args.dtype.split(",") if args.dtype else None
    workloads = bw.grid(args.mode, dtypes)
    if args.vocab:
        workloads = [w for w in workloads if w.num_embeddings in args.vocab] or [
            bw.Workload(v, w.embedding_dim, w.num_indices, w.distribution, w.dtype)
            for v in args.vocab
            for w in workloads[:1]
        ]
    tasks = []
    for w in workloads:
        for g in groups:
            for p in bw.GROUPS[g].providers:
                tasks.append((w, g, p.name))
    return tasks


def run_workers(tasks, args, device: str, log_dir: Path, profile: bool = False) -> list[dict]:
    """Run ``tasks`` in subprocess workers; return their rows (a row per task, always)."""
    from sparsemb import _bench_workloads as bw

    batches: list[tuple[bw.Workload, list[tuple[str, str]]]] = []
    for w, g, p in tasks:
        if args.isolate == "provider" or not batches or batches[-1][0] != w:
            batches.append((w, []))
        batches[-1][1].append((g, p))
    mode = MODES[args.mode]
    rows: list[dict] = []
    bar = _progress(len(tasks), "profile" if profile else "sweep", args.no_progress)
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sparsemb-bench-") as tmp:
        for i, (w, pairs) in enumerate(batches):
            spec = {
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
            log_path = log_dir / f"{'profile' if profile else 'worker'}-{i:03d}-{w.slug()}.log"
            got = set()

            def on_event(msg, w=w, got=got):
                if msg["event"] == "start":
                    bar.set_postfix_str(
                        f"{human(w.num_embeddings)} {msg['group']} | {msg['provider']}"[:70]
                    )
                elif msg["event"] == "row":
                    row = msg["row"]
                    got.add((row["group"], row["provider"]))
                    rows.append(row)
                    bar.update(1)

            if args.deadline is not None and time.time() > args.deadline:
                for g, p in pairs:
                    row = _skipped_row(g, bw.GROUPS[g].provider(p), w, TIME_LIMIT_REASON)
                    on_event({"event": "row", "row": row})
                continue
            if args.isolate == "none":
                run_spec(spec, on_event)
                continue
            with open(log_path, "w") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "sparsemb.bench", "--_worker", str(spec_path)],
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                    bufsize=1,
                    env=worker_env(args, device),
                )
                assert proc.stdout is not None
                for line in proc.stdout:
                    if not line.startswith(MARKER):
                        log.write(line)
                        continue
                    on_event(json.loads(line[len(MARKER) :]))
                rc = proc.wait()
            if rc != 0 or len(got) < len(pairs):
                tail = log_path.read_text().strip().splitlines()[-1:] or [""]
                for g, p in pairs:
                    if (g, p) in got:
                        continue
                    row = _skipped_row(g, bw.GROUPS[g].provider(p), w, None)
                    row["error"] = f"worker exited with code {rc} ({tail[0][:200]}); {log_path}"
                    rows.append(row)
                    bar.update(1)
    bar.close()
    return rows


def worker_env(args, device: str) -> dict[str, str]:
    """The workers' environment: ours, plus OMP_WAIT_POLICY=PASSIVE on CPU unless told otherwise.

    With OpenMP's default (spin, then sleep), a parallel region on a machine where other
    processes hold a core waits for its descheduled thread for whole scheduler slices: a 65,536
    element sort took 190-280 ms instead of 2-5 ms on a shared 2-core VM. Passive waiting keeps
    the numbers steady there and costs little on an idle machine; every provider runs under it.
    """
    env = dict(os.environ)
    if device == "cpu" and args.omp_wait_policy == "passive":
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


class _PlainProgress:
    """Progress lines on stderr where tqdm is not installed."""

    def __init__(self, total: int, desc: str, disable: bool):
        self.total, self.desc, self.disable, self.n = total, desc, disable, 0
        self.postfix = ""

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def update(self, k: int = 1) -> None:
        self.n += k
        if not self.disable:
            print(f"{self.desc} {self.n}/{self.total} {self.postfix}", file=sys.stderr)

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, disable: bool):
    try:
        from tqdm import tqdm
    except ImportError:
        return _PlainProgress(total, desc, disable)
    return tqdm(total=total, desc=desc, unit="cfg", disable=disable, dynamic_ncols=True,
                file=sys.stderr)


def human(n: int) -> str:
    from sparsemb._bench_workloads import human_count

    return human_count(n)


def _ms(s):
    return "" if s is None else f"{1e3 * s:.2f}"


def _mb(b):
    return "n/a" if b is None else f"{b / 2**20:.0f}"


def format_tables(rows: list[dict], copy_gbps: float | None, groups_order) -> str:
    """Markdown tables, one per (group, workload), providers in their group's order."""
    from sparsemb import _bench_workloads as bw

    lines = []
    workloads = []
    for r in rows:
        if r["workload_label"] not in [w["workload_label"] for w in workloads]:
            workloads.append(r)
    for g in groups_order:
        group = bw.GROUPS[g]
        for w in workloads:
            members = [
                r for r in rows if r["group"] == g and r["workload_label"] == w["workload_label"]
            ]
            if not members:
                continue
            order = {p.name: i for i, p in enumerate(group.providers)}
            members.sort(key=lambda r: order.get(r["provider"], 99))
            uniq = next((r.get("unique_rows") for r in members if r.get("unique_rows")), None)
            lines.append(
                f"### {g}: {group.title} | {w['workload_label']}"
                + (f" | {uniq:,} unique rows" if uniq else "")
            )
            lines.append("")
            show_bw = group.kind in ("forward", "optim")
            head = (
                "| provider | median ms | p20-p80 ms | min ms | CPU ms | steps/s | peer/ours "
                "| peak MB | scratch MB |"
            )
            sep = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
            if show_bw:
                head += " GB/s |" + (" % copy |" if copy_gbps else "")
                sep += "---:|" + ("---:|" if copy_gbps else "")
            lines += [head, sep]
            for r in members:
                name = r["provider"] + (" **(ours)**" if r["ours"] else "")
                if r.get("median_s") is None:
                    why = r.get("error") or r.get("skipped") or "not run"
                    kind = "error" if r.get("error") else "skipped"
                    lines.append(f"| {name} | {kind}: {why} |")
                    continue
                ratio = r.get("ratio")
                cells = [
                    name,
                    _ms(r["median_s"]),
                    f"{_ms(r['p20_s'])}-{_ms(r['p80_s'])}",
                    _ms(r.get("min_s")),
                    _ms(r.get("cpu_median_s")),
                    f"{r['steps_per_s']:.1f}",
                    "" if ratio is None else f"{ratio:.2f}x",
                    _mb(r.get("peak_bytes")),
                    _mb(r.get("scratch_bytes")),
                ]
                if show_bw:
                    gb = r.get("gbps")
                    cells.append("" if gb is None else f"{gb:.1f}")
                    if copy_gbps:
                        cells.append("" if gb is None else f"{100 * gb / copy_gbps:.0f}%")
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def format_targets(targets: list[dict], device: str) -> str:
    wl = TARGET_WORKLOAD
    lines = [
        f"### Targets (V={human(wl['num_embeddings'])}, D={wl['embedding_dim']}, "
        f"N={wl['num_indices']:,}, {wl['distribution']}, {wl['dtype']}; measured on {device}"
        + ("; the issue states them for CPU" if device != "cpu" else "")
        + ")",
        "",
        "| target | measured | required | status | detail |",
        "|---|---:|---:|---|---|",
    ]
    for t in targets:
        val = "" if t["value"] is None else f"{t['value']:.2f}{t['unit']}"
        req = f"{t['op']} {t['threshold']:g}{t['unit']}"
        lines.append(f"| {t['text']} | {val} | {req} | {t['status']} | {t['detail']} |")
    return "\n".join(lines)


def write_plot(rows: list[dict], path: Path) -> str | None:
    """PNG of median time vs vocabulary size, one panel per group, one line per provider."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return "matplotlib is not installed: no plot (pip install 'sparsemb[bench]')"
    timed = [r for r in rows if r.get("median_s")]
    if not timed:
        return "nothing was timed: no plot"
    first = timed[0]["workload"]
    keep = [
        r
        for r in timed
        if all(
            r["workload"][k] == first[k]
            for k in ("embedding_dim", "num_indices", "distribution", "dtype")
        )
    ]
    groups = list(dict.fromkeys(r["group"] for r in keep))
    cols = min(3, len(groups))
    nrows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.8 * nrows), squeeze=False)
    for ax, g in zip(axes.flat, groups, strict=False):
        for prov in dict.fromkeys(r["provider"] for r in keep if r["group"] == g):
            pts = sorted(
                (r["workload"]["num_embeddings"], 1e3 * r["median_s"])
                for r in keep
                if r["group"] == g and r["provider"] == prov
            )
            ours = any(r["ours"] for r in keep if r["provider"] == prov and r["group"] == g)
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="o",
                linewidth=2.5 if ours else 1.2,
                label=prov,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain = FuncFormatter(lambda y, _: f"{y:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_title(g, fontsize=10)
        ax.set_xlabel("vocabulary size V")
        ax.set_ylabel("median ms / step")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    fig.suptitle(
        f"sparsemb vs peers: D={first['embedding_dim']} N={first['num_indices']:,} "
        f"{first['distribution']} {first['dtype']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="sparsemb-bench",
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
                   "this process: faster start, memory of one provider can linger into the next)")
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
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args._worker:
        return worker_main(args._worker)

    import torch

    from sparsemb import _bench_workloads as bw

    t_start = time.perf_counter()
    args.deadline = None if args.time_limit is None else time.time() + args.time_limit
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    if args.compile is None:
        args.compile = not (device == "cpu" and args.mode == "quick")
    today = _dt.date.today().isoformat()
    out = args.out or Path("bench") / "out" / f"{device}-{today}"
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m sparsemb.bench " + " ".join(shlex.quote(a) for a in argv)

    info = _device_info(device)
    if args.threads and device == "cpu":
        info["threads"] = args.threads
    copy = bw.measure_copy_bandwidth(
        torch.device(device), nbytes=(16 << 20) if args.mode == "smoke" else None
    )
    fb = bw.fbgemm_status()
    print(
        f"sparsemb-bench {args.mode} on {device} ({info['device_name']}), torch {info['torch']}; "
        f"copy bandwidth {copy['gbps']:.1f} GB/s; "
        f"fbgemm: {'available' if fb is None else fb}; "
        f"torch.compile peers: {'on' if args.compile else 'off (--compile to include)'}",
        file=sys.stderr,
    )
    tasks = plan_tasks(args, bw)
    if args.dry_run:
        for w, g, p in tasks:
            prov = bw.GROUPS[g].provider(p)
            why = bw.memory_check(prov, w, torch.device(device))
            if prov.needs_compile and not args.compile:
                why = "torch.compile peers off"
            print(f"{w.label():45s} {g:22s} {p:40s} {'skip: ' + why if why else 'run'}")
        print(f"{len(tasks)} configurations in {len({t[0] for t in tasks})} workloads")
        return 0
    omp = (
        os.environ.get("OMP_WAIT_POLICY", "unset")
        if args.isolate == "none"
        else worker_env(args, device).get("OMP_WAIT_POLICY", "unset")
    )
    load_start = _load()
    rows = run_workers(tasks, args, device, out / "logs")
    load_end = _load()
    bw.add_ratios(rows)
    targets = evaluate_targets(rows)
    groups_order = list(dict.fromkeys(g for _, g, _ in tasks))

    profiles = []
    if args.profile_missed:
        profiles = _profile_missed(targets, args, device, out)

    tables = format_tables(rows, copy["gbps"], groups_order)
    target_text = format_targets(targets, device)
    elapsed = time.perf_counter() - t_start
    mem_method = next((r.get("memory_method") for r in rows if r.get("memory_method")), "none")
    header = (
        f"# sparsemb benchmark: {device} ({info['device_name']}), {today}\n\n"
        f"- command: `{command}` ({args.mode}, {elapsed:.0f} s)\n"
        f"- torch {info['torch']}, triton {info.get('triton')}, fbgemm_gpu "
        f"{info.get('fbgemm_gpu') if fb is None else 'unavailable: ' + fb}, sparsemb "
        f"{info.get('sparsemb')} (git {info.get('git_commit')}), python {info['python']}"
        + (f", {info['threads']} threads" if info.get("threads") else "")
        + (f", OMP_WAIT_POLICY={omp}" if device == "cpu" else "")
        + "\n"
        f"- copy bandwidth (dst.copy_(src), {copy['bytes'] / 2**30:.2f} GiB read+written): "
        f"{copy['gbps']:.1f} GB/s\n"
        f"- peak memory: {mem_method}; scratch = peak - (weights + optimizer state)\n"
        + _load_line(load_start, load_end, device)
        + "- time: median wall-clock time per step over the timed rounds after warmup ("
        + (
            "a round: back-to-back steps then one cuda synchronize; "
            if device == "cuda"
            else "a round: one step; "
        )
        + "CPU ms: process CPU time per step, all threads); peer/ours = that row's median / "
        "sparsemb's (> 1: sparsemb is faster)\n"
    )
    report = header + "\n" + target_text + "\n\n" + tables
    print("\n" + report)

    plot_msg = write_plot(rows, out / "plot.png")
    if plot_msg:
        print(plot_msg, file=sys.stderr)
    machine = _machine_text(device)
    md = report
    if machine:
        md += f"\n## Machine\n\n```\n{machine}\n```\n"
    for prof in profiles:
        md += (
            f"\n## Profile: {prof['group']} | {prof['provider']} "
            f"({prof.get('profile_steps', 0)} steps)\n\n```\n{prof['profile']}\n```\n"
        )
    (out / "report.md").write_text(md)
    payload = {
        "schema": SCHEMA_VERSION,
        "date": today,
        "command": command,
        "mode": args.mode,
        "device": device,
        "info": info,
        "elapsed_s": elapsed,
        "copy_bandwidth": copy,
        "memory_method": mem_method,
        "load_avg_1min": {"start": load_start, "end": load_end, "cpus": os.cpu_count()},
        "compile_peers": args.compile,
        "omp_wait_policy": omp if device == "cpu" else None,
        "fbgemm": fb or "available",
        "targets": targets,
        "results": rows,
        "ratios": [
            {
                "group": r["group"],
                "workload": r["workload_label"],
                "provider": r["provider"],
                "ratio": r["ratio"],
            }
            for r in rows
            if r.get("ratio") is not None and not r["ours"]
        ],
        "profiles": [
            {k: p.get(k) for k in ("group", "provider", "profile", "skipped")} for p in profiles
        ],
        "plot": None if plot_msg else "plot.png",
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=str))
    print(f"\nwrote {out / 'results.json'}, {out / 'report.md'}"
          + ("" if plot_msg else f", {out / 'plot.png'}"), file=sys.stderr)
    return 0


def _profile_missed(targets, args, device, out) -> list[dict]:
    from sparsemb import _bench_workloads as bw

    pairs = {
        "adam_vs_torch_dense": ("step_adam", ["sparsemb + SparseAdam", "torch dense + Adam"]),
        "adam_vs_torch_sparse": (
            "step_adam",
            ["sparsemb + SparseAdam", "torch sparse + SparseAdam"],
        ),
        "rowwise_adagrad_vs_fbgemm": (
            "step_rowwise_adagrad",
            ["sparsemb + RowWiseAdagrad", "fbgemm TBE EXACT_ROWWISE_ADAGRAD"],
        ),
        "max_norm_overhead": ("forward_max_norm", ["sparsemb max_norm"]),
        "step_memory": ("step_adam", ["sparsemb + SparseAdam"]),
    }
    wl = bw.Workload(**TARGET_WORKLOAD)
    tasks = []
    for t in targets:
        if t["status"] == "MISSED":
            group, provs = pairs[t["key"]]
            for p in provs:
                if (wl, group, p) not in tasks:
                    tasks.append((wl, group, p))
            if t["key"] == "max_norm_overhead":
                tasks.append((wl, "forward", "sparsemb"))
    if not tasks:
        return []
    rows = run_workers(tasks, args, device, out / "logs", profile=True)
    for r in rows:
        if r.get("profile"):
            slug = re.sub(r"[^A-Za-z0-9]+", "_", f"{r['group']}__{r['provider']}").strip("_")
            (out / f"profile_{slug}.txt").write_text(r["profile"])
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
