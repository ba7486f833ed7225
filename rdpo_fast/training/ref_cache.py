"""The reference model's sequence log-probs, computed once before training (reference mode "precompute")
and cached on disk per pair, under a key of everything they depend on: a later run over the same model,
data and settings reuses them, and a run that trains on part of an epoch pays only for that part."""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable

import torch

from rdpo_fast import errors
from rdpo_fast.data.records import PreferenceData, collate
from rdpo_fast.models import loading as modeling

from . import optim
from .config import TrainConfig
from .dist import Dist
from .forward import PreferenceStep, length_sorted, sequence_scorer


def reference_key(cfg: TrainConfig, data: PreferenceData, compute_dtype: torch.dtype | None = None) -> str:
    """Cache key of a reference pass: the model's files, the tokenised data (which fixes the data and
    every tokenizer setting), and the settings that shape a sequence log-prob."""
    h = hashlib.sha256()
    weights = optim.resolve_precision(cfg.dtype, cfg.bf16, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    low = {} if weights.weights == torch.float32 else {"weights": str(weights.weights)}  # fp32 keys as before
    # "bf16" holds the compute dtype under the name and in the form the first caches were keyed with
    # (false, or the dtype's name), so those caches stay valid.
    compute = False if compute_dtype is None else str(compute_dtype)
    h.update(json.dumps({"model": modeling.identity(cfg.model), "average_log_prob": cfg.average_log_prob,
                         "ld_alpha": cfg.ld_alpha, "bf16": compute, "packed": cfg.packed, "max_length": cfg.max_length,
                         "max_prompt_length": cfg.max_prompt_length, **low}, sort_keys=True).encode())
    for p in data.pairs:
        h.update(json.dumps([p.prompt, p.chosen, p.rejected]).encode())
    return h.hexdigest()


def _pad_id(model) -> int:
    pad = getattr(model.config, "pad_token_id", None)
    return 0 if pad is None else int(pad)


@torch.no_grad()
def precompute_reference(cfg: TrainConfig, model: torch.nn.Module, data: PreferenceData, dist: Dist, *,
                         compute_dtype: torch.dtype | None = None, log: Callable = print,
                         needed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference log-probs [len(data)] (chosen, rejected) from the model as it is now, before training.
    Cached on disk per pair: `needed` (pair indices; default all) are computed unless already cached, so
    a run that trains on part of an epoch pays only for that part, and a later run reuses it. Ranks
    split the work and sum the results; entries outside `needed` may be zero."""
    from safetensors.torch import load_file, save_file

    key = reference_key(cfg, data, compute_dtype)
    path = os.path.join(cfg.cache_location(), "reference", f"{key[:32]}.safetensors")
    n = len(data)
    chosen, rejected = torch.zeros(n), torch.zeros(n)
    done = torch.zeros(n, dtype=torch.bool)
    if os.path.isfile(path):
        t = load_file(path)
        if t["chosen"].numel() == n:
            chosen, rejected, done = t["chosen"], t["rejected"], t["done"].bool()
    want = torch.arange(n) if needed is None else torch.as_tensor(needed, dtype=torch.int64).unique()
    todo = want[~done[want]]
    name = os.path.basename(data.path)
    if todo.numel() == 0:
        log(f"reference log-probs of {name}: cached ({path})")
        return chosen, rejected
    t0 = time.time()
    step = PreferenceStep(model, sequence_scorer(cfg, model), compute_dtype=compute_dtype,
                          tensor_parallel=dist.tp > 1)
    was_training = model.training
    model.eval()
    new_c, new_r = torch.zeros(n), torch.zeros(n)
    device = next(model.parameters()).device
    # Data-parallel replicas split the pairs (the ranks of a tensor-parallel group all score the same ones).
    for idx in length_sorted(data, todo[dist.data_rank::dist.data_world]).split(cfg.eval_batch_size):
        b = collate(data, idx, pad_id=_pad_id(model), packed=cfg.packed).to(device)
        _, aux = step(b, b.num_pairs, max(b.num_chosen_tokens, 1))
        new_c[idx], new_r[idx] = aux[0].float().cpu(), aux[1].float().cpu()
    new_c, new_r = dist.data_sum(new_c).cpu(), dist.data_sum(new_r).cpu()
    model.train(was_training)
    chosen, rejected, done = chosen.clone(), rejected.clone(), done.clone()
    chosen[todo], rejected[todo], done[todo] = new_c[todo], new_r[todo], True
    if dist.main:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with errors.writing(path):
            save_file({"chosen": chosen, "rejected": rejected, "done": done.to(torch.uint8)}, tmp,
                      metadata={"key": key, "data": data.path})
        os.replace(tmp, path)  # atomic: a reader sees the old cache or the new one
    dist.barrier()
    log(f"reference log-probs of {name}: {todo.numel()} pairs in {time.time() - t0:.1f}s (cached in {path})")
    return chosen, rejected
