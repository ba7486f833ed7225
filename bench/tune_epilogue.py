"""Sweeps block sizes and warps of the two epilogue kernels on a real-size logits chunk (GPU only) and
reports achieved bandwidth against a device-to-device copy of the same bytes. Then the one-pass epilogue
kernel (epilogue="one_pass") at each config and over its persistent grid's size: its time against the
two kernels' sum is the saving, and its bandwidth counted as one read + one write of the chunk shows
whether its second sweep found the rows in L2: near the dZ kernel's rate (which moves those same bytes)
it did; at two thirds of it, it read the logits from HBM twice.

    python -m bench.tune_epilogue [--rows 2048 --v 128256] [--out F]
"""
from __future__ import annotations

import argparse
import json

import torch

from bench.timing import device_info, median_ms
from rdpo_fast.kernels import logprob_backward as kb
from rdpo_fast.kernels import logprob_forward as kf
from rdpo_fast.kernels import logprob_onepass as ko

# (BLOCK_M, BLOCK_V, num_warps, num_stages)
CONFIGS = [(1, 2048, 4, 3), (1, 2048, 4, 1), (1, 2048, 4, 4), (1, 4096, 4, 3), (1, 4096, 8, 1),
           (1, 4096, 8, 3), (1, 8192, 8, 2), (1, 8192, 16, 2), (2, 2048, 8, 3), (1, 1024, 2, 4)]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--v", type=int, default=128256)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    dev = torch.device("cuda")
    z = torch.randn(a.rows, a.v, device=dev, dtype=torch.bfloat16) * 3
    labels = torch.randint(0, a.v, (a.rows,), device=dev)
    seq = torch.randint(0, 16, (a.rows,), device=dev)
    acc1 = torch.zeros(16, device=dev)
    acc2 = torch.zeros(16, device=dev)
    g = torch.randn(a.rows, device=dev)
    zbytes = z.numel() * z.element_size()
    copy_ms = median_ms(lambda: z.clone(), dev)  # reads + writes zbytes
    rows = []
    orig_f, orig_b = kf.fwd_blocks, kb.bwd_blocks
    lse, _ = kf.logprob_forward(z, labels, seq_ids=seq, seq_logp=acc1, seq_logit=acc2)
    for cfg in CONFIGS:
        kf.fwd_blocks = kb.bwd_blocks = lambda V, interpreted, cfg=cfg: cfg
        f_ms = median_ms(lambda: kf.logprob_forward(z, labels, seq_ids=seq, seq_logp=acc1, seq_logit=acc2),
                         dev)
        out = torch.empty_like(z)
        b_ms = median_ms(lambda out=out: kb.logprob_backward(z, labels, lse, g, out=out), dev)
        rows.append({"BLOCK_M": cfg[0], "BLOCK_V": cfg[1], "num_warps": cfg[2], "num_stages": cfg[3],
                     "fwd_ms": f_ms, "fwd_TBps": zbytes / f_ms / 1e9,
                     "bwd_ms": b_ms, "bwd_TBps": 2 * zbytes / b_ms / 1e9})
    kf.fwd_blocks, kb.bwd_blocks = orig_f, orig_b

    # One-pass: it overwrites its copy of z with S at every call; the timing does not depend on the values.
    zo = z.clone()

    def one_pass(programs=None):
        return ko.logprob_onepass(zo, labels, seq_ids=seq, seq_logp=acc1, seq_logit=acc2, programs=programs)

    orig_o = ko.onepass_blocks
    for r, cfg in zip(rows, CONFIGS):
        ko.onepass_blocks = lambda V, interpreted, cfg=cfg: cfg
        o_ms = median_ms(one_pass, dev)
        r.update(onepass_ms=o_ms, onepass_TBps=2 * zbytes / o_ms / 1e9,
                 onepass_vs_two=o_ms / (r["fwd_ms"] + r["bwd_ms"]))
    ko.onepass_blocks = orig_o
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    BLOCK_M = ko.onepass_blocks(a.v, False)[0]
    n_blocks = -(-a.rows // BLOCK_M)
    grid_rows = []
    for programs in (sms // 2, sms, 2 * sms, 4 * sms, 8 * sms, n_blocks, None):  # None: onepass_programs
        o_ms = median_ms(lambda programs=programs: one_pass(programs), dev)
        grid_rows.append({"programs": programs or "default", "onepass_ms": o_ms,
                          "onepass_TBps": 2 * zbytes / o_ms / 1e9})
    result = {**device_info(dev), "rows_in_chunk": a.rows, "V": a.v, "dtype": "bfloat16",
              "copy_ms": copy_ms, "copy_TBps": 2 * zbytes / copy_ms / 1e9, "configs": rows,
              "onepass_default_programs": ko.onepass_programs(n_blocks, BLOCK_M * a.v * z.element_size(), dev),
              "onepass_grid": grid_rows}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    print(f"copy: {copy_ms:.3f} ms = {result['copy_TBps']:.2f} TB/s (read+write)")
    for r in rows:
        print(f"BM={r['BLOCK_M']} BV={r['BLOCK_V']:5d} W={r['num_warps']:2d} S={r['num_stages']}"
              f"  fwd {r['fwd_ms']:.3f} ms {r['fwd_TBps']:.2f} TB/s   bwd {r['bwd_ms']:.3f} ms {r['bwd_TBps']:.2f} TB/s"
              f"   one-pass {r['onepass_ms']:.3f} ms {r['onepass_TBps']:.2f} TB/s"
              f" ({r['onepass_vs_two']:.2f} x fwd + bwd)")
    for g in grid_rows:
        print(f"one-pass, default blocks, {g['programs']} programs: {g['onepass_ms']:.3f} ms "
              f"{g['onepass_TBps']:.2f} TB/s")


if __name__ == "__main__":
    main()
