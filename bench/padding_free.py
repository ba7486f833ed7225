"""How many padding tokens FusedDPOTrainer's padding_free=True saves on the shipped preference data
(rdpo_fast/data/default_train.jsonl), measured on the batches a TRL training run would make: the records
are tokenised by TRL's own DPOTrainer code (a FusedDPOTrainer built over a tiny random Llama with the
embedded SmolLM2-135M-Instruct tokenizer and vocabulary; the model never runs), truncated by TRL's
collator at max_length (TRL's default 1024), and batched by the Trainer's own dataloader (its shuffled
sampler, one epoch per seed). For each batch, padded = the 2B x T tokens of TRL's padded batch, real =
its attention_mask's ones, which is exactly the packed row's length (no pad_to_multiple_of). The decoder
(policy forward and backward, and every reference forward) runs over padded tokens padded, over real
tokens packed; the fused loss itself skips padding either way.

    python -m bench.padding_free [--batch-sizes 2 4 8 16 --max-length 1024 --seeds 0 1 2 3 4] [--out FILE]

Writes JSON (default bench/results/padding-free-shipped-data.json).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

import torch


def build_trainer(tok, dataset, batch_size: int, max_length: int, seed: int, out_dir: str):
    """A padding_free FusedDPOTrainer over a tiny random Llama with the tokenizer's vocabulary: its
    dataset is TRL's tokenisation of the records, its data collator TRL's, packed."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import DPOConfig

    from rdpo_fast.integrations.trl import FusedDPOTrainer

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                      num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=max_length,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    args = DPOConfig(output_dir=out_dir, per_device_train_batch_size=batch_size, max_length=max_length, seed=seed,
                     padding_free=True, report_to=[], disable_tqdm=True, use_cpu=True)
    return FusedDPOTrainer(model=LlamaForCausalLM(cfg), ref_model=LlamaForCausalLM(cfg), args=args,
                           train_dataset=dataset, processing_class=tok)


def count_epoch(trainer) -> dict:
    """Padded and real tokens over one epoch of the trainer's own shuffled batches: TRL's padded batch is
    counted as the packing collator makes it, the packed row as the dataloader hands it over."""
    packing = trainer.data_collator
    padded_collate = packing.padded
    seen = {"padded": 0, "real": 0}

    def counting(examples):
        batch = padded_collate(examples)
        seen["padded"] += batch["input_ids"].numel()
        seen["real"] += int(batch["attention_mask"].sum())
        return batch

    packing.padded = counting
    packed = batches = 0
    for batch in trainer.get_train_dataloader():
        packed += batch["input_ids"].shape[1]
        batches += 1
    if packed != seen["real"]:
        raise RuntimeError(f"the packed rows hold {packed} tokens, the padded batches {seen['real']} real ones")
    return {"batches": batches, "padded_tokens": seen["padded"], "real_tokens": packed}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--limit", type=int, default=None, help="first N records only (smoke runs)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "padding-free-shipped-data.json"))
    a = ap.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    import transformers
    import trl
    from datasets import Dataset

    from rdpo_fast.data.shipped import default_path
    from rdpo_fast.models.loading import load_tokenizer

    tok = load_tokenizer(None)
    with open(default_path("train")) as f:
        records = [json.loads(line) for line in f][: a.limit]
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in records])
    result = {"data": "rdpo_fast/data/default_train.jsonl", "records": len(records),
              "tokenizer": "SmolLM2-135M-Instruct (embedded)", "max_length": a.max_length, "seeds": a.seeds,
              "trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
              "by_batch_size": {}}
    with tempfile.TemporaryDirectory() as out_dir:
        tokenised = build_trainer(tok, dataset, a.batch_sizes[0], a.max_length, a.seeds[0], out_dir).train_dataset
        lengths = [len(ex["prompt_ids"]) + len(ex[side]) for ex in tokenised for side in ("chosen_ids", "rejected_ids")]
        result.update(examples=len(tokenised), truncated_sequences=sum(n > a.max_length for n in lengths),
                      sequence_tokens={"mean": statistics.mean(lengths), "median": statistics.median(lengths),
                                       "min": min(lengths), "max": max(lengths)})
        for bs in a.batch_sizes:
            epochs = [count_epoch(build_trainer(tok, dataset, bs, a.max_length, seed, out_dir)) for seed in a.seeds]
            saved = [1 - e["real_tokens"] / e["padded_tokens"] for e in epochs]
            result["by_batch_size"][str(bs)] = {
                "batches_per_epoch": epochs[0]["batches"],
                "real_tokens_per_epoch": epochs[0]["real_tokens"],
                "padded_tokens_per_epoch": [e["padded_tokens"] for e in epochs],
                "padding_saved_fraction": {"mean": statistics.mean(saved), "min": min(saved), "max": max(saved)},
                "padded_over_packed": statistics.mean(e["padded_tokens"] / e["real_tokens"] for e in epochs),
            }
            print(bs, result["by_batch_size"][str(bs)], flush=True)
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
