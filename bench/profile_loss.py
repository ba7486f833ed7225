"""Where the fused DPO loss spends its GPU time: torch.profiler over a few fwd+bwd steps at the SPEC
shape, kernels grouped by name, sorted by total device time.

    python -m bench.profile_loss [--pairs 8 --t 1024 --h 4096 --v 128256] [--out F]
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import rdpo_fast
from bench.loss_suite import _batch


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--t", type=int, default=1024)
    ap.add_argument("--h", type=int, default=4096)
    ap.add_argument("--v", type=int, default=128256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    dev = torch.device("cuda")
    x, w, target, ref = _batch(a.pairs, a.t, a.h, a.v, torch.bfloat16, dev, False)
    loss_fn = rdpo_fast.FusedLinearPreferenceLoss()

    def step():
        xx, ww = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
        loss, _ = loss_fn(ww, xx, target, ref_chosen_logps=ref[: a.pairs], ref_rejected_logps=ref[a.pairs:])
        loss.backward()

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(a.steps):
            step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70)
    print(f"per step = total / {a.steps}")
    print(table)
    if a.out:
        with open(a.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
