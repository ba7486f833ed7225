"""Peak CPU memory per rank of the vocabulary-parallel fused DPO loss at TP = 1, 2, 4 (issue 22, item 4).

Each TP size is one `torchrun --standalone` launch (gloo); every rank holds a V/TP slice of the lm_head
(a plain tensor with process_group= and vocab_start=) and the whole hidden states, and runs one
forward+backward of FusedLinearPreferenceLoss (sigmoid, reference log-probs given). TP=1 is the
single-process path (a group of one rank holds the whole vocabulary). The peak is bench/cpu_memory's:
the rise of the resident-set high-water mark (VmHWM, reset just before the run) over what the process
held after building its inputs and warming up, so the inputs themselves (the weight slice, the hidden
states) are not in it; their bytes are listed beside it, with the byte sizes of the pass's largest
buffers from its own plan (the logits workspace, the fp32 dW accumulator, the returned dW, dX) and of
its collectives. The torch twins run (TRITON_INTERPRET unset), as in bench/cpu_memory.

    python -m bench.vocab_parallel_memory [--json bench/results/cpu-memory-vocab-parallel.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

SHAPE = {"pairs": 2, "t": 256, "h": 512, "v": 32000}  # 768 completion rows: one chunk at every TP
MIB = 2**20


def _inputs(shape, rank, world, seed=0):
    """This rank's slice of the weight and the whole (replicated) hidden states and targets."""
    import torch

    g = torch.Generator().manual_seed(seed)
    pairs, t, h, v = shape["pairs"], shape["t"], shape["h"], shape["v"]
    target = torch.randint(0, v, (2 * pairs, t), generator=g)
    target[:, : t // 4] = -100  # a prompt
    hidden = torch.randn(2 * pairs, t, h, generator=g)
    ref = torch.randn(2 * pairs, generator=g) - 3.0 * t
    step = -(-v // world)
    start = min(v, rank * step)
    rows = min(v, start + step) - start
    g.manual_seed(seed + 1 + rank)  # each rank draws only its own slice: no rank ever holds the whole weight
    weight = torch.randn(rows, h, generator=g) / h**0.5
    return {"hidden": hidden, "weight": weight, "target": target, "ref": ref, "vocab_start": start}


def _run(inp, group):
    import rdpo_fast

    x = inp["hidden"].detach().clone().requires_grad_(True)
    w = inp["weight"].detach().clone().requires_grad_(True)
    P = inp["target"].shape[0] // 2
    loss, _ = rdpo_fast.FusedLinearPreferenceLoss()(w, x, inp["target"], ref_chosen_logps=inp["ref"][:P],
                                                    ref_rejected_logps=inp["ref"][P:], process_group=group,
                                                    vocab_start=inp["vocab_start"])
    loss.backward()
    return loss


def _plan_bytes(shape, inp, world):
    """The byte sizes of the pass's largest buffers and of its collectives, from its own plan."""
    from rdpo_fast.ops.epilogue import torch_workspace_factor
    from rdpo_fast.ops.schedule import chunk_rows

    h, v = shape["h"], shape["v"]
    local = inp["weight"].shape[0]
    plan = -(-v // world)  # the largest slice: chunks are planned with it on every rank
    n_rows = int((inp["target"] != -100).sum())
    n_all = inp["target"].numel()
    like = inp["hidden"]
    rows = chunk_rows(n_rows, plan, like, None)
    chunks = -(-n_rows // rows)
    el = like.element_size()
    out = {
        "vocab_local": local, "completion_rows": n_rows, "chunk_rows": rows, "chunks": chunks,
        "weight_mib": local * h * el / MIB,
        "logits_workspace_mib": rows * local * el / MIB,
        # the torch twin's fp32 temporaries of a chunk beside the workspace (ops.epilogue)
        "twin_temporaries_mib": rows * local * (torch_workspace_factor(like) - el) / MIB,
        "dw_accumulator_fp32_mib": local * h * 4 / MIB,
        "dw_returned_mib": local * h * el / MIB,
        "dx_mib": n_all * h * el / MIB + (n_rows * h * 4 / MIB if world > 1 else 0.0),
        "hidden_mib": n_all * h * el / MIB,
    }
    if world > 1:
        k = 3  # (logsumexp, label logit, logit sum) a row; 4 with use_weighting
        out["allgather_bytes_sent_per_row"] = 4 * k
        out["allgather_bytes_received_per_row"] = 4 * k * world
        out["allgather_bytes_per_chunk_received"] = 4 * k * world * rows
        out["dx_allreduce_bytes_per_call"] = n_rows * h * 4
    return out


def _worker(shape):
    import torch.distributed as dist

    from bench.cpu_memory import reset_peak, status_mib

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    small = dict(shape, t=16)
    _run(_inputs(small, rank, world), dist.group.WORLD)  # warm code paths and the allocator
    inp = _inputs(shape, rank, world)
    dist.barrier()
    reset_peak()
    base = status_mib("VmRSS")
    _run(inp, dist.group.WORLD)
    peak = status_mib("VmHWM") - base
    row = {"rank": rank, "peak_mib": peak, **_plan_bytes(shape, inp, world)}
    rows = [None] * world
    dist.all_gather_object(rows, row)
    if rank == 0:
        print("RESULT " + json.dumps(rows))
    dist.destroy_process_group()


def measure(tp, shape=None):
    """Every rank's row at tensor-parallel size tp (one torchrun launch)."""
    shape = shape or SHAPE
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(tp), "-m",
           "bench.vocab_parallel_memory", "--worker", json.dumps(shape)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode or not lines:
        raise RuntimeError(f"TP={tp} failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def run(tps=(1, 2, 4), shape=None):
    import torch

    shape = shape or SHAPE
    out = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "torch": torch.__version__,
           "shape": {**shape, "dtype": "float32"}, "loss": "sigmoid, reference log-probs given", "rows": []}
    for tp in tps:
        ranks = measure(tp, shape)
        worst = max(ranks, key=lambda r: r["peak_mib"])
        out["rows"].append({"tp": tp, "peak_mib_max_rank": worst["peak_mib"],
                            "peak_mib_per_rank": [r["peak_mib"] for r in ranks],
                            **{k: v for k, v in ranks[0].items() if k not in ("rank", "peak_mib")}})
    base = out["rows"][0]
    for r in out["rows"]:
        r["peak_ratio_to_tp1"] = r["peak_mib_max_rank"] / base["peak_mib_max_rank"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    if a.worker:
        return _worker(json.loads(a.worker))
    out = run()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    print(f"{out['shape']} on {out['machine']}, per rank:")
    for r in out["rows"]:
        print(f"TP={r['tp']}: peak +{r['peak_mib_max_rank']:7.1f} MiB (x{r['peak_ratio_to_tp1']:.2f})  weight "
              f"{r['weight_mib']:6.1f} MiB  logits workspace {r['logits_workspace_mib']:6.1f} MiB  "
              f"dW fp32 {r['dw_accumulator_fp32_mib']:5.1f} MiB  dX {r['dx_mib']:5.1f} MiB")


if __name__ == "__main__":
    main()
