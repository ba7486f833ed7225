"""One DPO training step (policy forward+backward through the whole model, reference log-probs given,
AdamW step) of a randomly initialised ~1B Llama (H=2048, V=128256): the backbone's hidden states into our
fused loss, against the naive path (the model's full logits, log_softmax, gather, DPO head).

    python -m bench.e2e_step [--pairs 4 --t 1024 --layers 16] [--out F]
"""
from __future__ import annotations

import argparse
import datetime
import json

import torch
import torch.nn.functional as F

import rdpo_fast
from bench.timing import device_info, median_ms, peak_mib


def build(layers, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=layers, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, max_position_embeddings=4096,
                      tie_word_embeddings=True, attn_implementation="sdpa")
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(device=device, dtype=torch.bfloat16)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--t", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--device", default="cuda", help="cpu for a smoke run")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    model = build(a.layers, dev)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=dev.type == "cuda")
    ids = torch.randint(0, 128256, (2 * a.pairs, a.t), device=dev)
    target = ids.roll(-1, 1)
    target[:, : a.t // 4] = -100  # prompt
    target[:, -1] = -100
    ref = torch.randn(2 * a.pairs, device=dev) - 3 * a.t
    loss_fn = rdpo_fast.FusedLinearPreferenceLoss()
    P = a.pairs

    def ours():
        hidden = model.model(input_ids=ids).last_hidden_state
        loss, _ = loss_fn(model.lm_head.weight, hidden, target, ref_chosen_logps=ref[:P], ref_rejected_logps=ref[P:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def naive():
        logits = model(input_ids=ids).logits
        logp = torch.log_softmax(logits.float(), -1).gather(-1, target.clamp_min(0)[..., None]).squeeze(-1)
        seq = (logp * (target != -100)).sum(-1)
        d = (seq[:P] - ref[:P]) - (seq[P:] - ref[P:])
        (-F.logsigmoid(0.1 * d).mean()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rows = []
    for name, fn in (("rdpo_fast", ours), ("naive", naive)):
        fn()  # optimizer state allocated before measuring
        try:
            rows.append({"impl": name, "step_ms": median_ms(fn, dev, warmup=1, reps=5), "peak_mib": peak_mib(fn, dev)})
        except torch.OutOfMemoryError:
            rows.append({"impl": name, "error": "out of memory"})
            torch.cuda.empty_cache()
    result = {"suite": "e2e_step", **device_info(dev), "date": datetime.date.today().isoformat(),
              "model": f"Llama {a.layers} layers, H=2048, V=128256, tied, {params / 1e9:.2f}B params, bf16, "
                       "gradient checkpointing, AdamW(fused)",
              "batch": {"pairs": a.pairs, "T": a.t, "prompt_tokens": a.t // 4}, "rows": rows}
    for r in rows:
        print(r)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
