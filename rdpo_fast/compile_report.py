"""Ahead-of-time compilation of every Triton kernel for NVIDIA targets, on any machine (no GPU needed):
Triton lowers each variant listed in a kernel module's COMPILE_SPECS to PTX, and the ptxas bundled with
Triton reports registers, spills, stack and shared memory. This catches what the interpreter cannot
(invalid shapes for the hardware, register spills) and is the static Hopper report of the benchmarks.

    python -m rdpo_fast.compile_report [--arch 90 80] [--json FILE]   # exit 1 on any spill

Must run with TRITON_INTERPRET unset: interpreted kernels cannot be compiled.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile

KERNEL_PACKAGE = "rdpo_fast.kernels"


def kernel_modules():
    pkg = importlib.import_module(KERNEL_PACKAGE)
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"{KERNEL_PACKAGE}.{info.name}")
        if hasattr(mod, "COMPILE_SPECS"):
            yield mod


def _ptxas(arch: int) -> str:
    # The assembler Triton itself uses for this architecture: triton 3.9 emits PTX 9.x for sm_90 and
    # assembles it with its CUDA 13 `ptxas-blackwell`; the CUDA 12.9 `ptxas` it also ships refuses that PTX.
    from triton.backends.nvidia import compiler

    return compiler.get_ptxas(arch).path


def _ptxas_stats(ptx: str, arch: int) -> dict:
    ptxas = _ptxas(arch)
    # Triton targets sm_90a on Hopper; assemble for whatever the PTX names.
    target = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        res = subprocess.run([ptxas, f"-arch={target}", "-v", src, "-o", os.path.join(d, "k.cubin")],
                             capture_output=True, text=True, check=True)
    log = res.stdout + res.stderr

    def num(pattern):
        m = re.search(pattern, log)
        return int(m.group(1)) if m else 0

    return {
        "registers": num(r"Used (\d+) registers"),
        "spill_stores": num(r"(\d+) bytes spill stores"),
        "spill_loads": num(r"(\d+) bytes spill loads"),
        "stack_bytes": num(r"(\d+) bytes stack frame"),
        "ptxas_log": log.strip(),
    }


def _spec_name(spec):
    if "name" in spec:
        return spec["name"]
    consts = ",".join(f"{k}={v}" for k, v in spec["constexprs"].items() if not k.startswith("BLOCK"))
    return f"{spec['fn'].__name__}[{consts}]"


def compile_all(archs=(90,)):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("compile_report needs TRITON_INTERPRET unset (interpreted kernels cannot compile)")
    rows = []
    for mod in kernel_modules():
        for spec in mod.COMPILE_SPECS:
            for arch in archs:
                src = ASTSource(fn=spec["fn"], signature=spec["signature"], constexprs=spec["constexprs"])
                ck = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                    options={"num_warps": spec["num_warps"],
                                             "num_stages": spec.get("num_stages", 3)})
                stats = _ptxas_stats(ck.asm["ptx"], arch)
                rows.append({"module": mod.__name__.rsplit(".", 1)[1], "function": spec["fn"].__name__,
                             "kernel": _spec_name(spec),
                             "arch": f"sm_{arch}", "num_warps": spec["num_warps"],
                             "shared_bytes": ck.metadata.shared, **stats})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[90])
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    rows = compile_all(args.arch)
    import triton

    out = {"triton": triton.__version__, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    print(f"{'kernel':70s} {'arch':6s} {'regs':>4s} {'spill':>5s} {'smem':>6s}")
    for r in rows:
        print(f"{r['kernel']:70s} {r['arch']:6s} {r['registers']:4d} "
              f"{r['spill_stores'] + r['spill_loads']:5d} {r['shared_bytes']:6d}")
    spilled = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
    if spilled:
        print(f"{len(spilled)} variant(s) spill registers", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
