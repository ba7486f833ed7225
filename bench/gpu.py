"""GPU benchmark of the per-token op against the naive path and the cuBLAS roofline, side by side in one
run. Writes bench/results/<device>-<date>-<suite>.json (or --out). `--cpu-smoke` runs tiny shapes on CPU.

FLOP convention: one logits GEMM is 2NHV. linear_logprobs forward is 2NHV; forward+backward 8NHV
(forward GEMM, recomputed logits, dX, dW); the fused DPO loss 6NHV (logits, dX, dW); a reference
forward 2NHV. TF/s are those useful FLOPs over the measured time, whatever an implementation
actually computes. The roofline is the same GEMMs timed alone in cuBLAS.

    python -m bench.gpu [--suite logprobs] [--n 16384 --h 4096 --v 128256] [--cpu-smoke] [--out F]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os

import torch

import rdpo_fast
from bench.loss_suite import check_loss_accuracy, loss_suite
from bench.timing import device_info, median_ms, peak_mib


def _inputs(n, h, v, dtype, device, realistic=False):
    g = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(n, h, device=device, dtype=dtype, generator=g)
    weight = torch.randn(v, h, device=device, dtype=dtype, generator=g) / h**0.5
    if realistic:
        # A peaked softmax, as a trained head gives: a few logits stand far above the rest.
        weight = weight * 4.0
    labels = torch.randint(0, v, (n,), device=device, generator=g)
    return hidden, weight, labels


def naive_logprobs(hidden, weight, labels):
    logits = hidden @ weight.t()
    return torch.log_softmax(logits.float(), dim=-1).gather(1, labels[:, None]).squeeze(1)


def _cce_logprobs(hidden, weight, labels):
    from cut_cross_entropy import linear_cross_entropy

    # CCE's own Triton kernels on CUDA; its torch.compile path elsewhere (its kernels need a GPU).
    impl = "cce" if hidden.is_cuda else "torch_compile"
    return -linear_cross_entropy(hidden, weight, labels, reduction="none", impl=impl)


def logprobs_suite(n, h, v, dtype, device, realistic):
    hidden, weight, labels = _inputs(n, h, v, dtype, device, realistic)
    up = torch.randn(n, device=device)
    gemm_tflop = 2 * n * h * v / 1e12
    rows = []

    def add(name, kind, fn, flops):
        try:
            ms = median_ms(fn, device)
            mib = peak_mib(fn, device)
        except torch.OutOfMemoryError:
            rows.append({"impl": name, "pass": kind, "error": "out of memory"})
            torch.cuda.empty_cache()
            return
        rows.append({"impl": name, "pass": kind, "median_ms": ms, "peak_mib": mib,
                     "tflops": flops / ms * 1e3 if flops else None})

    w_t = weight.t()
    add("cublas_gemm", "one 2NHV GEMM", lambda: hidden @ w_t, gemm_tflop)
    dz = torch.randn(n, v, device=device, dtype=dtype)
    add("cublas_gemm", "four 2NHV GEMMs (8NHV)",
        lambda dz=dz: (hidden @ w_t, hidden @ w_t, dz @ weight, dz.t() @ hidden), 4 * gemm_tflop)
    del dz

    for name, fn in (("rdpo_fast", rdpo_fast.linear_logprobs), ("naive", naive_logprobs),
                     ("cce", _cce_logprobs)):
        if name == "cce" and not _has("cut_cross_entropy"):
            continue

        def fwd(fn=fn):
            with torch.no_grad():
                return fn(hidden, weight, labels)

        def fwd_bwd(fn=fn):
            hh = hidden.detach().requires_grad_(True)
            ww = weight.detach().requires_grad_(True)
            fn(hh, ww, labels).backward(up)
            return hh.grad, ww.grad

        add(name, "forward (no_grad)", fwd, gemm_tflop)
        add(name, "forward+backward", fwd_bwd, 4 * gemm_tflop)
    return rows


def _has(mod):
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def check_against_naive(n, h, v, dtype, device):
    """Relative error of ours vs a float64 reference on a slice of the real shape."""
    from rdpo_fast.oracle import ref_linear_logprobs

    hidden, weight, labels = _inputs(n, h, v, dtype, device)
    hh = hidden.detach().requires_grad_(True)
    ww = weight.detach().requires_grad_(True)
    up = torch.randn(n, device=device)
    out = rdpo_fast.linear_logprobs(hh, ww, labels)
    out.backward(up)
    hd = hidden.double().requires_grad_(True)
    wd = weight.double().requires_grad_(True)
    ref = ref_linear_logprobs(hd, wd, labels)
    ref.backward(up.double())

    def rel(a, b):
        return ((a.double() - b).norm() / b.norm()).item()

    return {"logp": rel(out, ref), "d_hidden": rel(hh.grad, hd.grad), "d_weight": rel(ww.grad, wd.grad)}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default="logprobs", choices=["logprobs", "loss"])
    ap.add_argument("--pairs", type=int, default=8, help="loss suite: pairs of T tokens each")
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--h", type=int, default=4096)
    ap.add_argument("--v", type=int, default=128256)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    if a.cpu_smoke:
        device, a.n, a.h, a.v, a.pairs = torch.device("cpu"), 256, 64, 2000, 2
    else:
        device = torch.device("cuda")
    dtype = getattr(torch, a.dtype)
    result = {"suite": a.suite, **device_info(device), "date": datetime.date.today().isoformat(),
              "shape": {"N": a.n, "H": a.h, "V": a.v, "dtype": a.dtype},
              "flop_convention": "2NHV per logits GEMM; fwd 2NHV, fwd+bwd 8NHV"}
    if a.suite == "logprobs":
        result["accuracy_vs_float64"] = check_against_naive(min(a.n, 1024), a.h, min(a.v, 32768), dtype, device)
        result["random"] = logprobs_suite(a.n, a.h, a.v, dtype, device, realistic=False)
        result["realistic"] = logprobs_suite(a.n, a.h, a.v, dtype, device, realistic=True)
    else:
        T = a.n // (2 * a.pairs)
        result["shape"].update(pairs=a.pairs, T=T)
        result["accuracy_vs_float64"] = check_loss_accuracy(2, min(T, 128), a.h, min(a.v, 32768), dtype, device)
        result["random"] = loss_suite(a.pairs, T, a.h, a.v, dtype, device, realistic=False)
        result["realistic"] = loss_suite(a.pairs, T, a.h, a.v, dtype, device, realistic=True)
    base = next(r["median_ms"] for r in result["random"] if "error" not in r)
    for r in result["random"] + result["realistic"]:
        if "median_ms" in r:
            r["x_one_gemm"] = r["median_ms"] / base
    out = a.out or os.path.join(os.path.dirname(__file__), "results",
                                f"{result['device'].replace(' ', '_')}-{result['date']}-{a.suite}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result["accuracy_vs_float64"]))
    for kind in ("random", "realistic"):
        print(f"-- {kind} hidden states, N={a.n} H={a.h} V={a.v} {a.dtype} on {result['device']}")
        for r in result[kind]:
            if "error" in r:
                print(f"{r['impl']:34s} {r['pass']:24s} {r['error']}")
            else:
                mem = "" if r["peak_mib"] is None else f"{r['peak_mib']:9.0f} MiB"
                spread = f"  [{r['p10_ms']:.2f}, {r['p90_ms']:.2f}]" if "p10_ms" in r else ""
                print(f"{r['impl']:34s} {r['pass']:24s} {r['median_ms']:9.2f} ms  x{r['x_one_gemm']:5.2f}"
                      f"  {r['tflops'] or 0:6.0f} TF/s {mem}{spread}")
    return result


if __name__ == "__main__":
    main()
