"""What the report says about the machine: device, versions, git commit, load, lscpu."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def device_info(device: str) -> dict:
    import torch

    info = {"device": device, "torch": torch.__version__, "python": platform.python_version()}
    if device == "cuda":
        info["device_name"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    else:
        info["device_name"] = cpu_name()
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
    info["git_commit"] = git_commit()
    return info


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def load_line(start, end, device) -> str:
    """The machine's load around the sweep; a warning where other work competed for the CPUs."""
    if start is None:
        return ""
    cpus = os.cpu_count() or 1
    line = f"- load average (1 min) before / after the sweep: {start} / {end} on {cpus} CPUs"
    if device == "cpu" and start > 0.5 * cpus:
        line += " (**busy machine: other processes competed for the CPUs, timings are noisy**)"
    return line + "\n"


def git_commit() -> str | None:
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


def machine_text(device: str) -> str:
    if device == "cuda":
        cmd = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"]
    else:
        cmd = ["lscpu"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
        return "\n".join(out.splitlines()[:20])
    except Exception:
        return ""

