"""A TRL DPOTrainer training step, FusedDPOTrainer (rdpo_fast's fused loss) against plain trl.DPOTrainer
(TRL 1.16's own chunked log-prob head), on a randomly initialised ~1B Llama (H=2048, 16 layers,
V=128256, tied embeddings), TRL's defaults otherwise: fp32 master weights under bf16 autocast, gradient
checkpointing, AdamW, an in-pass reference model (bf16). Both trainers live in one process and their
steps are interleaved (A, B, A, B, ...), each step on the same batch, timed with CUDA synchronisation;
peak memory is torch.cuda.max_memory_allocated above what was allocated before the step.

    python -m bench.trl_step [--pairs 4 --prompt 256 --completion 768 --steps 20] [--out FILE]
    python -m bench.trl_step --cpu-smoke --out /tmp/s.json     # tiny shapes on CPU (CI keeps it working)

Writes JSON (default bench/results/<device>-<date>-trl-step.json): median / min step ms, peak MiB, the
first step's loss of each (same init, same batch: they must agree), versions and shapes.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time

import torch

from bench.timing import device_info


def word_tokenizer(vocab_size):
    """A word-level tokenizer over V entries "w0".."w{V-3}" plus pad and eos: text "w5 w9" is exactly
    two tokens, so prompt and completion lengths are set exactly, offline, at any vocabulary size."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size - 2)}
    vocab["<pad>"], vocab["</s>"] = vocab_size - 2, vocab_size - 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")


def dataset(n, prompt, completion, vocab, seed=0):
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)

    def words(k):
        return " ".join(f"w{i}" for i in torch.randint(0, vocab - 2, (k,), generator=g).tolist())

    # -1: TRL appends the eos token to each completion
    return Dataset.from_list([{"prompt": words(prompt), "chosen": words(completion - 1),
                               "rejected": words(completion - 1)} for _ in range(n)])


def llama(hidden, layers, vocab, heads, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=max(1, heads // 4), vocab_size=vocab,
                      max_position_embeddings=4096, tie_word_embeddings=True, pad_token_id=vocab - 2,
                      eos_token_id=vocab - 1, bos_token_id=None)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(device=device, dtype=dtype)


def build(cls, a, device, tok, ds):
    from trl import DPOConfig

    args = DPOConfig(output_dir="/tmp/rdpo-trl-bench", per_device_train_batch_size=a.pairs, max_steps=10**6,
                     learning_rate=1e-6, bf16=a.bf16, report_to=[], save_strategy="no", logging_steps=10**6,
                     gradient_checkpointing=a.gradient_checkpointing, max_length=a.prompt + a.completion,
                     disable_tqdm=True, use_cpu=device.type == "cpu", seed=0)
    policy = llama(a.hidden, a.layers, a.vocab, a.heads, device, torch.float32)  # fp32 master weights
    ref = llama(a.hidden, a.layers, a.vocab, a.heads, device, torch.bfloat16 if a.bf16 else torch.float32)
    trainer = cls(model=policy, ref_model=ref, args=args, train_dataset=ds, processing_class=tok)
    trainer.create_optimizer_and_scheduler(num_training_steps=10**6)
    trainer.current_gradient_accumulation_steps = 1  # what train() sets; a lone training_step needs it
    trainer.model.train()
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    return trainer, batch


def step_fn(trainer, batch):
    def step():
        loss = trainer.training_step(trainer.model, batch)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        return float(loss)
    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--completion", type=int, default=768)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant (interleaved)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU, fp32: checks the script runs")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    os.environ.setdefault("CI", "1")  # no TRL telemetry from benchmarks
    if a.cpu_smoke:
        a.pairs, a.prompt, a.completion, a.hidden, a.layers, a.heads, a.vocab = 2, 8, 16, 64, 2, 4, 512
        a.steps, a.warmup = 2, 1
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("bench.trl_step needs a CUDA GPU (or --cpu-smoke)")
        device = torch.device("cuda")
    a.bf16 = device.type == "cuda"

    import trl
    from trl import DPOTrainer

    from rdpo_fast.integrations.trl.dpo import FusedDPOTrainer

    tok = word_tokenizer(a.vocab)
    ds = dataset(4 * a.pairs, a.prompt, a.completion, a.vocab)
    variants = {}
    for name, cls in (("trl", DPOTrainer), ("rdpo_fast", FusedDPOTrainer)):
        trainer, batch = build(cls, a, device, tok, ds)
        variants[name] = {"trainer": trainer, "step": step_fn(trainer, batch), "ms": [], "batch": batch}
    first = {}
    for name, v in variants.items():  # first step from the same init on the same batch: losses must agree
        first[name] = v["step"]()
        for _ in range(a.warmup - 1):
            v["step"]()
    peaks = {}
    for _ in range(a.steps):
        for name, v in variants.items():
            if device.type == "cuda":
                torch.cuda.empty_cache()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            sync(device)
            t0 = time.perf_counter()
            v["step"]()
            sync(device)
            v["ms"].append((time.perf_counter() - t0) * 1e3)
            if device.type == "cuda":
                peaks[name] = max(peaks.get(name, 0.0), (torch.cuda.max_memory_allocated() - base) / 2**20)
    rows = []
    for name, v in variants.items():
        rows.append({"impl": name, "median_ms": statistics.median(v["ms"]), "min_ms": min(v["ms"]),
                     "samples": len(v["ms"]), "peak_mib": peaks.get(name), "first_step_loss": first[name]})
    tokens = int(variants["trl"]["batch"]["completion_mask"].sum())
    params = sum(p.numel() for p in variants["trl"]["trainer"].model.parameters())
    result = {"suite": "trl_step", **device_info(device), "trl": trl.__version__,
              "date": datetime.date.today().isoformat(),
              "model": f"Llama {a.layers} layers, H={a.hidden}, V={a.vocab}, tied, {params / 1e9:.2f}B params; "
                       + ("fp32 master weights, bf16 autocast" if a.bf16 else "fp32")
                       + (", gradient checkpointing" if a.gradient_checkpointing else "")
                       + "; in-pass reference model; AdamW",
              "batch": {"pairs": a.pairs, "prompt": a.prompt, "completion": a.completion,
                        "completion_tokens": tokens},
              "interleaved": True, "rows": rows}
    if rows[0]["median_ms"] and rows[1]["median_ms"]:
        result["speedup_vs_trl"] = rows[0]["median_ms"] / rows[1]["median_ms"]
    for r in rows:
        print(r)
    out = a.out or os.path.join(os.path.dirname(__file__), "results",
                                f"{result['device'].split()[-1]}-{result['date']}-trl-step.json")
    import json

    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print("wrote", out)


if __name__ == "__main__":
    main()
