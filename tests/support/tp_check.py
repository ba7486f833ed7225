"""Run under `torchrun --standalone --nproc_per_node 2` by tests/training/test_train_tp.py (gloo on CPU).

One training forward and backward of the loop's own step module (training.forward.PreferenceStep with
the run's fused loss) on a model loaded with transformers' tensor-parallel plan (tp_plan="auto",
DTensor), against the same model loaded whole in the same process, on the same batch: the loss and
every parameter's gradient (the sharded ones gathered for the comparison only). It also records what
the fused loss was given as the lm_head weight: this rank's vocabulary shard, never the whole matrix.
Rank 0 writes the results to --out as JSON."""
from __future__ import annotations

import argparse
import json
import os

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--data")
    ap.add_argument("--out")
    args = ap.parse_args()

    from rdpo_fast.data.records import collate, load_preference_data
    from rdpo_fast.losses.fused import FusedLinearPreferenceLoss
    from rdpo_fast.models import loading
    from rdpo_fast.training.config import TrainConfig
    from rdpo_fast.training.dist import Dist
    from rdpo_fast.training.forward import PreferenceStep, training_loss

    dist = Dist(tp=2)
    cfg = TrainConfig(model=args.model, beta=0.5, nll_alpha=0.3)
    tok = loading.load_tokenizer(args.model)
    data = load_preference_data(args.data, tok, max_length=160)
    g = torch.Generator().manual_seed(0)
    refs = (torch.randn(len(data), generator=g) - 60, torch.randn(len(data), generator=g) - 60)
    batch = collate(data, range(4), pad_id=tok.pad_token_id, ref_logps=refs)

    seen = []
    forward = FusedLinearPreferenceLoss.forward

    def spy(self, lin_weight, *a, **kw):
        local = getattr(lin_weight, "to_local", lambda: lin_weight)()
        seen.append({"dtensor": hasattr(lin_weight, "placements"), "local_rows": local.shape[0],
                     "placements": str(getattr(lin_weight, "placements", None))})
        return forward(self, lin_weight, *a, **kw)

    FusedLinearPreferenceLoss.forward = spy
    out = {}
    for name, tp in (("whole", 1), ("tp", 2)):
        model = loading.load_model(args.model, tp=tp)
        step = PreferenceStep(model, training_loss(cfg, model, use_ref_model=True), tensor_parallel=tp > 1)
        loss, aux = step(batch, batch.num_pairs, batch.num_chosen_tokens)
        loss.backward()
        grads = {}
        for n, p in model.named_parameters():
            grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            grads[n] = grad.detach().clone()
        out[name] = {"loss": float(loss.detach()), "aux": [t.detach().float().reshape(-1).tolist() for t in aux],
                     "grads": grads, "vocab": model.config.vocab_size}
    FusedLinearPreferenceLoss.forward = forward

    whole, tp = out["whole"], out["tp"]
    diffs = {n: float((tp["grads"][n] - g0).abs().max() / g0.abs().max().clamp_min(1e-12))
             for n, g0 in whole["grads"].items()}
    result = {"world": dist.world, "loss_whole": whole["loss"], "loss_tp": tp["loss"],
              "aux_whole": whole["aux"], "aux_tp": tp["aux"], "grad_rel_diffs": diffs, "seen": seen,
              "vocab": whole["vocab"], "n_params": len(diffs)}
    if dist.main:
        with open(args.out, "w") as f:
            json.dump(result, f)
    dist.barrier()
    dist.close()
    # torch 2.13 + gloo can abort at interpreter exit after collectives on a DeviceMesh's groups
    # (reproduced without rdpo_fast); the results are written, so leave at once.
    os._exit(0)


if __name__ == "__main__":
    main()
