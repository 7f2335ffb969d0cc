"""Measurement: step timing, peak memory, bytes moved, and one provider's row of numbers.

- ``time_steps`` times warmup then timed rounds (on CUDA a round is several steps and one
  synchronize); ``summarize`` gives median, p20/p80, min, steps/s;
- ``PeakMemory`` measures a provider's peak memory: CUDA ``max_memory_allocated`` over the
  baseline, or on CPU the process' peak RSS (VmHWM, reset through ``/proc/self/clear_refs``) over
  the RSS before the provider was built;
- ``run_provider`` builds and times one provider and returns its row; ``add_ratios`` sets each
  row's time over ours.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import math
import os
import statistics
import time
from collections.abc import Callable

import torch

from .providers import Group, Provider, Unavailable
from .workloads import Inputs, Workload


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return int(pages)


def memory_check(provider: Provider, workload: Workload, device: torch.device) -> str | None:
    """A reason to skip when the provider's tables (plus the shared initial copy) won't fit."""
    need = (provider.table_copies + 1) * workload.table_bytes * 1.1
    have = available_memory(device)
    if need > have:
        return (
            f"needs ~{need / 2**30:.1f} GiB ({provider.table_copies:g}+1 tables of "
            f"{workload.table_bytes / 2**30:.1f} GiB), {have / 2**30:.1f} GiB available"
        )
    return None



def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """The function the timers call: one step plus a device synchronize on GPU."""
    if device.type == "cuda":

        def run() -> None:
            step()
            torch.cuda.synchronize(device)

        return run

    def run_cpu() -> None:
        step()

    return run_cpu


def time_steps(
    step: Callable[[], object],
    device: torch.device,
    warmup: int = 2,
    repeat: int = 5,
    budget_s: float = 3.0,
    min_rounds: int = 3,
    min_round_s: float = 0.005,
    cpu_times: list[float] | None = None,
    phases: dict[str, Callable[[], object]] | None = None,
    phase_times: dict[str, list[float]] | None = None,
) -> list[float]:
    """Seconds per step of each timed round: ``repeat`` rounds, fewer (not under ``min_rounds``)
    when the rounds pass ``budget_s``; warmup rounds stop early (after two) when one takes over
    ``budget_s``.

    On CPU a round is one step. On CUDA a round is k back-to-back steps and one synchronize, k
    chosen so a round lasts about ``min_round_s``: a 30 us gather is not timed against a 10 us
    synchronize and the timer's own overhead. ``cpu_times``, when given, receives each round's
    process CPU time per step (all threads): the work done, whatever else runs on the machine.

    ``phases`` ({name: callable}, one step in order) with ``phase_times``: each phase's seconds
    per round go to ``phase_times[name]``. On CPU the timed rounds run the phases with a
    ``perf_counter`` between them (no other cost); on CUDA the timed rounds stay as they are and
    a separate pass of as many single steps synchronizes after each phase.
    """
    if phases and phase_times is not None and device.type == "cpu":
        order = tuple(phases.items())
        for name in phases:
            phase_times.setdefault(name, [])

        def step() -> None:
            t = time.perf_counter()
            for name, phase in order:
                phase()
                now = time.perf_counter()
                phase_times[name].append(now - t)
                t = now

    run = timed(step, device)
    for i in range(warmup):
        t0 = time.perf_counter()
        run()
        # the first round may compile or allocate lazily; stop after a slow steady round
        if i >= 1 and time.perf_counter() - t0 > budget_s:
            break
    inner = 1
    if device.type == "cuda":
        t0 = time.perf_counter()
        run()
        probe = time.perf_counter() - t0
        inner = max(1, min(200, int(min_round_s / max(probe, 1e-7))))

    def round_() -> None:
        for _ in range(inner - 1):
            step()
        run()

    times: list[float] = []
    spent = 0.0
    while len(times) < repeat:
        c0, t0 = time.process_time(), time.perf_counter()
        round_()
        dt = time.perf_counter() - t0
        times.append(dt / inner)
        if cpu_times is not None:
            cpu_times.append((time.process_time() - c0) / inner)
        spent += dt
        if len(times) >= min_rounds and spent > budget_s:
            break
    if phases and phase_times is not None:
        if device.type == "cpu":  # keep the timed rounds' entries, drop the warmup's
            for name in phase_times:
                del phase_times[name][: -len(times)]
        else:
            _time_phases_synced(phases, device, len(times), phase_times)
    return times


def _time_phases_synced(phases, device, rounds: int, phase_times: dict) -> None:
    """``rounds`` single steps, a synchronize after each phase: seconds per phase (GPU)."""
    for name in phases:
        phase_times[name] = []
    for _ in range(rounds):
        synchronize(device)
        for name, phase in phases.items():
            t0 = time.perf_counter()
            phase()
            synchronize(device)
            phase_times[name].append(time.perf_counter() - t0)


def summarize(times: list[float]) -> dict:
    ordered = sorted(times)

    def quantile(q: float) -> float:
        if len(ordered) == 1:
            return ordered[0]
        pos = q * (len(ordered) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    median = statistics.median(ordered)
    return {
        "median_s": median,
        "p20_s": quantile(0.2),
        "p80_s": quantile(0.8),
        "min_s": ordered[0],
        "rounds": len(ordered),
        "steps_per_s": 1.0 / median if median > 0 else float("inf"),
    }


def _rss_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmHWM:", "VmRSS:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    return out


def _malloc_trim() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def can_reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return "VmHWM" in _rss_status()
    except OSError:
        return False


_UNFREEZE_REGISTERED = False


def _unfreeze_at_exit() -> None:
    """Give frozen objects back to the collector at exit (bindings report them as leaks)."""
    global _UNFREEZE_REGISTERED
    if not _UNFREEZE_REGISTERED:
        atexit.register(gc.unfreeze)
        _UNFREEZE_REGISTERED = True


class PeakMemory:
    """Peak memory of a block over the memory in use when it starts.

    CUDA: ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` at entry (tensors only).
    CPU: the process' peak resident set (VmHWM, reset at entry by writing 5 to
    ``/proc/self/clear_refs``) minus the resident set at entry, after a garbage collection and a
    ``malloc_trim`` so freed memory of earlier blocks is not reused unseen. ``method`` names the
    method; ``peak_bytes`` is None where neither works (e.g. no /proc).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes: int | None = None
        self.method = "none"

    def __enter__(self) -> PeakMemory:
        gc.collect()  # free the tables of earlier blocks held in reference cycles, then
        gc.freeze()  # move the survivors out of the collector's sight: later collects stay fast
        _unfreeze_at_exit()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated over baseline"
        else:
            _malloc_trim()
            if can_reset_peak_rss():
                self._base = _rss_status()["VmRSS"]
                self.method = "peak RSS (VmHWM reset) over baseline RSS"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self.method != "none":
            self.peak_bytes = max(0, _rss_status()["VmHWM"] - self._base)


def gather_bytes(workload: Workload, unique_rows: int, max_norm: bool) -> int:
    """Bytes a gather reads and writes: N rows read, N rows written, N indices (+ norm reads)."""
    row = workload.embedding_dim * workload.element_size
    n = workload.num_indices
    out = 2 * n * row + 8 * n
    if max_norm:
        out += unique_rows * row
    return out


def optimizer_bytes(workload: Workload, rows: int, state_row_bytes: float) -> int:
    """Bytes an update of ``rows`` rows reads and writes: weight (r+w), gradient (r), state (r+w),
    and the row ids."""
    row = workload.embedding_dim * workload.element_size
    return int(rows * (3 * row + 2 * state_row_bytes + 8))


def measure_copy_bandwidth(device: torch.device, nbytes: int | None = None, repeat: int = 10):
    """GB/s of ``dst.copy_(src)`` on a large buffer (bytes read + written), median of ``repeat``."""
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    run = timed(lambda: dst.copy_(src), device)
    run()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"bytes": 2 * nbytes, "median_s": median, "gbps": 2 * nbytes / median / 1e9}


def run_provider(
    group: Group,
    provider: Provider,
    inputs: Inputs,
    warmup: int = 2,
    repeat: int = 5,
    budget_s: float = 3.0,
    compile_ok: bool = True,
) -> dict:
    """Build and time one provider on ``inputs``; a dict of the raw numbers (or a skip reason)."""
    w = inputs.workload
    row = {
        "group": group.name,
        "provider": provider.name,
        "system": provider.system,
        "ours": provider.ours,
        "workload": w.as_dict(),
        "workload_label": w.label(),
        "unique_rows": inputs.unique_rows,
        "skipped": None,
    }
    if provider.needs_compile and not compile_ok:
        row["skipped"] = "torch.compile peers are off in this run (--compile to include them)"
        return row
    reason = memory_check(provider, w, inputs.device)
    if reason:
        row["skipped"] = reason
        return row
    mem = PeakMemory(inputs.device)
    try:
        with mem:
            t_build = time.perf_counter()
            case = provider.build(inputs)
            build_s = time.perf_counter() - t_build
            cpu_times: list[float] = []
            phase_times: dict[str, list[float]] = {}
            times = time_steps(
                case.step, inputs.device, warmup, repeat, budget_s, cpu_times=cpu_times,
                phases=case.phases, phase_times=phase_times,
            )
            in_backward = case.in_backward
            weights_b, state_b = case.resident_bytes()
            state_row = case.state_row_bytes(w.num_embeddings)
    except Unavailable as exc:
        row["skipped"] = str(exc)
        return row
    finally:
        case = None  # noqa: F841  (free the tables before the next provider)
        gc.collect()
    row.update(summarize(times))
    row["times_s"] = times
    row["cpu_median_s"] = statistics.median(cpu_times)
    row["build_s"] = build_s
    if phase_times:
        row["phase_median_s"] = {k: statistics.median(v) for k, v in phase_times.items() if v}
        row["phase_times_s"] = phase_times
        row["phase_method"] = (
            "perf_counter between phases in the timed rounds" if inputs.device.type == "cpu"
            else "a separate pass, cuda synchronize after each phase"
        )
        row["optimizer_in_backward"] = in_backward
    row["memory_method"] = mem.method
    row["peak_bytes"] = mem.peak_bytes
    row["weights_bytes"] = weights_b
    row["state_bytes"] = state_b
    row["scratch_bytes"] = (
        None if mem.peak_bytes is None else mem.peak_bytes - weights_b - state_b
    )
    if group.kind == "forward":
        nbytes = gather_bytes(w, inputs.unique_rows, "max_norm" in group.name)
    elif group.kind == "optim":
        nbytes = optimizer_bytes(w, inputs.unique_rows, state_row)
    else:
        nbytes = None
    row["bytes_per_step"] = nbytes
    row["gbps"] = None if nbytes is None else nbytes / row["median_s"] / 1e9
    return row


def add_ratios(rows: list[dict]) -> None:
    """Set ``ratio`` (this provider's median / ours, >1: sparsemb is faster) on every timed row
    and ``peer_ratios`` ({peer: ratio}) on ours, within each (group, workload, malloc mode)."""
    by_key: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["group"], r["workload_label"], r.get("malloc", "default"))
        by_key.setdefault(key, []).append(r)
    for members in by_key.values():
        ours = next((r for r in members if r["ours"] and r.get("median_s")), None)
        for r in members:
            r["ratio"] = None
        if ours is None:
            continue
        ours["peer_ratios"] = {}
        for r in members:
            if r.get("median_s"):
                r["ratio"] = r["median_s"] / ours["median_s"]
                if r is not ours:
                    ours["peer_ratios"][r["provider"]] = r["ratio"]
