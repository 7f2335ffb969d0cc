"""Compile every Triton kernel for sm_90 (H100) on a machine without a GPU; report registers.

Triton's NVIDIA backend runs its whole pipeline (TTIR -> PTX -> cubin, with the ptxas shipped
in the wheel) for a ``GPUTarget("cuda", 90, 32)`` without a driver, so register use and spills
are known before any GPU run. Each case uses the tile and ``num_warps`` the launcher would pick
for that embedding dim (the kernels' own ``launch_shape`` helpers), so what is compiled is what
runs. A spill shows as a non-zero STACK or LOCAL in ``cuobjdump --dump-resource-usage``.

    python scripts/sm90_compile.py                  # table on stdout
    python scripts/sm90_compile.py --json           # one JSON list (the test reads it)
    python scripts/sm90_compile.py --markdown FILE  # the table, with this command, into FILE

TRITON_INTERPRET must be unset (the interpreter replaces ``@triton.jit`` with a Python runner).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("sm90_compile: unset TRITON_INTERPRET (the interpreter cannot compile)")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

DIMS = (1, 16, 100, 128, 4096)
PTR = {"float32": "*fp32", "bfloat16": "*bf16", "float16": "*fp16"}


def _bin(name: str) -> Path:
    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name


def has_nvidia_backend() -> bool:
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except ImportError:
        return False
    return _bin("cuobjdump").exists()


def _case(label, module, kernel, pointers, constexprs, num_warps, floats=(), ones=()):
    """One compile: ``pointers`` maps pointer args to element types; ``ones`` are the integer
    args equal to 1 (Triton specializes them as constants, as on a contiguous tensor); every
    other non-constexpr, non-float arg is an i32 scalar."""
    return dict(label=label, module=module, kernel=kernel, pointers=pointers,
                constexprs=constexprs, num_warps=num_warps, floats=tuple(floats), ones=tuple(ones))


def cases() -> list[dict]:
    """Representative specialisations of every kernel, with the launchers' own tiles."""
    from sparsemb.kernels import bag, gather, grad, optim, renorm

    out = []
    for dtype in ("float32", "bfloat16", "float16"):
        dims = DIMS if dtype == "float32" else (128,)
        for dim in dims:
            t = gather.launch_shape(dim)
            ptr = PTR[dtype]
            out.append(_case(f"gather {dtype} D={dim}", "gather", "_gather_kernel",
                             {"weight_ptr": ptr, "indices_ptr": "*i64", "out_ptr": ptr,
                              "bad_ptr": "*i32"},
                             {"CHECK": True, "ROWS": t.rows, "BLOCK_D": t.block_d}, t.num_warps,
                             ones=("stride_wd", "stride_i")))
            out.append(_case(f"renorm p=2 {dtype} D={dim}", "renorm", "_renorm_kernel",
                             {"weight_ptr": ptr, "rows_ptr": "*i64"},
                             {"NORM": renorm.NORM_TWO, "ROWS": t.rows, "BLOCK_D": t.block_d},
                             t.num_warps, floats=("max_norm", "threshold", "p", "eps"), ones=("stride_wd",)))
            for case in grad.compile_cases(dim, ptr):
                out.append(_case(f"{case['label']} {dtype} D={dim}", "grad", **case["spec"]))
            for case in optim.compile_cases(dim, ptr):
                out.append(_case(f"{case['label']} {dtype} D={dim}", "optim", **case["spec"]))
            b = bag.launch_shape(dim)
            bag_tile = {"BAGS": b.rows, "BLOCK_D": b.block_d}
            for mode, psw in ((0, True), (2, False)):  # sum with per-sample weights, max
                out.append(_case(f"bag forward mode={mode} {dtype} D={dim}", "bag",
                                 "_bag_forward_kernel",
                                 {"weight_ptr": ptr, "indices_ptr": "*i64", "offsets_ptr": "*i64",
                                  "psw_ptr": ptr, "out_ptr": ptr, "argmax_ptr": "*i64",
                                  "bad_ptr": "*i32"},
                                 {"MODE": mode, "HAS_PSW": psw, "CHECK": True, **bag_tile},
                                 b.num_warps, ones=("stride_wd", "stride_i")))
                out.append(_case(f"bag expand mode={mode} {dtype} D={dim}", "bag",
                                 "_expand_grad_kernel",
                                 {"grad_ptr": ptr, "indices_ptr": "*i64", "offsets_ptr": "*i64",
                                  "psw_ptr": ptr, "argmax_ptr": "*i64", "out_ptr": ptr},
                                 {"MODE": mode, "HAS_PSW": psw, **bag_tile}, b.num_warps,
                                 ones=("stride_i",)))
            out.append(_case(f"bag psw grad {dtype} D={dim}", "bag", "_psw_grad_kernel",
                             {"grad_ptr": ptr, "weight_ptr": ptr, "indices_ptr": "*i64",
                              "offsets_ptr": "*i64", "out_ptr": ptr},
                             bag_tile, b.num_warps, ones=("stride_wd", "stride_i")))
    for dim in (100, 128):  # a strided (transposed) table: column stride is not 1
        t = gather.launch_shape(dim)
        out.append(_case(f"gather strided float32 D={dim}", "gather", "_gather_kernel",
                         {"weight_ptr": "*fp32", "indices_ptr": "*i64", "out_ptr": "*fp32",
                          "bad_ptr": "*i32"},
                         {"CHECK": True, "ROWS": t.rows, "BLOCK_D": t.block_d}, t.num_warps))
    for dim in (16, 128):  # the renorm takes the sorted int32 keys of sort_keys
        t = gather.launch_shape(dim)
        out.append(_case(f"renorm p=2 keys=i32 float32 D={dim}", "renorm", "_renorm_kernel",
                         {"weight_ptr": "*fp32", "rows_ptr": "*i32"},
                         {"NORM": renorm.NORM_TWO, "ROWS": t.rows, "BLOCK_D": t.block_d},
                         t.num_warps, floats=("max_norm", "threshold", "p", "eps"), ones=("stride_wd",)))
    t = gather.launch_shape(100)
    out.append(_case("renorm p=3 float32 D=100", "renorm", "_renorm_kernel",
                     {"weight_ptr": "*fp32", "rows_ptr": "*i64"},
                     {"NORM": renorm.NORM_GENERAL, "ROWS": t.rows, "BLOCK_D": t.block_d},
                     t.num_warps, floats=("max_norm", "threshold", "p", "eps")))
    return out


def compile_case(case: dict) -> dict:
    """Compile one case for sm_90 and read its resource usage from the cubin."""
    import importlib

    module = importlib.import_module(f"sparsemb.kernels.{case['module']}")
    fn = getattr(module, case["kernel"])
    constexprs = dict(case["constexprs"])
    constexprs.update({name: 1 for name in case["ones"] if name in fn.arg_names})
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in case["pointers"]:
            signature[name] = case["pointers"][name]
        elif name in case["floats"]:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    target, options = GPUTarget("cuda", 90, 32), {"num_warps": case["num_warps"]}
    try:  # Triton 3.9 keys constexprs by name; older 3.x releases by argument-index tuples
        compiled = triton.compile(ASTSource(fn, signature, constexprs), target, options)
    except Exception:
        by_index = {(fn.arg_names.index(name),): v for name, v in constexprs.items()}
        compiled = triton.compile(ASTSource(fn, signature, by_index), target, options)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([str(_bin("cuobjdump")), "--dump-resource-usage", f.name],
                               capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    return dict(label=case["label"], kernel=case["kernel"], num_warps=case["num_warps"],
                constexprs={k: v for k, v in case["constexprs"].items()},
                pointers=dict(case["pointers"]),
                registers=int(fields["REG"]), stack=int(fields["STACK"]),
                local=int(fields["LOCAL"]), shared=int(fields["SHARED"]))


def markdown(results: list[dict]) -> str:
    lines = [
        "| case | kernel | num_warps | constexprs | registers | stack | local | spills |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        consts = ", ".join(f"{k}={v}" for k, v in r["constexprs"].items())
        spill = "yes" if r["stack"] or r["local"] else "no"
        lines.append(f"| {r['label']} | {r['kernel']} | {r['num_warps']} | {consts} | "
                     f"{r['registers']} | {r['stack']} | {r['local']} | {spill} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--markdown", type=Path, help="write the table (with the command) here")
    parser.add_argument("--only", default="", help="compile the cases whose label has this")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1))
    args = parser.parse_args()
    if not has_nvidia_backend():
        print(json.dumps({"skipped": "triton has no NVIDIA backend with cuobjdump"}))
        return 0
    todo = [case for case in cases() if args.only in case["label"]]
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(compile_case, todo))
    if args.json:
        print(json.dumps(results))
    else:
        print(markdown(results), end="")
    if args.markdown:
        header = (
            f"# sm_90 compile: registers and spills of every kernel\n\n"
            f"Triton {triton.__version__}, `GPUTarget(\"cuda\", 90, 32)`, compiled on a machine "
            f"without a GPU with the ptxas/cuobjdump of the triton wheel.\n\n"
            f"Command: `python scripts/sm90_compile.py --markdown {args.markdown}`\n\n"
        )
        args.markdown.write_text(header + markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
