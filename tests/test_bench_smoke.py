"""The benchmarks in smoke form, so they never rot: tiny sizes, seconds, no timing claims.

- the pytest-benchmark suites (``bench/``) run one round per case with ``--benchmark-only`` and
  ``SPARSEMB_BENCH_SMOKE=1`` in a subprocess (started first, so it overlaps the report test),
  through pytest-benchmark's end of session: both JSON files (its own and the summary) land in a
  temporary folder with the peer ratios, and the checkout is left as it was;
- the report (``python -m bench.harness``, imported from the checkout: the root conftest.py
  puts the repository root on sys.path) runs ``--smoke`` into a temporary folder; its JSON must
  hold the expected keys, a timed row per provider that runs here, and positive ratios;
- every provider of a group computes what sparsemb computes: one step from the same weights
  gives the same weights (or the same output, for the forward groups).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.harness import cli, providers, targets
from bench.harness import workloads as wl

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(SPARSEMB_BENCH_SMOKE="1", OMP_NUM_THREADS="1")
    env.pop("SPARSEMB_BENCH_JSON", None)
    return env


def _git_status() -> str | None:
    """The checkout's ``git status`` (untracked files included), or None without git."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"],
                             cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


@pytest.fixture(scope="module")
def bench_suites(tmp_path_factory):
    """The bench/ suites in smoke form, running in the background while other tests run (or
    the reason they cannot run here), with their output folder and the git status before."""
    if importlib.util.find_spec("pytest_benchmark") is None:
        yield "pytest-benchmark is not installed (pip install 'sparsemb[test]')"
        return
    out = tmp_path_factory.mktemp("bench-suites")
    before = _git_status()
    cmd = [sys.executable, "-m", "pytest", "bench", "-q", "--benchmark-only",
           "--benchmark-json", str(out / "pytest-benchmark.json"), "--bench-out", str(out),
           "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    yield proc, out, before
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_report_smoke(bench_suites, tmp_path):
    out = tmp_path / "report"
    rc = cli.main(
        ["--smoke", "--no-compile", "--threads", "1", "--isolate", "none", "--no-progress",
         "--out", str(out)]
    )
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    for key in ("schema", "date", "command", "mode", "device", "info", "copy_bandwidth",
                "memory_method", "targets", "results", "ratios", "elapsed_s"):
        assert key in data, key
    assert data["mode"] == "smoke"
    assert data["copy_bandwidth"]["gbps"] > 0
    assert {t["key"] for t in data["targets"]} == {
        "adam_vs_torch_dense", "adam_vs_torch_sparse", "rowwise_adagrad_vs_fbgemm",
        "max_norm_overhead", "step_memory",
    }
    assert all(t["status"] in ("MET", "MISSED", "NOT RUN") for t in data["targets"])
    rows = data["results"]
    errors = [(r["group"], r["provider"], r["error"]) for r in rows if r.get("error")]
    assert not errors, errors
    timed = [r for r in rows if r.get("median_s") is not None]
    for r in timed:
        for key in ("p20_s", "p80_s", "steps_per_s", "times_s", "peak_bytes", "weights_bytes",
                    "state_bytes", "unique_rows", "workload", "ratio"):
            assert key in r, (r["provider"], key)
        assert r["median_s"] > 0
    assert any(r["ours"] for r in timed)
    assert {r["group"] for r in timed} >= {"forward", "fwd_bwd_sparse", "fwd_bwd_dense"}
    assert data["ratios"], "no peer ratios"
    for ratio in data["ratios"]:
        assert isinstance(ratio["ratio"], float)
        assert ratio["ratio"] > 0 and math.isfinite(ratio["ratio"]), ratio
    gbps = [r["gbps"] for r in timed if r.get("gbps") is not None]
    assert gbps and all(g > 0 for g in gbps)
    report = (out / "report.md").read_text()
    assert "| target |" in report and "### forward:" in report
    if data["plot"]:
        assert (out / "plot.png").stat().st_size > 0


# ----- every provider computes the same thing ------------------------------------------------

STEP_GROUPS = ("step_sgd", "step_adagrad", "step_rowwise_adagrad", "step_adam", "optim_adam")


def _first_weight(case: providers.Case) -> torch.Tensor:
    return case.params[0].detach().float()


@pytest.mark.parametrize("group_name", ("forward", "forward_max_norm", *STEP_GROUPS))
def test_providers_agree(group_name):
    """One step of every runnable provider from the same weights matches sparsemb's."""
    inputs = wl.make_inputs(wl.Workload(500, 8, 300, "zipf"), "cpu")
    group = providers.GROUPS[group_name]
    results = {}
    for provider in group.providers:
        if provider.needs_compile:
            continue
        try:
            case = provider.build(inputs)
        except providers.Unavailable:
            continue
        out = case.step()
        if group.kind == "forward":
            results[provider.name] = (out.detach().float(), _first_weight(case))
        else:
            results[provider.name] = (None, _first_weight(case))
    ours = results.pop(group.ours.name)
    assert results, f"{group_name}: no peer ran"
    assert not torch.equal(ours[1], inputs.weight.float()) or group.kind == "forward"
    for name, (out, weight) in results.items():
        if out is not None:
            torch.testing.assert_close(out, ours[0], atol=1e-5, rtol=1e-5, msg=name)
        torch.testing.assert_close(weight, ours[1], atol=1e-5, rtol=1e-4, msg=name)


def test_bench_suites_smoke(bench_suites):
    if isinstance(bench_suites, str):
        pytest.skip(bench_suites)
    proc, out, before = bench_suites
    try:
        stdout, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("bench/ smoke run took over 240 s")
    assert proc.returncode == 0, stdout[-4000:]
    assert " passed" in stdout, stdout[-2000:]
    assert _git_status() == before, "the bench/ suites changed the checkout"
    # pytest-benchmark's JSON, the ratios added through its public hook
    timed = json.loads((out / "pytest-benchmark.json").read_text())["benchmarks"]
    summary = json.loads(next(out.glob("pytest-cpu-*.json")).read_text())["benchmarks"]
    assert timed and len(summary) == len(timed)
    for rows in ([b["extra_info"] for b in timed], summary):
        assert all(r["ratio_vs_ours"] > 0 for r in rows)
        ours = [r for r in rows if r["ours"]]
        assert ours and all(r["ratio_vs_ours"] == 1.0 for r in ours)
        assert any(r.get("peer_ratios") for r in ours)
        assert all(r["gbps"] > 0 for r in rows if r["group"] in ("forward", "optim_adam"))


def test_targets_are_judged_from_the_rows():
    """MET / MISSED / NOT RUN from synthetic rows at the target size (no timing involved)."""
    def row(group, provider, median, v=10**6, **extra):
        workload = {**targets.TARGET_WORKLOAD, "num_embeddings": v, "seed": 0}
        return {"group": group, "provider": provider, "workload": workload, "median_s": median,
                "min_s": median, **extra}

    mb = 2**20
    rows = [
        row("step_adam", "sparsemb + SparseAdam", 0.01, peak_bytes=1600 * mb,
            weights_bytes=500 * mb, state_bytes=1000 * mb, scratch_bytes=100 * mb),
        row("step_adam", "sparsemb + SparseAdam", 0.01, v=10**5, scratch_bytes=90 * mb),
        row("step_adam", "torch dense + Adam", 0.5),  # 50x: met
        row("step_adam", "torch sparse + SparseAdam", 0.02),  # 2x: missed
        row("forward", "sparsemb", 0.010),
        row("forward_max_norm", "sparsemb max_norm", 0.012),  # 1.2x: met
    ]
    got = {t["key"]: t for t in targets.evaluate_targets(rows)}
    assert got["adam_vs_torch_dense"]["status"] == "MET"
    assert got["adam_vs_torch_dense"]["value"] == pytest.approx(50)
    assert got["adam_vs_torch_sparse"]["status"] == "MISSED"
    assert got["rowwise_adagrad_vs_fbgemm"]["status"] == "NOT RUN"
    assert got["max_norm_overhead"]["status"] == "MET"
    assert got["step_memory"]["status"] == "MET"  # 100 MB = 3.1 N*D*4 B, +10 MB from 1e5
    rows[0]["scratch_bytes"] = 600 * mb  # O(V * D) scratch: grows with V
    got = {t["key"]: t for t in targets.evaluate_targets(rows)}
    assert got["step_memory"]["status"] == "MISSED"
