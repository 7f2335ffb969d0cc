#!/usr/bin/env bash
# Everything a CUDA machine should check, in one command, into one folder:
#   1. the full test suite on the GPU, Triton compiled for real (no interpreter);
#   2. the GPU report: python -m bench.harness --quick --device cuda (tables, JSON, PNG);
#   3. the GPU pytest-benchmark suites (bench/, default grid) with their JSON;
#   4. a torch.profiler trace of warm training steps (scripts/gpu_profile.py): per-kernel time,
#      launches, cudaStreamSynchronize/memcpy per step, step time and GB/s against a measured
#      copy, for sparsemb and nn.Embedding(sparse=True) + SparseAdam, and a CUDA-graph capture
#      of the fused step with bounds_check="none", and cProfile of each sparsemb step's host time;
#   5. the sm_90 compile table (scripts/sm90_compile.py): registers and spills of every kernel.
#
# Usage:  bash scripts/gpu_all.sh [OUT_DIR]        (default: bench/results/gpu-<date>/)
# Output: OUT_DIR/summary.txt        machine, versions, each phase's exit code and duration
#         OUT_DIR/tests.log          pytest tests -q
#         OUT_DIR/report.md          the report's tables and targets (report.log: its console)
#         OUT_DIR/results.json       the report's raw numbers;  OUT_DIR/plot.png  its plot
#         OUT_DIR/pytest-bench.json  pytest-benchmark's JSON (pytest-bench.log: its console)
#         OUT_DIR/pytest-cuda-<date>.json  the suites' summary: median, GB/s, peer ratios per case
#         OUT_DIR/worker-logs.tar.gz the report's per-workload worker logs
#         OUT_DIR/profile/profile.md  the warm-step profile; profile/trace-*.json its traces
#         OUT_DIR/sm90_compile.md     registers/spills of every kernel compiled for sm_90
# Fits in ~9 minutes on an H100: each phase has a wall-clock budget (seconds; override with
# GPU_ALL_TESTS_S, GPU_ALL_REPORT_S, GPU_ALL_BENCH_S, GPU_ALL_PROFILE_S, GPU_ALL_SM90_S). The report stops starting new
# configurations at its budget (--time-limit) and pytest is interrupted with SIGINT, so each
# phase still writes what it measured.
# Needs: torch with CUDA, triton, pytest (pytest-benchmark for phase 3, matplotlib for the plot);
# nothing is downloaded. The project is installed with
#   pip install --no-build-isolation --no-deps -e .
# first when `import sparsemb` does not already resolve to this checkout.
# GPU_ALL_TEST_ARGS: the test phase's extra pytest arguments (default "-n 8 -vv" where
# pytest-xdist is installed; "" for a serial run).
# GPU_ALL_DRY=1 runs the same steps on CPU at smoke sizes (to check this script without a GPU).
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${1:-bench/results/gpu-$(date +%F)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif command -v python3 >/dev/null 2>&1; then PY=python3
else PY=python
fi
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET SPARSEMB_BACKEND   # real Triton kernels, automatic dispatch

DRY="${GPU_ALL_DRY:-0}"
T_TESTS="${GPU_ALL_TESTS_S:-240}"
T_REPORT="${GPU_ALL_REPORT_S:-110}"
T_BENCH="${GPU_ALL_BENCH_S:-100}"
T_PROFILE="${GPU_ALL_PROFILE_S:-60}"
T_SM90="${GPU_ALL_SM90_S:-40}"
PROFILE_ARGS=()
PROFILE_ENV=()
DEVICE=cuda
REPORT_SIZE=--quick
TEST_TARGETS=(tests)
# pytest arguments for the test phase: by default, with pytest-xdist, 8 workers (the kernels
# compile on several cores at once) and -v, so each test's outcome is in the log as it ends,
# even when the phase's budget cuts the run before pytest's summary
DEFAULT_TEST_ARGS=""
if [ "$DRY" = "0" ] && "$PY" -c 'import xdist' 2>/dev/null; then DEFAULT_TEST_ARGS="-n 8 -vv"; fi  # -vv: -q takes one back
read -r -a TEST_ARGS <<<"${GPU_ALL_TEST_ARGS-$DEFAULT_TEST_ARGS}"
if [ "$DRY" != "0" ]; then
  DEVICE=cpu
  REPORT_SIZE=--smoke
  TEST_TARGETS=(tests/test_bench_smoke.py)
  PROFILE_ARGS=(--smoke)
  PROFILE_ENV=(SPARSEMB_BACKEND=triton TRITON_INTERPRET=1)   # the Triton path, interpreted
  export SPARSEMB_BENCH_SMOKE=1 SPARSEMB_BENCH_DEVICE=cpu
fi

SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }

note "# sparsemb GPU run, $(date -u +'%Y-%m-%d %H:%M:%S UTC')"
note "checkout: $ROOT ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no git')$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo '+dirty'))"
note "python: $(command -v "$PY") ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"
"$PY" - >>"$SUMMARY" 2>&1 <<'EOF'
import importlib
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device: {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs")
for name in ("triton", "pytest", "pytest_benchmark", "matplotlib", "tqdm", "fbgemm_gpu"):
    try:
        mod = importlib.import_module(name)
        print(f"{name} {getattr(mod, '__version__', '?')}")
    except Exception as exc:
        print(f"{name}: not available ({type(exc).__name__})")
EOF
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >>"$SUMMARY" 2>&1

if [ "$DEVICE" = cuda ] && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  note "ERROR: torch sees no CUDA device (GPU_ALL_DRY=1 checks this script on CPU)"
  exit 2
fi

# the package must be this checkout, installed (editable)
if ! (cd /tmp && "$PY" -c "import sparsemb, pathlib, sys; sys.exit(0 if pathlib.Path(sparsemb.__file__).resolve().parent == pathlib.Path('$ROOT/sparsemb').resolve() else 1)") 2>/dev/null; then
  note "installing: $PY -m pip install --no-build-isolation --no-deps -e ."
  "$PY" -m pip install -q --no-build-isolation --no-deps -e . >"$OUT/install.log" 2>&1 \
    || { note "ERROR: install failed, see install.log"; exit 2; }
fi

# run NAME SECONDS LOG CMD...: a phase under a wall-clock budget (SIGINT, then KILL 20 s later)
declare -A RC
run() {
  local name="$1" secs="$2" log="$3"; shift 3
  local t0=$SECONDS
  note "== $name (budget ${secs}s): $*"
  timeout -s INT -k 20 "$secs" "$@" 2>&1 | tee "$log" >/dev/null
  RC[$name]=${PIPESTATUS[0]}
  note "   $name: exit ${RC[$name]}$([ "${RC[$name]}" = 124 ] && echo ' (budget reached)'), $((SECONDS - t0)) s"
  tail -n 3 "$log" | sed 's/^/   | /' | tee -a "$SUMMARY" >/dev/null
}

run tests "$T_TESTS" "$OUT/tests.log" \
  "$PY" -m pytest "${TEST_TARGETS[@]}" -q -p no:cacheprovider "${TEST_ARGS[@]}"
# xdist workers outlive a controller killed at the budget: stop them before anything is timed
pkill -9 -f 'exec\(eval\(sys\.stdin\.readline' 2>/dev/null || true
grep -E '(FAILED|ERROR) ' "$OUT/tests.log" | sed 's/^/   | /' | head -40 | tee -a "$SUMMARY" >/dev/null

run report "$T_REPORT" "$OUT/report.log" \
  "$PY" -m bench.harness "$REPORT_SIZE" --device "$DEVICE" --out "$OUT" --no-progress \
  --time-limit $((T_REPORT - 25))
if [ -d "$OUT/logs" ]; then
  tar czf "$OUT/worker-logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
fi

if "$PY" -c 'import pytest_benchmark' 2>/dev/null; then
  run bench "$T_BENCH" "$OUT/pytest-bench.log" \
    "$PY" -m pytest bench -q -p no:cacheprovider --benchmark-only \
    --benchmark-json="$OUT/pytest-bench.json" --bench-out "$OUT" \
    --bench-device "$DEVICE" --benchmark-group-by=group --benchmark-columns=median,iqr,rounds \
    --benchmark-sort=name -W ignore::DeprecationWarning
else
  note "== bench: skipped, pytest-benchmark is not installed"
  RC[bench]=0
fi

run profile "$T_PROFILE" "$OUT/profile.log" \
  env "${PROFILE_ENV[@]}" "$PY" scripts/gpu_profile.py --device "$DEVICE" --out "$OUT/profile" \
  "${PROFILE_ARGS[@]}"

run sm90 "$T_SM90" "$OUT/sm90.log" \
  "$PY" scripts/sm90_compile.py --markdown "$OUT/sm90_compile.md"

note "== files in $OUT:"
ls -1 "$OUT" | sed 's/^/   /' | tee -a "$SUMMARY" >/dev/null
worst=0
for k in tests report bench profile sm90; do
  rc=${RC[$k]:-0}
  # 124: a budget was reached; the phase still wrote what it had
  if [ "$rc" != 0 ] && [ "$rc" != 124 ] && [ "$rc" -gt "$worst" ]; then worst=$rc; fi
done
note "done: tests=${RC[tests]:-?} report=${RC[report]:-?} bench=${RC[bench]:-?} profile=${RC[profile]:-?} sm90=${RC[sm90]:-?} -> exit $worst"
exit "$worst"
