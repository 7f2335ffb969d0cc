"""The benchmark issue's targets, judged MET / MISSED / NOT RUN from the report's rows.

Each target names the (group, provider) rows it reads, ours first: ``evaluate_targets`` judges
them in each glibc malloc mode the rows were measured in, and the report's ``--profile-missed``
profiles the same rows of a missed target in the mode that missed it.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import providers as pv

TARGET_WORKLOAD = {"num_embeddings": 10**6, "embedding_dim": 128, "num_indices": 65_536,
                   "distribution": "zipf", "dtype": "float32"}
SCRATCH_LIMIT_ND = 8  # memory target: scratch <= 8 * N * D * element size
SCRATCH_GROWTH_LIMIT = 0.25  # and it grows by < 25% of the extra table bytes from V=1e5 to 1e6

Row = tuple[str, str]  # (group, provider)


@dataclass(frozen=True)
class Target:
    key: str
    text: str
    op: str  # ">=" or "<="
    threshold: float
    rows: tuple[Row, ...]  # what it reads, ours first (then the peer, or ours' baseline)
    unit: str = "x"
    goal: float | None = None  # where the issue names a goal beyond the threshold


def _step_target(key: str, kind: str, peer: str, threshold: float, text: str, **kw) -> Target:
    group = pv.step_group_name(kind)
    return Target(key, text, ">=", threshold, ((group, pv.ours_step_name(kind)), (group, peer)),
                  **kw)


TARGETS = (
    _step_target("adam_vs_torch_sparse", "adam", pv.TORCH_SPARSE_ADAM, 2.5,
                 "step, Adam: torch sparse + SparseAdam time / ours", goal=4.0),
    _step_target("rowwise_adagrad_vs_fbgemm", "rowwise_adagrad", pv.FBGEMM_ROWWISE_ADAGRAD, 2.5,
                 "step, row-wise Adagrad: FBGEMM TBE time / ours"),
    _step_target("adagrad_vs_torch_sparse", "adagrad", pv.TORCH_SPARSE_ADAGRAD, 2.0,
                 "step, Adagrad: torch sparse + Adagrad time / ours"),
    _step_target("sgd_vs_torch_sparse", "sgd", pv.TORCH_SPARSE_SGD, 1.0,
                 "step, SGD: torch sparse + SGD time / ours (every rule at least as fast as "
                 "torch's)"),
    Target("max_norm_overhead", "forward: ours with max_norm / ours plain", "<=", 1.2,
           ((pv.FORWARD_MAX_NORM, pv.SPARSEMB_MAX_NORM), (pv.FORWARD, pv.SPARSEMB_FORWARD))),
    _step_target("adam_vs_torch_dense", "adam", pv.TORCH_DENSE_ADAM, 40.0,
                 "step, Adam: torch dense + Adam time / ours"),
    Target(
        "step_memory",
        "step memory (Adam): scratch over weights+state, in N*D*elem units",
        "<=",
        float(SCRATCH_LIMIT_ND),
        ((pv.STEP_ADAM, pv.SPARSEMB_ADAM),),
        unit=" N*D",
    ),
)


def malloc_of(row: dict) -> str:
    """The glibc malloc mode a row was measured in (rows without one: "default")."""
    return row.get("malloc") or "default"


def find_row(rows, group, provider, workload, malloc="default"):
    for r in rows:
        if (
            r["group"] == group
            and r["provider"] == provider
            and malloc_of(r) == malloc
            and all(r["workload"].get(k) == v for k, v in workload.items())
        ):
            return r
    return None


def evaluate_targets(rows: list[dict]) -> list[dict]:
    """The issue's targets on the target workload, in each malloc mode of the rows, each with
    value, status MET/MISSED/NOT RUN; target by target, the modes side by side."""
    modes = list(dict.fromkeys(malloc_of(r) for r in rows)) or ["default"]
    out = []
    for t in TARGETS:
        for malloc in modes:
            value, detail = _measure(t, rows, malloc)
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
                    "malloc": malloc,
                    "op": t.op,
                    "threshold": t.threshold,
                    "goal": t.goal,
                    "unit": t.unit,
                    "value": value,
                    "status": status,
                    "detail": detail,
                    "workload": dict(TARGET_WORKLOAD),
                }
            )
    return out


def _measure(t: Target, rows: list[dict], malloc: str) -> tuple[float | None, str]:
    if t.key == "step_memory":
        return _memory_target(rows, malloc)
    if t.key == "max_norm_overhead":
        return _max_norm_overhead(t, rows, malloc)
    (group, ours), (_, peer) = t.rows
    value, detail = _ratio(rows, group, peer, ours, malloc)
    if value is None:
        return value, detail
    if t.key == "adam_vs_torch_dense":
        fused, _ = _ratio(rows, group, pv.TORCH_DENSE_ADAM_FUSED, ours, malloc)
        if fused is not None:
            detail += f"; vs Adam(fused=True): {fused:.1f}x"
        return value, detail
    kind = group.removeprefix("step_")
    fused, _ = _ratio(rows, group, peer, pv.ours_fused_step_name(kind), malloc)
    if fused is not None:
        detail += f"; ours with fused backward: {fused:.2f}x"
    phases = [_phases(find_row(rows, group, n, TARGET_WORKLOAD, malloc)) for n in (ours, peer)]
    if all(phases):
        detail += f"; fwd/bwd/opt ms: ours {phases[0]}, peer {phases[1]}"
    return value, detail


def _phases(row: dict | None) -> str | None:
    """"fwd/bwd/opt" median milliseconds of a row ("-" for an optimizer inside backward)."""
    med = (row or {}).get("phase_median_s")
    if not med:
        return None
    return "/".join(
        f"{1e3 * med[k]:.1f}" if k in med else "-" for k in pv.PHASES
    )


def _ratio(rows, group, peer, ours, malloc) -> tuple[float | None, str]:
    """Peer's median time over ours at the target size, or None and why it is missing."""
    wl = TARGET_WORKLOAD
    a, b = find_row(rows, group, peer, wl, malloc), find_row(rows, group, ours, wl, malloc)
    if a and b and a.get("median_s") and b.get("median_s"):
        detail = f"of min times: {a['min_s'] / b['min_s']:.2f}x"
        if a.get("cpu_median_s") and b.get("cpu_median_s"):
            detail += f", of CPU times: {a['cpu_median_s'] / b['cpu_median_s']:.2f}x"
        return a["median_s"] / b["median_s"], detail
    missing = [n for n, r in ((peer, a), (ours, b)) if not (r and r.get("median_s"))]
    why = "; ".join(
        f"{n}: {(find_row(rows, group, n, wl, malloc) or {}).get('skipped') or 'not run'}"
        for n in missing
    )
    return None, why


def _max_norm_overhead(t: Target, rows, malloc) -> tuple[float | None, str]:
    wl = TARGET_WORKLOAD
    a, b = (find_row(rows, g, p, wl, malloc) for g, p in t.rows)
    if not (a and b and a.get("median_s") and b.get("median_s")):
        return None, "sparsemb forward rows missing"
    detail = f"of min times: {a['min_s'] / b['min_s']:.2f}x"
    ta = find_row(rows, pv.FORWARD_MAX_NORM, pv.TORCH_MAX_NORM, wl, malloc)
    tb = find_row(rows, pv.FORWARD, pv.TORCH_FORWARD, wl, malloc)
    if ta and tb and ta.get("median_s") and tb.get("median_s"):
        detail += f"; torch's: {ta['median_s'] / tb['median_s']:.2f}x"
    detail += f" (ours {1e3 * a['median_s']:.2f} / {1e3 * b['median_s']:.2f} ms)"
    return a["median_s"] / b["median_s"], detail


def _memory_target(rows, malloc) -> tuple[float | None, str]:
    wl = TARGET_WORKLOAD
    ours = find_row(rows, pv.STEP_ADAM, pv.SPARSEMB_ADAM, wl, malloc)
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
    small = find_row(rows, pv.STEP_ADAM, pv.SPARSEMB_ADAM, {**wl, "num_embeddings": 10**5},
                     malloc)
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


def missed_rows(targets: list[dict]) -> list[tuple[str, str, str]]:
    """(group, provider, malloc mode) of the rows behind the missed targets, once each, in
    target order."""
    by_key = {t.key: t for t in TARGETS}
    out: list[tuple[str, str, str]] = []
    for t in targets:
        if t["status"] == "MISSED":
            rows = [(g, p, t["malloc"]) for g, p in by_key[t["key"]].rows]
            out += [r for r in rows if r not in out]
    return out
