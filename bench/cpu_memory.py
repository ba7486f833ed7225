"""Peak CPU memory of each benchmark case's forward+backward (bench/cases.py). Each case runs in a fresh
process; its peak is the rise of the resident-set high-water mark (VmHWM, reset just before the run)
over what the process held after building the inputs and warming up on a small slice (torch has no CPU
allocator counter). Compiled peers (CCE's
torch.compile path) may count some compiler memory too.

    python -m bench.cpu_memory [--kind logprobs|dpo] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

from bench.cases import CPU_SHAPES, DPO_CASES, LOGPROB_CASES


def status_mib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak():
    """Reset the kernel's resident-set high-water mark (VmHWM) to the current resident set, so the peak
    read after the run belongs to the run alone, not to imports or warm-up before it."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _child(name, shape):
    import torch  # noqa: F401

    from bench.cases import make_inputs, run_case
    from rdpo_fast.ops.backend import backend

    small = dict(shape)
    small["n" if "n" in small else "t"] = 8
    run_case(name, make_inputs(name, small))  # warm code paths and the allocator
    inp = make_inputs(name, shape)
    reset_peak()
    base = status_mib("VmRSS")
    run_case(name, inp)
    print(json.dumps({"case": name, "peak_mib": status_mib("VmHWM") - base, "backend": backend(inp["hidden"])}))


def measure(name, shape, env=None):
    res = subprocess.run([sys.executable, "-m", "bench.cpu_memory", "--child", name, "--shape", json.dumps(shape)],
                         capture_output=True, text=True, env={**os.environ, **(env or {})})
    if res.returncode:
        raise RuntimeError(f"{name} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(kind="logprobs", shape=None, env=None):
    shape = shape or CPU_SHAPES[kind]
    cases = LOGPROB_CASES if kind == "logprobs" else DPO_CASES
    rows = [measure(c, shape, env) for c in cases]
    naive = rows[0]["peak_mib"]
    for r in rows:
        r["ratio_to_naive"] = r["peak_mib"] / naive
    import torch

    return {"machine": f"{platform.machine()} {os.cpu_count()} cores", "torch": torch.__version__,
            "kind": kind, "shape": {**shape, "dtype": "float32"}, "rows": rows}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--shape")
    ap.add_argument("--kind", default="logprobs", choices=["logprobs", "dpo"])
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    if a.child:
        return _child(a.child, json.loads(a.shape))
    out = run(a.kind)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    print(f"{a.kind} {out['shape']} on {out['machine']}")
    for r in out["rows"]:
        print(f"{r['case']:22s} peak +{r['peak_mib']:8.1f} MiB  x{r['ratio_to_naive']:.3f} of naive  ({r['backend']})")


if __name__ == "__main__":
    main()
