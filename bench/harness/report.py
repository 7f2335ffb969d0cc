"""The report: markdown tables per (group, workload, malloc mode), the targets, the plot and
results.json.

``render`` gives the text printed and written to ``report.md``; ``write`` writes the three files
of a run into its output folder.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import machine
from .providers import GROUPS
from .targets import TARGET_WORKLOAD
from .worker import MALLOC_TUNED_VALUE, MALLOC_VARS, malloc_modes
from .workloads import human_count as human

if TYPE_CHECKING:
    from .cli import Plan, Sweep

SCHEMA_VERSION = 2  # 2: rows, ratios and targets carry their glibc malloc mode


def _ms(s):
    return "" if s is None else f"{1e3 * s:.2f}"


def _mb(b):
    return "n/a" if b is None else f"{b / 2**20:.0f}"


def _phase_cells(r: dict) -> list[str]:
    """fwd / bwd / opt ms of a training step row: "in bwd" where the provider has no optimizer
    phase (FBGEMM), a * where its optimizer phase runs after an update done in backward."""
    med = r.get("phase_median_s") or {}
    cells = [_ms(med.get("forward")), _ms(med.get("backward"))]
    if "optimizer" in med:
        cells.append(_ms(med["optimizer"]) + ("*" if r.get("optimizer_in_backward") else ""))
    else:
        cells.append("in bwd" if r.get("optimizer_in_backward") else "")
    return cells


PHASE_NOTE = (
    "fwd / bwd / opt ms: medians of each phase in the same timed rounds (opt: optimizer.step() "
    "and zero_grad); * and \"in bwd\": the update runs inside backward (fused backward, "
    "FBGEMM), so bwd includes it and opt is what is left"
)


def format_tables(rows: list[dict], copy_gbps: float | None, groups_order) -> str:
    """Markdown tables, one per (group, workload, malloc mode), providers in their group's
    order, the malloc modes of a (group, workload) next to each other."""
    lines = []
    workloads = []
    for r in rows:
        if r["workload_label"] not in [w["workload_label"] for w in workloads]:
            workloads.append(r)
    modes = list(dict.fromkeys(r.get("malloc", "default") for r in rows))
    for g in groups_order:
        group = GROUPS[g]
        for w in workloads:
            for malloc in modes:
                members = [
                    r for r in rows
                    if r["group"] == g and r["workload_label"] == w["workload_label"]
                    and r.get("malloc", "default") == malloc
                ]
                if members:
                    lines += _table(group, w["workload_label"], malloc, members, copy_gbps)
    return "\n".join(lines)


def _table(group, label: str, malloc: str, members: list[dict], copy_gbps) -> list[str]:
    order = {p.name: i for i, p in enumerate(group.providers)}
    members = sorted(members, key=lambda r: order.get(r["provider"], 99))
    uniq = next((r.get("unique_rows") for r in members if r.get("unique_rows")), None)
    lines = [
        f"### {group.name}: {group.title} | {label}"
        + (f" | {uniq:,} unique rows" if uniq else "")
        + f" | glibc malloc: {malloc}",
        "",
    ]
    show_bw = group.kind in ("forward", "optim")
    show_phases = any(r.get("phase_median_s") for r in members)
    head = (
        "| provider | median ms | p20-p80 ms | min ms | CPU ms | steps/s | peer/ours "
        "| peak MB | scratch MB |"
    )
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    if show_phases:
        head += " fwd ms | bwd ms | opt ms |"
        sep += "---:|---:|---:|"
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
        if show_phases:
            cells += _phase_cells(r)
        if show_bw:
            gb = r.get("gbps")
            cells.append("" if gb is None else f"{gb:.1f}")
            if copy_gbps:
                cells.append("" if gb is None else f"{100 * gb / copy_gbps:.0f}%")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def format_targets(targets: list[dict], device: str) -> str:
    wl = TARGET_WORKLOAD
    lines = [
        f"### Targets (V={human(wl['num_embeddings'])}, D={wl['embedding_dim']}, "
        f"N={wl['num_indices']:,}, {wl['distribution']}, {wl['dtype']}; measured on {device}"
        + ("; the issue states them for CPU" if device != "cpu" else "")
        + "; judged in each glibc malloc mode)",
        "",
        "| target | malloc | measured | required | status | detail |",
        "|---|---|---:|---:|---|---|",
    ]
    for t in targets:
        val = "" if t["value"] is None else f"{t['value']:.2f}{t['unit']}"
        req = f"{t['op']} {t['threshold']:g}{t['unit']}"
        if t.get("goal"):
            req += f" (goal {t['goal']:g}{t['unit']})"
        lines.append(
            f"| {t['text']} | {t.get('malloc', 'default')} | {val} | {req} | {t['status']} "
            f"| {t['detail']} |"
        )
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
    malloc = timed[0].get("malloc", "default")  # one allocator mode: one point per V
    timed = [r for r in timed if r.get("malloc", "default") == malloc]
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
        f"{first['distribution']} {first['dtype']}, glibc malloc: {malloc}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None



def render(plan: Plan, sweep: Sweep) -> str:
    """The report's text: what ran where, the targets, then one table per (group, workload)."""
    device, info, fb, copy = plan.device, plan.info, plan.fbgemm, plan.copy
    header = (
        f"# sparsemb benchmark: {device} ({info['device_name']}), {plan.today}\n\n"
        f"- command: `{plan.command}` ({plan.args.mode}, {sweep.elapsed_s:.0f} s)\n"
        f"- torch {info['torch']}, triton {info.get('triton')}, fbgemm_gpu "
        f"{info.get('fbgemm_gpu') if fb is None else 'unavailable: ' + fb}, sparsemb "
        f"{info.get('sparsemb')} (git {info.get('git_commit')}), python {info['python']}"
        + (f", {info['threads']} threads" if info.get("threads") else "")
        + (f", OMP_WAIT_POLICY={sweep.omp}" if device == "cpu" else "")
        + "\n"
        f"- copy bandwidth (dst.copy_(src), {copy['bytes'] / 2**30:.2f} GiB read+written): "
        f"{copy['gbps']:.1f} GB/s\n"
        f"- peak memory: {sweep.memory_method}; scratch = peak - (weights + optimizer state)\n"
        + machine.load_line(sweep.load_start, sweep.load_end, device)
        + "- time: median wall-clock time per step over the timed rounds after warmup ("
        + (
            "a round: back-to-back steps then one cuda synchronize; "
            if device == "cuda"
            else "a round: one step; "
        )
        + "CPU ms: process CPU time per step, all threads); peer/ours = that row's median / "
        "sparsemb's (> 1: sparsemb is faster)\n"
        + _malloc_line(plan)
        + "- training steps: " + PHASE_NOTE
        + (" (CUDA: a separate pass of single steps, synchronized after each phase)"
           if device == "cuda" else "") + "\n"
    )
    groups_order = list(dict.fromkeys(t[1] for t in plan.tasks))
    tables = format_tables(sweep.rows, copy["gbps"], groups_order)
    return header + "\n" + format_targets(sweep.targets, device) + "\n\n" + tables


def _malloc_line(plan: Plan) -> str:
    modes = malloc_modes(plan.args)
    tuned = " ".join(f"{k}={MALLOC_TUNED_VALUE}" for k in MALLOC_VARS)
    what = {
        "default": f"default (glibc's own thresholds: {', '.join(MALLOC_VARS)} unset)",
        "tuned": f"tuned (`{tuned}`: freed temporaries stay in the heap)",
    }
    return (
        f"- glibc malloc: {' and '.join(what[m] for m in modes)}, set in the workers' "
        "environment, the same for every provider"
        + ("; every provider runs in both, each mode in its own workers" if len(modes) > 1
           else " (`--malloc both` runs both)")
        + "\n"
    )


def write(plan: Plan, sweep: Sweep, text: str) -> None:
    """``plot.png``, ``report.md`` (the text, the machine, any profiles) and ``results.json``."""
    out = plan.out
    plot_msg = write_plot(sweep.rows, out / "plot.png")
    if plot_msg:
        print(plot_msg, file=sys.stderr)
    md = text
    machine_text = machine.machine_text(plan.device)
    if machine_text:
        md += f"\n## Machine\n\n```\n{machine_text}\n```\n"
    for prof in sweep.profiles:
        md += (
            f"\n## Profile: {prof['group']} | {prof['provider']} "
            f"({prof.get('profile_steps', 0)} steps)\n\n```\n{prof['profile']}\n```\n"
        )
    (out / "report.md").write_text(md)
    (out / "results.json").write_text(
        json.dumps(_payload(plan, sweep, plot_msg), indent=1, default=str)
    )
    print(f"\nwrote {out / 'results.json'}, {out / 'report.md'}"
          + ("" if plot_msg else f", {out / 'plot.png'}"), file=sys.stderr)


def _payload(plan: Plan, sweep: Sweep, plot_msg: str | None) -> dict:
    rows = sweep.rows
    return {
        "schema": SCHEMA_VERSION,
        "date": plan.today,
        "command": plan.command,
        "mode": plan.args.mode,
        "device": plan.device,
        "info": plan.info,
        "elapsed_s": sweep.elapsed_s,
        "copy_bandwidth": plan.copy,
        "memory_method": sweep.memory_method,
        "load_avg_1min": {"start": sweep.load_start, "end": sweep.load_end,
                          "cpus": os.cpu_count()},
        "compile_peers": plan.args.compile,
        "malloc_modes": list(malloc_modes(plan.args)),
        "malloc_tuned_env": {k: MALLOC_TUNED_VALUE for k in MALLOC_VARS},
        "omp_wait_policy": sweep.omp if plan.device == "cpu" else None,
        "fbgemm": plan.fbgemm or "available",
        "targets": sweep.targets,
        "results": rows,
        "ratios": [
            {
                "group": r["group"],
                "workload": r["workload_label"],
                "provider": r["provider"],
                "ratio": r["ratio"],
                "malloc": r.get("malloc", "default"),
            }
            for r in rows
            if r.get("ratio") is not None and not r["ours"]
        ],
        "profiles": [
            {k: p.get(k) for k in ("group", "provider", "profile", "skipped")}
            for p in sweep.profiles
        ],
        "plot": None if plot_msg else "plot.png",
    }
