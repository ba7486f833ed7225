"""Pieces shared by the pipelines' stages: materialising models in the run directory, sampling and
filtering candidates, scoring them with the implicit reward, pairing, the training stage
(rdpo_fast.training.loop) and held-out implicit-reward accuracy. The round skeleton itself is driver.py.

Model chain: pi_0 is the starting DPO model and ref_0 its reference. Round r samples from pi_{r-1},
scores with the implicit reward of a chosen pair (by default (pi_{r-1}, ref_{r-1}); see
driver.REWARD_PAIRS), and trains pi_r from pi_{r-1} with pi_{r-1} as the DPO reference, so
ref_r = pi_{r-1}. Without a DPO model to start from (the policy is its own reference, every implicit
reward would be 0) round 0 first trains pi_0 by DPO on offline pairs.
"""
from __future__ import annotations

import dataclasses
import gc
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rdpo_fast.lm.chat import as_messages, as_text, assistant
from rdpo_fast.lm.generation import GenerationSettings, Sample, generate
from rdpo_fast.losses.head import LOSS_TYPES
from rdpo_fast.losses.table import LOSSES
from rdpo_fast.models import loading as modeling
from rdpo_fast.training import checkpoint as ckpt
from rdpo_fast.training.config import TrainConfig, read_config_file
from rdpo_fast.training.run_dir import TRANSIENT

from . import filters
from .implicit import ImplicitReward, encode, sequence_logps
from .pairing import ALPHA_GRID, choose_alpha, select_pairs
from .stages import StageDir

# Options of the training stage the pipeline itself decides; a --train-config file may not set them.
_PIPELINE_OWNED = ("model", "data", "eval_data", "output_dir", "overwrite", "resume", "export", "cache_dir",
                   "reference", "stop_after_steps")
# Losses that need no reference model (rdpo_fast.losses.table: "free", or "optional" as sft): the training
# stage runs them without one instead of paying for a reference pass they do not read.
_REFERENCE_FREE = tuple(name for name, info in LOSSES.items() if info.reference != "required")


@dataclass
class TrainSettings:
    """The training stage of a round: TrainConfig options under their TrainConfig names, with the
    pipelines' own defaults where they differ from `rdpo-fast train`'s (a short run on the few pairs a
    round makes: a higher learning rate, only the last decoder layers, shorter sequences), TrainConfig's
    elsewhere. TRAIN_FLAGS of them are the commands' flags (rdpo_fast.pipelines.cli)."""
    lr: float = 5e-5
    beta: float = TrainConfig.beta
    epochs: int = TrainConfig.epochs
    max_steps: int | None = TrainConfig.max_steps
    batch_size: int = TrainConfig.batch_size
    grad_accum: int = TrainConfig.grad_accum
    train_last_layers: int = 4
    max_length: int = 384
    warmup_steps: int = TrainConfig.warmup_steps
    warmup_ratio: float = TrainConfig.warmup_ratio
    scheduler: str = TrainConfig.scheduler
    loss_type: str = TrainConfig.loss_type  # any of rdpo_fast.losses.head.LOSS_TYPES
    nll_alpha: float = TrainConfig.nll_alpha
    seed: int = TrainConfig.seed
    progress: bool = TrainConfig.progress
    config_file: str | None = None  # JSON/YAML of further TrainConfig options

    def config(self, *, model: str, data: str, output_dir: str, cache_dir: str, n_pairs: int,
               log: Callable[[str], None] = print) -> TrainConfig:
        extra = read_config_file(self.config_file) if self.config_file else {}
        owned = sorted(set(extra) & set(_PIPELINE_OWNED))
        if owned:
            raise ValueError(f"train config file {self.config_file}: {owned} are set by the pipeline itself")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {self.loss_type!r}; this build of rdpo_fast has: "
                             f"{', '.join(LOSS_TYPES)}")
        values = {name: getattr(self, name) for name in _CONFIG_OPTIONS}
        values.update(extra)
        reference = "none" if values["loss_type"] in _REFERENCE_FREE else "precompute"
        values.update(model=model, data=data, eval_data=None, output_dir=output_dir, overwrite=True, export=True,
                      cache_dir=cache_dir, reference=reference)
        # A round makes as many pairs as it makes: a batch larger than that would train zero steps.
        per_step = values["batch_size"] * values.get("grad_accum", 1)
        if n_pairs < per_step:
            batch = max(1, n_pairs // values.get("grad_accum", 1))
            log(f"only {n_pairs} pairs: batch size {values['batch_size']} -> {batch}")
            values["batch_size"] = batch
        return TrainConfig(**values).validate()

    def check(self) -> TrainSettings:
        """Validates the settings before a run starts (the real paths come later)."""
        self.config(model="-", data="-", output_dir="-", cache_dir="-", n_pairs=10**9)
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("progress")
        return d


# The settings that are TrainConfig options (all but config_file).
_CONFIG_OPTIONS = tuple(f.name for f in dataclasses.fields(TrainSettings)
                        if f.name in {c.name for c in dataclasses.fields(TrainConfig)})
# Those that are flags of the pipeline commands; seed and progress come from their command-wide --seed and
# --no-progress.
TRAIN_FLAGS = tuple(n for n in _CONFIG_OPTIONS if n not in ("seed", "progress"))


class Models:
    """Loaded models by path, so consecutive stages of one process share them; `keep` drops the rest."""

    def __init__(self):
        self._models: dict[str, torch.nn.Module] = {}
        self._tokenizers: dict[str, object] = {}

    def model(self, path: str):
        if path not in self._models:
            self._models[path] = modeling.load_model(path).eval().requires_grad_(False)
        return self._models[path]

    def tokenizer(self, path: str):
        if path not in self._tokenizers:
            self._tokenizers[path] = modeling.load_tokenizer(path)
        return self._tokenizers[path]

    def keep(self, *paths: str) -> None:
        for p in list(self._models):
            if p not in paths:
                del self._models[p]
        gc.collect()


def materialise(run: StageDir, models: Models, name: str, path: str) -> str:
    """A Hugging Face directory for the model: a GGUF model (the embedded default) is dequantised once
    into the run directory, so the later stages and every training round load it in a fraction of a
    second instead of converting it again."""
    folder, gguf = modeling.resolve(path)
    if gguf is None:
        return folder
    out = os.path.join(run.path, "models", name)

    def stage():
        from rdpo_fast.training.checkpoint import export_model

        export_model(out, models.model(path), models.tokenizer(path))
        return {"source": path}, [out]

    run.run(f"models/{name}", stage)
    return out


# ---------------------------------------------------------------------------------------- candidates
def sample_groups(model, tokenizer, prompts: list[list[dict]], k: int,
                  settings: GenerationSettings) -> list[list[Sample]]:
    if k < 2:
        raise ValueError(f"K (samples per prompt) must be >= 2: a pair needs two candidates, got {k}")
    return generate(model, tokenizer, prompts, num_samples=k, settings=settings, desc=f"sample K={k}")


def candidates_record(prompt, samples: list[Sample], *, drop_truncated: bool, **extra) -> dict:
    cands = []
    for s in samples:
        reason = filters.rejection_reason(s, drop_truncated=drop_truncated)
        cands.append({"text": s.text.strip(), "finished": s.finished, "num_tokens": s.num_tokens, "reason": reason})
    return {"prompt": prompt, **extra, "candidates": cands}


def score_groups(reward: ImplicitReward, groups: list[dict], score_key: str = "prompt") -> list[dict]:
    """Adds reward, policy/reference log-probs and character length to every valid candidate, in one
    length-sorted batched pass over all of them; rejected candidates are not scored. The reward's
    `stats` afterwards hold the pass's tokens and tokens/s."""
    flat = [(gi, ci) for gi, g in enumerate(groups) for ci, c in enumerate(g["candidates"]) if c["reason"] is None]
    if flat:
        s = reward([groups[gi][score_key] for gi, _ in flat], [groups[gi]["candidates"][ci]["text"] for gi, ci in flat])
        for j, (gi, ci) in enumerate(flat):
            c = groups[gi]["candidates"][ci]
            c.update(reward=float(s.reward[j]), policy_logps=float(s.policy_logps[j]),
                     reference_logps=float(s.reference_logps[j]), tokens=int(s.num_tokens[j]), chars=len(c["text"]))
    return groups


def default_min_valid(k: int) -> int:
    """DICE keeps a prompt only with at least half its samples valid (8 of 16); never fewer than 2."""
    return max(2, k // 2)


def pair_groups(groups: list[dict], *, length_control: bool = True, min_valid: int = 2, grid=ALPHA_GRID,
                alpha_rule: str = "argmin") -> tuple[list[dict], dict]:
    """(preference records, stats). Prompts with no valid candidate, with fewer than two distinct ones,
    or with fewer than `min_valid` valid ones (duplicates counted, as DICE counts scored samples) are
    skipped and counted, as are prompts whose candidates all tie; alpha comes from the length sweep
    (`grid`, `alpha_rule`, see pairing.py) over the rest."""
    if min_valid < 2:
        raise ValueError(f"min_valid must be >= 2 (a pair needs two candidates), got {min_valid}")
    stats = {"prompts": len(groups), "candidates": sum(len(g["candidates"]) for g in groups),
             **{f"dropped_{r}": 0 for r in filters.REASONS}, "min_valid": min_valid,
             "skipped_no_valid": 0, "skipped_one_valid": 0, "skipped_few_valid": 0, "skipped_tied": 0,
             "duplicate_candidates": 0}
    usable = []
    for g in groups:
        valid = []
        seen = set()
        n_valid = 0
        for c in g["candidates"]:
            if c["reason"] is not None:
                stats[f"dropped_{c['reason']}"] += 1
            elif c["text"] in seen:  # identical samples carry one reward; keep one of them
                n_valid += 1
                stats["duplicate_candidates"] += 1
            else:
                n_valid += 1
                seen.add(c["text"])
                valid.append(c)
        if not valid:
            stats["skipped_no_valid"] += 1
        elif len(valid) == 1:
            stats["skipped_one_valid"] += 1
        elif n_valid < min_valid:
            stats["skipped_few_valid"] += 1
        else:
            usable.append((g, valid))
    rewards = [[c["reward"] for c in v] for _, v in usable]
    lengths = [[c["chars"] for c in v] for _, v in usable]
    if usable and length_control:
        choice = choose_alpha(rewards, lengths, grid=grid, rule=alpha_rule)
        stats.update(alpha=choice.alpha, length_diff=choice.mean_length_diff,
                     length_diff_alpha0=choice.mean_length_diff_at_0, alpha_rule=choice.rule,
                     alpha_points_tried=choice.points_tried)
    else:
        stats.update(alpha=0.0 if usable else None, length_diff=None, length_diff_alpha0=None, alpha_rule=None,
                     alpha_points_tried=0)
    records = []
    picks = select_pairs(rewards, lengths, stats["alpha"]) if usable else []
    for (g, valid), pick in zip(usable, picks):
        if pick is None:
            stats["skipped_tied"] += 1
            continue
        w, l = valid[pick[0]], valid[pick[1]]
        records.append({"prompt": g["prompt"], "chosen": assistant(w["text"]), "rejected": assistant(l["text"]),
                        "chosen_implicit_reward": w["reward"], "rejected_implicit_reward": l["reward"],
                        "alpha": stats["alpha"], **({"language": g["language"]} if "language" in g else {})})
    stats["pairs"] = len(records)
    if records:
        stats["mean_chosen_chars"] = sum(len(as_text(r["chosen"])) for r in records) / len(records)
        stats["mean_rejected_chars"] = sum(len(as_text(r["rejected"])) for r in records) / len(records)
    return records, stats


# ---------------------------------------------------------------------------------------- training
def train_stage(run: StageDir, stage: str, settings: TrainSettings, *, model: str, data: str, n_pairs: int,
                log=print) -> dict:
    """DPO from `model` with `model` itself as the (precomputed) reference; the trained policy is
    exported to <stage>/final. A stage stopped by a signal left a checkpoint (the training loop wrote
    it): the rerun resumes from it, and reaches the weights the uninterrupted stage would have."""
    from rdpo_fast.training.loop import train

    out = os.path.join(run.path, stage)

    def go():
        if n_pairs < 1:
            raise ValueError(f"{stage}: no preference pairs to train on")
        cfg = settings.config(model=model, data=data, output_dir=out, cache_dir=os.path.join(run.path, "cache"),
                              n_pairs=n_pairs, log=log)
        summary = train(resume_or_start_over(cfg, f"[{stage}]", log))
        if not cfg.save_steps:  # the checkpoints were only for resuming the stage; its output is final/
            for c in ckpt.list_checkpoints(out):
                ckpt.retire(c)
        keep = {k: summary[k] for k in ("global_step", "train_pairs", "train_truncated", "seconds") if k in summary}
        return keep, [os.path.join(out, "final")]

    return run.run(stage, go)


def resume_or_start_over(cfg: TrainConfig, name: str, log: Callable[[str], None] = print) -> TrainConfig:
    """The training stage's config, resuming from its newest checkpoint when one was written with the
    same settings; checkpoints of other settings are deleted (a later resume must never find them)."""
    found = ckpt.list_checkpoints(cfg.output_dir)
    if not found:
        return cfg
    saved = ckpt.read_state(found[-1]).get("config", {})
    # Settings of one invocation (resume, ...) and of presentation (progress bars) may differ.
    ignored = set(TRANSIENT) | {"progress"}
    if all(saved.get(k) == v for k, v in cfg.to_dict().items() if k not in ignored):
        log(f"{name} resuming from {found[-1]}")
        return dataclasses.replace(cfg, resume=found[-1])
    log(f"{name} its checkpoints were written with other settings: starting it over")
    for c in found:
        ckpt.retire(c)
    return cfg


# ---------------------------------------------------------------------------------------- evaluation
def preference_pairs(records: list[dict]) -> tuple[list[list[dict]], list[str], list[str]]:
    return ([as_messages(r["prompt"]) for r in records], [as_text(r["chosen"]) for r in records],
            [as_text(r["rejected"]) for r in records])


@torch.no_grad()
def pair_logps(model, tokenizer, records: list[dict], batch_size: int = 8) -> dict:
    """Sequence log-probs of chosen and rejected of each held-out pair under `model`."""
    prompts, chosen, rejected = preference_pairs(records)
    items = encode(tokenizer, prompts + prompts, chosen + rejected)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    s, _ = sequence_logps(model, items, pad_id=int(pad or 0), batch_size=batch_size)
    n = len(records)
    return {"chosen": s[:n].tolist(), "rejected": s[n:].tolist()}


def reward_accuracy(policy: dict, reference: dict, beta: float = 1.0) -> dict:
    """Held-out implicit-reward accuracy (chosen reward > rejected reward) and mean margin."""
    c = torch.tensor(policy["chosen"]) - torch.tensor(reference["chosen"])
    r = torch.tensor(policy["rejected"]) - torch.tensor(reference["rejected"])
    return {"accuracy": float((c > r).double().mean()), "margin": float(beta * (c - r).mean()), "pairs": len(c)}
