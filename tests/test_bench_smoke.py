"""The benchmarks in smoke form, so they never rot: tiny sizes, seconds, no timing claims.

- the pytest-benchmark suites (``bench/``) run one round per case with ``--benchmark-only`` and
  ``SPARSEMB_BENCH_SMOKE=1`` in a subprocess (started first, so it overlaps the report test),
  through pytest-benchmark's end of session: both JSON files (its own and the summary) land in a
  temporary folder with the peer ratios, and the checkout is left as it was;
- the report (``python -m bench.harness``, imported from the checkout: the root conftest.py
  puts the repository root on sys.path) runs ``--smoke --malloc both`` into a temporary folder;
  its JSON must hold the expected keys, a timed row per provider that runs here in each glibc
  malloc mode (the tuned one in a worker that saw the tuned environment), positive ratios, the
  targets judged per mode, and per-phase times of the training steps that add up to the step;
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
    # an xdist worker's variables would make pytest-benchmark in the child think it runs
    # under xdist too, and refuse --benchmark-only
    for name in [n for n in env if n.startswith("PYTEST_XDIST_")]:
        del env[name]
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
    # -p no:xdist: the suites time serially even when this run uses pytest-xdist (-n)
    cmd = [sys.executable, "-m", "pytest", "bench", "-q", "-p", "no:xdist", "--benchmark-only",
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
    # --isolate none: the mode of this process' environment runs here, the other in a worker
    rc = cli.main(
        ["--smoke", "--no-compile", "--threads", "1", "--isolate", "none", "--no-progress",
         "--malloc", "both", "--out", str(out)]
    )
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    for key in ("schema", "date", "command", "mode", "device", "info", "copy_bandwidth",
                "memory_method", "targets", "results", "ratios", "elapsed_s", "malloc_modes"):
        assert key in data, key
    assert data["mode"] == "smoke"
    assert data["malloc_modes"] == ["default", "tuned"]
    assert data["copy_bandwidth"]["gbps"] > 0
    keys = {"adam_vs_torch_dense", "adam_vs_torch_sparse", "rowwise_adagrad_vs_fbgemm",
            "adagrad_vs_torch_sparse", "sgd_vs_torch_sparse", "max_norm_overhead", "step_memory"}
    assert sorted((t["key"], t["malloc"]) for t in data["targets"]) == sorted(
        (k, m) for k in keys for m in ("default", "tuned")
    )
    assert all(t["status"] in ("MET", "MISSED", "NOT RUN") for t in data["targets"])
    rows = data["results"]
    _check_malloc_modes(rows)
    _check_phases(rows, data["device"])
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
    assert "| target | malloc |" in report and "### forward:" in report
    assert "| fwd ms | bwd ms | opt ms |" in report
    for mode in ("default", "tuned"):
        assert f"| glibc malloc: {mode}" in report
    if data["plot"]:
        assert (out / "plot.png").stat().st_size > 0


def _check_malloc_modes(rows: list[dict]) -> None:
    """Each mode ran every provider; each row's process saw its mode's environment."""
    from bench.harness.worker import MALLOC_TUNED_VALUE, MALLOC_VARS

    by_mode = {m: {(r["group"], r["provider"]) for r in rows if r["malloc"] == m}
               for m in ("default", "tuned")}
    assert by_mode["default"] and by_mode["default"] == by_mode["tuned"]
    assert len(rows) == 2 * len(by_mode["default"])
    for r in rows:
        want = MALLOC_TUNED_VALUE if r["malloc"] == "tuned" else None
        assert r["malloc_env"] == {k: want for k in MALLOC_VARS}, (r["provider"], r["malloc"])
    for mode in by_mode:
        assert any(r["ours"] and r.get("median_s") for r in rows if r["malloc"] == mode)


def _check_phases(rows: list[dict], device: str) -> None:
    """Training steps have fwd / bwd / opt times whose sum per round is the round's time (on
    CPU; on CUDA the phases come from a separate pass that synchronizes after each phase, so
    they add up to more than a round of back-to-back steps); the optimizer phase is missing only
    where the update runs inside backward."""
    steps = [r for r in rows if r.get("median_s") and r["group"].startswith("step_")]
    assert steps
    for r in steps:
        phases = r["phase_times_s"]
        assert set(phases) <= set(providers.PHASES) and {"forward", "backward"} <= set(phases)
        assert "optimizer" in phases or r["optimizer_in_backward"], r["provider"]
        assert all(len(v) == len(r["times_s"]) for v in phases.values()), r["provider"]
        for i, total in enumerate(r["times_s"]):
            parts = sum(v[i] for v in phases.values())
            assert 0 < parts and 0 < total, (r["provider"], i)
            if device.startswith("cpu"):  # the round: the phases plus two timer calls
                assert parts <= total < parts + 0.2 * total + 0.005, (r["provider"], i)
        assert set(r["phase_median_s"]) == set(phases)
    fused = [r for r in steps if "fused-backward" in r["provider"]]
    assert fused and all(r["optimizer_in_backward"] for r in fused)
    assert not any(r["optimizer_in_backward"] for r in steps if r["ours"])
    others = [r for r in rows if not r["group"].startswith(("step_", "bag_step_"))]
    assert others and not any("phase_times_s" in r for r in others)


def test_worker_env_sets_the_malloc_mode(monkeypatch):
    """"tuned" sets both thresholds, "default" removes them even when this process has them."""
    from argparse import Namespace

    from bench.harness.worker import MALLOC_TUNED_VALUE, MALLOC_VARS, worker_env

    args = Namespace(omp_wait_policy="passive")
    for k in MALLOC_VARS:
        monkeypatch.setenv(k, "12345")
    tuned = worker_env(args, "cpu", "tuned")
    assert all(tuned[k] == MALLOC_TUNED_VALUE for k in MALLOC_VARS)
    default = worker_env(args, "cpu", "default")
    assert not any(k in default for k in MALLOC_VARS)
    with pytest.raises(ValueError, match="malloc mode"):
        worker_env(args, "cpu", "huge")


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
    # the suites' summary, pytest-<device>-<date>.json (cuda on a GPU machine)
    (summary_path,) = [p for p in out.glob("pytest-*.json") if p.name != "pytest-benchmark.json"]
    summary = json.loads(summary_path.read_text())["benchmarks"]
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
    phases = {"forward": 0.002, "backward": 0.003, "optimizer": 0.005}
    rows = [
        row("step_adam", "sparsemb + SparseAdam", 0.01, peak_bytes=1600 * mb,
            weights_bytes=500 * mb, state_bytes=1000 * mb, scratch_bytes=100 * mb,
            phase_median_s=phases),
        row("step_adam", "sparsemb + SparseAdam", 0.01, v=10**5, scratch_bytes=90 * mb),
        row("step_adam", "torch dense + Adam", 0.5),  # 50x: met
        row("step_adam", "torch sparse + SparseAdam", 0.02,  # 2x: missed
            phase_median_s={"forward": 0.002, "backward": 0.0002, "optimizer": 0.0178}),
        row("step_sgd", "sparsemb + SparseSGD", 0.01),
        row("step_sgd", "torch sparse + SGD", 0.009),  # 0.9x: missed (slower than torch)
        row("forward", "sparsemb", 0.010),
        row("forward_max_norm", "sparsemb max_norm", 0.0115),  # 1.15x: met
    ]
    got = {t["key"]: t for t in targets.evaluate_targets(rows)}
    assert {t["malloc"] for t in got.values()} == {"default"}  # rows without a mode
    assert got["adam_vs_torch_dense"]["status"] == "MET"
    assert got["adam_vs_torch_dense"]["value"] == pytest.approx(50)
    assert got["adam_vs_torch_sparse"]["status"] == "MISSED"
    assert "ours 2.0/3.0/5.0, peer 2.0/0.2/17.8" in got["adam_vs_torch_sparse"]["detail"]
    assert got["sgd_vs_torch_sparse"]["status"] == "MISSED"
    assert got["rowwise_adagrad_vs_fbgemm"]["status"] == "NOT RUN"
    assert got["adagrad_vs_torch_sparse"]["status"] == "NOT RUN"
    assert got["max_norm_overhead"]["status"] == "MET"
    assert got["step_memory"]["status"] == "MET"  # 100 MB = 3.1 N*D*4 B, +10 MB from 1e5
    # the same rows in a second malloc mode, where torch sparse is slower: judged on their own
    tuned = [{**r, "malloc": "tuned"} for r in rows]
    tuned[3] = {**tuned[3], "median_s": 0.03, "min_s": 0.03}  # 3x: met there
    both = [t for t in targets.evaluate_targets(rows + tuned) if t["key"] == "adam_vs_torch_sparse"]
    assert [(t["malloc"], t["status"]) for t in both] == [("default", "MISSED"), ("tuned", "MET")]
    assert targets.missed_rows(both) == [
        ("step_adam", "sparsemb + SparseAdam", "default"),
        ("step_adam", "torch sparse + SparseAdam", "default"),
    ]
    rows[0]["scratch_bytes"] = 600 * mb  # O(V * D) scratch: grows with V
    got = {t["key"]: t for t in targets.evaluate_targets(rows)}
    assert got["step_memory"]["status"] == "MISSED"


def test_phase_times_in_and_beside_the_timed_rounds():
    """CPU: the phases run inside the timed rounds, warmup entries dropped; the separate pass
    (CUDA's, run here without a device to synchronize) runs each phase once per round, in order."""
    from bench.harness import measure

    calls: list[str] = []
    phases = {name: (lambda name=name: calls.append(name)) for name in providers.PHASES}
    phase_times: dict[str, list[float]] = {}
    times = measure.time_steps(lambda: None, torch.device("cpu"), warmup=2, repeat=4,
                               budget_s=10.0, phases=phases, phase_times=phase_times)
    assert len(times) == 4 and calls == list(providers.PHASES) * 6  # 2 warmup + 4 timed
    assert {k: len(v) for k, v in phase_times.items()} == dict.fromkeys(providers.PHASES, 4)
    calls.clear()
    synced: dict[str, list[float]] = {}
    measure._time_phases_synced(phases, torch.device("cpu"), 3, synced)
    assert calls == list(providers.PHASES) * 3
    assert all(len(v) == 3 and min(v) >= 0 for v in synced.values())
