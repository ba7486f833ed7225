"""Peak memory of linear_logprobs forward+backward against the naive path (full logits, log_softmax,
gather) on CPU. Each variant runs in a fresh process; its peak is the rise of the process's maximum
resident set over what it held after building the inputs (torch has no CPU allocator counter).

    python -m bench.cpu_memory [--n 4096 --h 256 --v 32000] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys

VARIANTS = ("naive", "rdpo_fast")


def _rss_mib():
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(variant, n, h, v, ignore_frac, seed):
    import torch

    import rdpo_fast

    torch.manual_seed(seed)
    hidden = torch.randn(n, h, requires_grad=True)
    weight = (torch.randn(v, h) / h**0.5).requires_grad_(True)
    labels = torch.randint(0, v, (n,))
    labels[torch.rand(n) < ignore_frac] = -100
    upstream = torch.randn(n)
    # Warm the allocator and code paths on a tiny problem so only the real run's rise is counted.
    rdpo_fast.linear_logprobs(hidden[:2], weight, labels[:2]).sum().backward()
    hidden.grad = None
    weight.grad = None
    base = _rss_mib()
    if variant == "naive":
        logits = hidden @ weight.t()
        logp = torch.log_softmax(logits.float(), dim=-1)
        mask = labels != -100
        out = logp.gather(1, labels.clamp_min(0)[:, None]).squeeze(1) * mask
    else:
        out = rdpo_fast.linear_logprobs(hidden, weight, labels)
    out.backward(upstream)
    peak = _rss_mib() - base
    print(json.dumps({"variant": variant, "peak_mib": peak, "backend": rdpo_fast.ops.backend(hidden)}))


def run(n=4096, h=256, v=32000, ignore_frac=0.0, seed=0, env=None):
    rows = []
    for variant in VARIANTS:
        cmd = [sys.executable, "-m", "bench.cpu_memory", "--child", variant, "--n", str(n), "--h", str(h),
               "--v", str(v), "--ignore-frac", str(ignore_frac), "--seed", str(seed)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True,
                             env={**os.environ, **(env or {})})
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    naive = rows[0]["peak_mib"]
    out = {
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "shape": {"N": n, "H": h, "V": v, "dtype": "float32", "ignored_fraction": ignore_frac},
        "logits_mib": n * v * 4 / 2**20, "rows": rows,
        "ratio_rdpo_fast_to_naive": rows[1]["peak_mib"] / naive,
    }
    import torch

    out["torch"] = torch.__version__
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--h", type=int, default=256)
    ap.add_argument("--v", type=int, default=32000)
    ap.add_argument("--ignore-frac", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    if a.child:
        return _child(a.child, a.n, a.h, a.v, a.ignore_frac, a.seed)
    out = run(a.n, a.h, a.v, a.ignore_frac, a.seed)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    for r in out["rows"]:
        print(f"{r['variant']:10s} peak +{r['peak_mib']:8.1f} MiB  ({r['backend']})")
    print(f"ratio rdpo_fast / naive: {out['ratio_rdpo_fast_to_naive']:.3f}   "
          f"(full logits would be {out['logits_mib']:.0f} MiB)")


if __name__ == "__main__":
    main()
