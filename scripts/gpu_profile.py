"""Profile warm training steps on the GPU: per-kernel time, launches, syncs, step time, GB/s.

For sparsemb (default step, and fused backward with ``bounds_check="none"``) and for
``nn.Embedding(sparse=True)`` + ``torch.optim.SparseAdam`` on the same card, at V=1e6, D=128,
N=65,536 Zipf(1.2), fp32 (issue 12's target): a ``torch.profiler`` trace of warm steps gives the
time of each kernel, the kernel launches per step, ``cudaStreamSynchronize`` and memcpy calls per
step; CUDA events give the step time, compared with a measured device copy of the bytes a step
must move. Then the fused sparsemb step with ``bounds_check="none"`` is captured in a CUDA graph
and replayed (it has no host sync, so capture must succeed).

    python scripts/gpu_profile.py --out DIR            # on a CUDA machine (scripts/gpu_all.sh)
    python scripts/gpu_profile.py --device cpu --smoke # dry run of the script on CPU

Writes DIR/profile.md (tables) and DIR/trace-<case>.json (Chrome traces).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparsemb  # noqa: E402


def zipf(n, v, device, seed):
    g = torch.Generator().manual_seed(seed)
    probs = 1.0 / torch.arange(1, v + 1, dtype=torch.float64) ** 1.2
    return torch.multinomial(probs, n, replacement=True, generator=g).to(device)


def build(case, v, d, device):
    """(step(idx, grad_out), module) of one provider."""
    if case == "torch":
        table = torch.nn.Embedding(v, d, sparse=True, device=device)
        opt = torch.optim.SparseAdam(table.parameters(), lr=1e-3)
    else:
        bounds = "none" if case == "sparsemb-fused" else "raise"
        table = sparsemb.Embedding(v, d, sparse=True, bounds_check=bounds, device=device)
        opt = sparsemb.optim.SparseAdam(table.parameters(), lr=1e-3)
        if case == "sparsemb-fused":
            opt.enable_fused_backward()

    def step(idx, grad_out):
        table(idx).backward(grad_out)
        if case != "sparsemb-fused":
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, reps):
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / reps


def profile_case(case, args, device, batches, out_dir):
    from torch.profiler import ProfilerActivity, profile

    v, d = args.num_embeddings, args.dim
    step = build(case, v, d, device)
    for idx, g in batches[:3]:  # warm: compile, allocate state
        step(idx, g)
    reps = len(batches) - 3
    seconds = timed(lambda: [step(i, g) for i, g in batches[3:]], device, 1) / reps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with profile(activities=activities) as prof:
        for idx, g in batches[3:]:
            step(idx, g)
        sync(device)
    prof.export_chrome_trace(str(out_dir / f"trace-{case}.json"))
    events = prof.key_averages()
    kernels = [e for e in events if getattr(e, "device_time_total", 0) > 0
               and e.device_type == torch.autograd.DeviceType.CUDA]
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel",
                                                         "cudaLaunchKernelExC", "cuLaunchKernelEx"))
    syncs = sum(e.count for e in events if "Synchronize" in e.key)
    memcpys = sum(e.count for e in events if "Memcpy" in e.key or "memcpy" in e.key)
    top = sorted(kernels, key=lambda e: -e.device_time_total)[:12]
    rows = [f"| {e.key[:70]} | {e.count / reps:.1f} | {e.device_time_total / e.count:.1f} |"
            for e in top]
    return {"case": case, "step_us": seconds * 1e6, "launches": launches / reps,
            "syncs": syncs / reps, "memcpys": memcpys / reps, "kernels": rows}


def host_profile(case, args, device, batches, top=15):
    """Where the host's time of a warm step goes: ``cProfile`` over the warm steps (one sync at
    the end), the functions with the most own time, per step. On a GPU the eager step is
    host-bound (Python, dispatch, Triton's launch path), so this is what a faster step cuts."""
    import cProfile
    import pstats

    step = build(case, args.num_embeddings, args.dim, device)
    for idx, g in batches[:3]:
        step(idx, g)
    reps = len(batches) - 3
    profiler = cProfile.Profile()
    sync(device)
    profiler.enable()
    for idx, g in batches[3:]:
        step(idx, g)
    sync(device)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total_us = stats.total_tt / reps * 1e6
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:top]  # by own time
    lines = ["", f"## {case}: host time per step under cProfile: {total_us:.0f} us "
             f"(top {top} functions by own time)", "",
             "| function | calls/step | own us/step | cumulative us/step |", "|---|---|---|---|"]
    for (path, line, name), (_, calls, own, cumulative, _) in rows:
        where = f"{Path(path).name}:{line}" if line else path
        lines.append(f"| {name} ({where}) | {calls / reps:.1f} | {own / reps * 1e6:.1f} | "
                     f"{cumulative / reps * 1e6:.1f} |")
    return lines


def graph_capture(args, device, batches):
    """Capture the fused, unchecked sparsemb step in a CUDA graph and replay it."""
    if device.type != "cuda":
        return "skipped (no CUDA device)"
    step = build("sparsemb-fused", args.num_embeddings, args.dim, device)
    idx, g = (t.clone() for t in batches[0])
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            step(idx, g)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            step(idx, g)
    except Exception as exc:  # the report says why capture failed
        return f"capture failed: {type(exc).__name__}: {exc}"
    seconds = timed(graph.replay, device, 50)
    return f"captured; replay {seconds * 1e6:.1f} us per step"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path("bench/results/profile"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (a dry run)")
    parser.add_argument("--num-embeddings", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=65_536)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if args.smoke:
        args.num_embeddings, args.dim, args.batch, args.steps = 2000, 16, 512, 5
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    v, d, n = args.num_embeddings, args.dim, args.batch
    batches = [(zipf(n, v, device, s), torch.randn(n, d, device=device))
               for s in range(args.steps)]
    # bytes a step must move: read N gradient rows, write/read the unique rows of the weight
    # and the two Adam moments, read N indices and the table rows of the forward
    unique = int(torch.unique(batches[0][0]).numel())
    step_bytes = 4 * (2 * n * d + n + 6 * unique * d)
    src = torch.empty(step_bytes // 4, device=device)
    dst = torch.empty_like(src)
    copy_s = timed(lambda: dst.copy_(src), device, 20)
    copy_gbs = 2 * step_bytes / copy_s / 1e9
    lines = [f"# Warm-step profile, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"
             f"; torch {torch.__version__}; V={v}, D={d}, N={n} Zipf(1.2), fp32, SparseAdam; "
             f"{unique} unique rows; {step_bytes / 1e6:.1f} MB a step must move; "
             f"measured copy {copy_gbs:.0f} GB/s", "",
             "| case | step (us) | GB/s | launches/step | syncs/step | memcpy/step |",
             "|---|---|---|---|---|---|"]
    details = []
    for case in ("sparsemb", "sparsemb-fused", "torch"):
        r = profile_case(case, args, device, batches, args.out)
        lines.append(f"| {case} | {r['step_us']:.1f} | {step_bytes / r['step_us'] / 1e3:.0f} | "
                     f"{r['launches']:.1f} | {r['syncs']:.1f} | {r['memcpys']:.1f} |")
        details += ["", f"## {case}: kernels (top 12 by time)", "",
                    "| kernel | calls/step | us/call |", "|---|---|---|", *r["kernels"]]
    for case in ("sparsemb", "sparsemb-fused"):
        details += host_profile(case, args, device, batches)
    lines += ["", f"CUDA graph of the fused step (bounds_check=\"none\"): "
              f"{graph_capture(args, device, batches)}", *details]
    (args.out / "profile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
