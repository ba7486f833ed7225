"""One DICE round sampled both ways, transformers' generate and vLLM: samples/s of the generate stage
(vLLM's engine start included), generated tokens/s, the implicit-reward scoring's tokens/s and the
round's stage seconds. Writes bench/results/<device>-<date>-vllm-dice.json (or --out).

    python -m bench.vllm_dice [--policy DIR --reference DIR] [-k 8] [--prompts 64] [--max-new-tokens 512]
                              [--generators transformers,vllm] [--out F]
    python -m bench.vllm_dice --cpu-smoke     # tiny model, transformers only: keeps the script working in CI

Without --reference round 0 first trains a DPO model for 2 steps (the same in both runs).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile

import torch

from bench.timing import device_info


def one_round(generator: str, args, out_dir: str) -> dict:
    from rdpo_fast.io import read_json
    from rdpo_fast.lm.generation import GenerationSettings
    from rdpo_fast.lm.vllm import VllmSettings
    from rdpo_fast.pipelines.dice import DiceSettings, run_dice
    from rdpo_fast.pipelines.rounds import TrainSettings
    from rdpo_fast.pipelines.stages import read_stage_records

    s = DiceSettings(policy=args.policy, reference=args.reference, prompts=args.prompt_file, rounds=1, k=args.k,
                     prompts_per_round=args.prompts, init_pairs=16, eval_pairs=0, generator=generator,
                     score_batch_size=args.score_batch_size, vllm=VllmSettings(gpu_memory_utilization=args.vllm_memory),
                     generation=GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=0.9, top_p=1.0,
                                                   batch_size=args.gen_batch_size, progress=False),
                     train=TrainSettings(max_steps=2, batch_size=8, train_last_layers=args.train_last_layers,
                                         max_length=args.max_length, progress=False),
                     keep_truncated=True)
    summary = run_dice(s, out_dir, overwrite=True, log=lambda *a: None)
    gen = read_json(os.path.join(out_dir, "round1", "generate.done.json"))
    score = read_json(os.path.join(out_dir, "round1", "score.done.json"))["stats"]
    cands = [c for g in read_stage_records(os.path.join(out_dir, "round1", "candidates.jsonl"))
             for c in g["candidates"]]
    tokens = sum(c["num_tokens"] for c in cands)
    secs = gen["seconds"]
    return {"generator": generator, "samples": len(cands), "generated_tokens": tokens,
            "truncated": sum(not c["finished"] for c in cands), "generate_s": secs,
            "samples_per_s": round(len(cands) / secs, 2) if secs else None,
            "generated_tokens_per_s": round(tokens / secs, 1) if secs else None,
            "score_tokens_per_s": score.get("tokens_per_s"), "score_padding": score.get("padding"),
            "round_seconds": summary["rounds"][1]["seconds"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", default="smollm2-135m")
    p.add_argument("--reference", default=None)
    p.add_argument("--prompt-file", default=None, help="prompt file (default: the shipped task prompts)")
    p.add_argument("-k", type=int, default=8)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--gen-batch-size", type=int, default=64, help="sequences per transformers generate call")
    p.add_argument("--score-batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--train-last-layers", type=int, default=0)
    p.add_argument("--vllm-memory", type=float, default=0.5)
    p.add_argument("--generators", default="transformers,vllm")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny model on CPU, transformers only")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    gens = [g.strip() for g in args.generators.split(",") if g.strip()]
    work = tempfile.mkdtemp(prefix="vllm-dice-")
    if args.cpu_smoke:
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "support"))
        from tiny import save_tiny

        args.policy = save_tiny(os.path.join(work, "tiny"))
        args.k, args.prompts, args.max_new_tokens, args.max_length = 3, 3, 8, 256
        args.gen_batch_size, args.score_batch_size = 16, 8
        gens = ["transformers"]
    elif "vllm" in gens and not torch.cuda.is_available():
        p.error("vLLM needs a GPU; run with --generators transformers or on a GPU machine")
    runs = [one_round(g, args, os.path.join(work, g)) for g in gens]
    info = device_info(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    result = {"bench": "vllm-dice", "device": info, "date": datetime.date.today().isoformat(),
              "settings": {k: getattr(args, k) for k in ("policy", "reference", "k", "prompts", "max_new_tokens",
                                                           "gen_batch_size", "score_batch_size", "vllm_memory")},
              "runs": runs}
    if len(runs) == 2 and all(r["samples_per_s"] for r in runs):
        result["vllm_speedup_samples_per_s"] = round(runs[1]["samples_per_s"] / runs[0]["samples_per_s"], 2)
    name = info["device"].split(" ")[-1] if torch.cuda.is_available() else "cpu"
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"{name}-{result['date']}-vllm-dice.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
