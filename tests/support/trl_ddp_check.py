"""Run under `torchrun --standalone --nproc_per_node 2` by tests/integrations/test_trl_distributed.py (gloo on CPU):
three steps of trl.DPOTrainer and of FusedDPOTrainer (padded, and padding_free=True) under DDP (accelerate
picks up torchrun), each rank on its own shard of the batches; rank 0 writes the log histories (metrics
gathered across ranks) and the final weights' checksum to --out as JSON. (On CPU accelerate runs MULTI_CPU
DDP only: its FSDP needs GPUs, so FSDP2 through the Trainer is not exercised here.)"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy")
    ap.add_argument("--other")
    ap.add_argument("--data")
    ap.add_argument("--out")
    a = ap.parse_args()
    os.environ["CI"] = "1"
    os.environ.pop("TRITON_INTERPRET", None)  # the torch twins: the kernels are checked elsewhere
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from rdpo_fast.integrations.trl import FusedDPOTrainer

    tok = AutoTokenizer.from_pretrained(a.policy)
    ds = Dataset.from_list(json.load(open(a.data)))
    result = {}
    runs = (("trl", DPOTrainer, {}), ("rdpo_fast", FusedDPOTrainer, {}),
            ("rdpo_fast_padding_free", FusedDPOTrainer, {"padding_free": True}))
    for name, cls, extra in runs:
        args = DPOConfig(output_dir=f"/tmp/rdpo-ddp-{os.getpid()}", per_device_train_batch_size=1,
                         gradient_accumulation_steps=2, max_steps=3, learning_rate=1e-3, logging_steps=1, bf16=False,
                         report_to=[], save_strategy="no", gradient_checkpointing=False, max_length=80, seed=0,
                         disable_tqdm=True, ddp_backend="gloo", use_cpu=True, **extra)
        trainer = cls(model=a.policy, ref_model=AutoModelForCausalLM.from_pretrained(a.other), args=args,
                      train_dataset=ds, processing_class=tok)
        trainer.train()
        logs = [h for h in trainer.state.log_history if "loss" in h and "train_loss" not in h]
        checksum = sum(float(p.detach().double().abs().sum()) for p in trainer.model.parameters())
        result[name] = {"logs": logs, "checksum": checksum, "world": trainer.accelerator.num_processes,
                        "distributed_type": str(trainer.accelerator.distributed_type)}
    if int(os.environ.get("RANK", "0")) == 0:
        with open(a.out, "w") as f:
            json.dump(result, f)
    torch.distributed.barrier()


if __name__ == "__main__":
    main()
