"""Run under `torchrun --standalone --nproc_per_node 2` by tests/training/test_distributed.py (gloo on CPU).

1. Gradient check: one optimizer step's loss and gradients, computed by 2 ranks x 2 micro-batches with
   DDP or FSDP2 (the training loop's own step module and wrapping), against the same step in one
   process without any wrapper.
2. A short end-to-end `train()` run with that strategy (checkpoint gather and export included); the
   test compares its final weights with a single-process run.
3. The same run stopped after one step and resumed: it must end at exactly the same weights.
Results go to --out as JSON, written by rank 0."""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _full(t):
    full = getattr(t, "full_tensor", None)
    return full() if full is not None else t


def grad_check(args, d):
    from rdpo_fast.data.records import collate, load_preference_data
    from rdpo_fast.losses.fused import FusedLinearPreferenceLoss
    from rdpo_fast.models import loading as modeling
    from rdpo_fast.training.config import TrainConfig
    from rdpo_fast.training.forward import PreferenceStep
    from rdpo_fast.training.ref_cache import precompute_reference

    cfg = TrainConfig(model=args.model, distributed=args.strategy, cache_dir=args.cache, eval_batch_size=3)
    tok = modeling.load_tokenizer(args.model)
    data = load_preference_data(args.data, tok, max_length=160)
    model = modeling.load_model(args.model)
    ref = precompute_reference(cfg, model, data, d, log=lambda *a: None)

    def loss_fn():
        return FusedLinearPreferenceLoss(loss_type="sigmoid", beta=0.1, compute_nll_loss=True, alpha=0.5)

    pad = tok.pad_token_id
    # One process, the whole step (4 pairs) in one call, no wrapper.
    single = PreferenceStep(modeling.load_model(args.model), loss_fn(), adapters_reference=False)
    full = collate(data, [0, 1, 2, 3], pad_id=pad, ref_logps=ref)
    loss_single, _ = single(full, full.num_pairs, full.num_chosen_tokens)
    loss_single.backward()
    g_single = {n: p.grad.clone() for n, p in single.model.named_parameters() if p.grad is not None}

    # Two ranks, each two micro-batches of one pair, counts of the whole step.
    step = PreferenceStep(modeling.load_model(args.model), loss_fn(), adapters_reference=False)
    wrapped = d.wrap(step, cfg.distributed)
    head = step.model.get_output_embeddings().weight
    local = head.to_local() if hasattr(head, "to_local") else head
    sharded = {"head_sharded": local.shape[0] < head.shape[0], "head_shape": list(head.shape),
               "gathered_shape": list(modeling.output_weight(step.model).shape)}
    mine = [[2 * d.rank], [2 * d.rank + 1]]
    mbs = [collate(data, i, pad_id=pad, ref_logps=ref) for i in mine]
    counts = d.all_sum(torch.tensor([sum(b.num_pairs for b in mbs), sum(b.num_chosen_tokens for b in mbs)]))
    total = torch.zeros((), dtype=torch.float64)
    for i, mb in enumerate(mbs):
        with d.grad_sync(wrapped, cfg.distributed, i == len(mbs) - 1):
            loss, _ = wrapped(mb, int(counts[0]), int(counts[1]))
            (loss * d.world).backward()
        total += loss.detach().double()
    total = d.all_sum(total)
    g_dist = {n: _full(p.grad) for n, p in step.model.named_parameters() if p.grad is not None}
    assert set(g_dist) == set(g_single), (sorted(g_dist), sorted(g_single))
    diffs = {n: (g_dist[n] - g_single[n]).abs().max().item() for n in g_single}
    scale = max(g.abs().max().item() for g in g_single.values())
    return {**sharded, "loss_single": loss_single.item(), "loss_dist": total.item(),
            "max_grad_diff": max(diffs.values()), "grad_scale": scale, "n_grads": len(diffs)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--strategy", choices=("ddp", "fsdp"), required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--train-out", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    from rdpo_fast.training.config import TrainConfig
    from rdpo_fast.training.dist import Dist
    from rdpo_fast.training.loop import train

    d = Dist()
    result = {"world": d.world, "strategy": args.strategy}
    result.update(grad_check(args, d))
    dist.barrier()
    settings = dict(model=args.model, data=args.data, cache_dir=args.cache, distributed=args.strategy, batch_size=1,
                    grad_accum=2, epochs=2, lr=1e-3, max_length=160, progress=False, save_steps=2, seed=3,
                    nll_alpha=0.5)
    result["train_summary"] = train(TrainConfig(output_dir=args.train_out, **settings))
    # Stopped after 1 step (the checkpoint gathers FSDP2 shards), then resumed (scattered back).
    again = args.train_out + "_resumed"
    train(TrainConfig(output_dir=again, stop_after_steps=1, **settings))
    train(TrainConfig(output_dir=again, resume=again, **settings))
    if d.main:
        from tiny import read_weights

        a, b = read_weights(args.train_out), read_weights(again)
        result["resumed_equal"] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if d.main:
        with open(args.out, "w") as f:
            json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
