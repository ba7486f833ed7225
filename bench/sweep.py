"""Sweep of the SPEC's shapes (Llama-3-8B and Qwen2.5-7B heads, N in {2048, 8192, 16384, 32768} completion
tokens in sequences of 1024, bf16): our fused DPO loss, reference forward and per-token op against the
cuBLAS GEMMs of the same shapes, in one run. Peers at the headline shape are in the loss suite.

    python -m bench.sweep [--out F]
"""
from __future__ import annotations

import argparse
import datetime
import json

import torch

import rdpo_fast
from bench.loss_suite import _batch
from bench.timing import device_info, median_ms, peak_mib

HEADS = {"llama3-8b": (4096, 128256), "qwen2.5-7b": (3584, 152064)}
NS = (2048, 8192, 16384, 32768)
T = 1024


def shape_rows(head, N, device):
    H, V = HEADS[head]
    pairs = N // (2 * T)
    x, w, target, ref = _batch(pairs, T, H, V, torch.bfloat16, device, False)
    x2 = x.view(N, H)
    gemm = 2 * N * H * V / 1e12
    out = {"head": head, "N": N, "H": H, "V": V}

    def timed(fn):
        return median_ms(fn, device), peak_mib(fn, device)

    out["gemm_ms"], _ = timed(lambda: x2 @ w.t())
    dz = torch.randn(N, V, device=device, dtype=torch.bfloat16)
    out["gemm3_ms"], _ = timed(lambda dz=dz: (x2 @ w.t(), dz @ w, dz.t() @ x2))
    del dz
    loss_fn = rdpo_fast.FusedLinearPreferenceLoss()

    def dpo():
        xx, ww = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
        loss, _ = loss_fn(ww, xx, target, ref_chosen_logps=ref[:pairs], ref_rejected_logps=ref[pairs:])
        loss.backward()

    def ref_fwd():
        with torch.no_grad():
            rdpo_fast.sequence_logprobs(x, w, target)

    def per_token():
        xx, ww = x2.detach().requires_grad_(True), w.detach().requires_grad_(True)
        rdpo_fast.linear_logprobs(xx, ww, target.view(-1)).sum().backward()

    out["dpo_ms"], out["dpo_peak_mib"] = timed(dpo)
    out["ref_fwd_ms"], out["ref_fwd_peak_mib"] = timed(ref_fwd)
    out["per_token_ms"], out["per_token_peak_mib"] = timed(per_token)
    out["dpo_roofline_ratio"] = out["gemm3_ms"] / out["dpo_ms"]
    out["ref_fwd_x_gemm"] = out["ref_fwd_ms"] / out["gemm_ms"]
    out["dpo_tflops"] = 3 * gemm / out["dpo_ms"] * 1e3
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    dev = torch.device("cuda")
    rows = []
    for head in HEADS:
        for N in NS:
            r = shape_rows(head, N, dev)
            rows.append(r)
            print(f"{head:11s} N={N:6d}  gemm {r['gemm_ms']:7.2f}  3gemm {r['gemm3_ms']:7.2f}  dpo {r['dpo_ms']:7.2f} "
                  f"({r['dpo_roofline_ratio']:.2f} of roofline, {r['dpo_peak_mib']:.0f} MiB)  ref fwd "
                  f"{r['ref_fwd_ms']:7.2f} (x{r['ref_fwd_x_gemm']:.2f})  per-token fwd+bwd {r['per_token_ms']:7.2f}",
                  flush=True)
            torch.cuda.empty_cache()
    result = {"suite": "sweep", **device_info(dev), "date": datetime.date.today().isoformat(), "T": T,
              "dtype": "bfloat16", "flop_convention": "GEMM 2NHV; fused DPO 6NHV; ref forward 2NHV", "rows": rows}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
