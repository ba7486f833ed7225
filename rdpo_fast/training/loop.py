"""The lean preference-training loop: a Hugging Face causal LM, the fused loss on its last hidden states
and lm_head weight (no logits), a reference model in one of four forms, AdamW with warmup and a
schedule, exact gradient accumulation, checkpoints with exact resume, held-out evaluation, and
torchrun scale-out with DDP or FSDP2.

Read it as nanoGPT's train.py: `train` is the whole run; `setup` builds it (a Run), `step` is one
optimizer step, `evaluate` the held-out pass, `checkpoint` a save, `finish` the end. A run stops early
by setting Run.stop, for one of three reasons:
- "stop_after_steps" (--stop-after-steps): checkpointed where it stands, summary, exit 0;
- "signal": SIGTERM or SIGUSR1 (rdpo_fast.preemption) reached any rank after setup. The handler only
  records it; every step begins with one sum over ranks (the step's pair and token counts), which
  carries each rank's "stop" vote too, so all ranks agree to stop before the same step without another
  collective. The step in progress when the signal came is finished, the next one is not begun, a
  checkpoint is written at the last finished step (unless one is there already), and Preempted says
  how to resume. During setup (loading, the reference pass: nothing trained yet, and it may take
  minutes a scheduler will not wait) a signal ends the run at once;
- "diverged": --max-nonfinite-steps steps in a row had a non-finite loss or gradient norm. Such a step
  never updates the weights (optim.Stepper skips it); the run stops without a new checkpoint or
  `final/`, and Diverged names the step and the quantity.
The whole run holds the output directory's lock (run_dir.claim: one writer per run directory).

Exactness of accumulation: every micro-batch calls the loss with the whole optimizer step's pair and
chosen-token counts (summed over micro-batches and ranks), so the micro-batch losses add up to the
step's loss. DDP and FSDP2 average gradients over ranks; the loss is multiplied by the world size before
backward so the average becomes that sum. Under --tp (transformers' tensor-parallel plan) the ranks share
one model and the same pairs: nothing is averaged, each rank's backward gives its own shards' gradients,
and the fused loss reads the lm_head's vocabulary shard of each rank (rdpo_fast.ops.parallel).
"""
from __future__ import annotations

import copy
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from rdpo_fast import preemption
from rdpo_fast.data import sources as data_sources
from rdpo_fast.data.records import PreferenceData, collate, epoch_order, step_batches, steps_per_epoch
from rdpo_fast.data.shipped import default_path
from rdpo_fast.errors import Diverged
from rdpo_fast.losses.metrics import METRIC_NAMES, NLL_METRIC, nll_value, pair_values, token_means
from rdpo_fast.models import loading as modeling

from . import checkpoint as ckpt
from . import fault_points, optim, reporting, run_dir
from .config import TrainConfig
from .dist import Dist
from .forward import PreferenceStep, length_sorted, reference_inputs, training_loss
from .ref_cache import precompute_reference

QUANTITIES = {"loss": "loss", "grad_norm": "gradient norm"}  # what a skipped step's outcome names, in words


# ---------------------------------------------------------------------------------------- the run's state
@dataclass
class Stats:
    """Sums over the pairs of one optimizer step or one evaluation, in float64 on the host; `reduce` sums
    them over ranks and returns their means under TRL's names (rdpo_fast.losses.metrics)."""
    pairs: float = 0.0
    loss: float = 0.0
    nll_loss: float = 0.0
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(METRIC_NAMES, 0.0))

    def add(self, loss: torch.Tensor, aux: tuple[torch.Tensor, ...]) -> None:
        aux = [t.detach().double().cpu() for t in aux]
        per_pair = pair_values(aux)
        n = per_pair["rewards/chosen"].numel()
        self.pairs += n
        self.loss += float(loss.detach().double().cpu())
        self.nll_loss += float(nll_value(aux))
        for k, v in per_pair.items():
            self.sums[k] += float(v.sum())
        for k, v in token_means(aux).items():
            self.sums[k] += float(v) * n  # a batch's mean over its tokens, weighted by its pairs

    def reduce(self, dist: Dist, prefix: str = "", nll: bool = False) -> dict[str, float]:
        """{loss, the TRL metrics[, nll_loss]} (prefix="eval_" for the held-out pass): the loss and the NLL
        as sums (each is already normalised by the step's totals), the metrics as means over pairs."""
        totals = torch.tensor([self.pairs, self.loss, self.nll_loss, *self.sums.values()], dtype=torch.float64)
        pairs, loss, nll_loss, *sums = dist.data_sum(totals).cpu().tolist()
        n = max(pairs, 1.0)
        out = {prefix + "loss": loss}
        out.update({prefix + k: s / n for k, s in zip(self.sums, sums)})
        if nll:  # TRL logs nll_loss only when the NLL term is on
            out[prefix + NLL_METRIC] = nll_loss
        return out


@dataclass
class Progress:
    """Where the run stands: optimizer steps done, the epoch, and the steps done within it; the steps
    whose update was skipped (non-finite), and the latest run of them in a row with its first step and
    quantity. A checkpoint saves it; `epoch` moves on lazily, at the next step after the epoch's last
    one (and when the run ends), so a checkpoint written at an epoch's end says (epoch, steps per epoch)."""
    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    skipped_steps: int = 0
    nonfinite_streak: int = 0
    streak_start: tuple[int, str] | None = None  # (step, "loss" or "grad_norm") of the streak's first step

    @classmethod
    def from_state(cls, state: dict) -> Progress:
        start = state.get("streak_start")  # the skip counts: absent from checkpoints written before them
        return cls(state["global_step"], state["epoch"], state["step_in_epoch"], state.get("skipped_steps", 0),
                   state.get("nonfinite_streak", 0), tuple(start) if start else None)

    def state(self, cfg: TrainConfig, data_world: int) -> dict:
        """The trainer state a checkpoint saves (with the run's settings, for resume). data_world: the
        data-parallel processes, which fix the order the pairs are dealt in and the steps per epoch."""
        return {"global_step": self.global_step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "skipped_steps": self.skipped_steps, "nonfinite_streak": self.nonfinite_streak,
                "streak_start": list(self.streak_start) if self.streak_start else None, "data_world": data_world,
                "config": cfg.to_dict()}

    def upcoming(self, per_epoch: int) -> tuple[int, int]:
        """(epoch, step within it) of the next step."""
        return (self.epoch + 1, 0) if self.step_in_epoch >= per_epoch else (self.epoch, self.step_in_epoch)

    def next_epoch_if_done(self, per_epoch: int) -> None:
        self.epoch, self.step_in_epoch = self.upcoming(per_epoch)

    def count(self, outcome: optim.StepOutcome) -> None:
        """The step just done (global_step counts it already): its update applied, or skipped."""
        if outcome.applied or outcome.nonfinite is None:
            self.nonfinite_streak, self.streak_start = 0, None
        else:
            self.nonfinite_streak += 1
            self.streak_start = self.streak_start or (self.global_step, outcome.nonfinite)
        self.skipped_steps += not outcome.applied


@dataclass
class Run:
    """Everything a training run holds between steps (setup builds it)."""
    cfg: TrainConfig
    dist: Dist
    log: Callable[..., None]
    started: float  # time.time() at the start, for the summary's seconds
    tokenizer: Any
    train_data: PreferenceData
    eval_data: PreferenceData | None
    reference: str  # the reference mode in use (resolve_reference)
    refs: dict[str, tuple[torch.Tensor, torch.Tensor] | None]  # precomputed reference log-probs by split
    ref_model: torch.nn.Module | None  # the frozen copy (reference "copy")
    model: torch.nn.Module
    step_module: PreferenceStep
    wrapped: torch.nn.Module  # step_module under DDP / FSDP2 (itself in a world of one)
    optimizer: torch.optim.Optimizer
    stepper: optim.Stepper
    scheduler: Any
    per_epoch: int
    total: int
    pad_id: int
    progress: Progress
    metrics: reporting.MetricsLog
    bar: Any = None  # tqdm, on the main rank with --progress
    stop: str | None = None  # why the run ends before its last step (see the module docstring); None while it goes on
    saved: tuple[int, str] | None = None  # (step, path) of the newest checkpoint this run wrote or resumed from
    _order: tuple[int, torch.Tensor] | None = field(default=None, init=False, repr=False)  # (epoch, its order)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The pair order of an epoch (a function of seed and epoch; the latest one is kept)."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(len(self.train_data), self.cfg.seed, epoch))
        return self._order[1]


# ---------------------------------------------------------------------------------------- the run
def train(cfg: TrainConfig) -> dict:
    """Runs training; returns the final summary (also written to RUN/summary.json). Raises
    rdpo_fast.preemption.Preempted after a stop signal (a checkpoint at the last finished step written)
    and rdpo_fast.errors.Diverged when the loss or gradient norm stayed non-finite."""
    cfg.validate()
    dist = Dist(cfg.tp)
    try:
        with preemption.handling(), run_dir.claim(cfg, dist):
            run = setup(cfg, dist)
            with preemption.deferred():
                summary = _loop(run)
        if run.stop == "signal":
            raise _preempted(run)
        if run.stop == "diverged":
            raise Diverged(_divergence(run))
        return summary
    finally:
        dist.close()


def _loop(run: Run) -> dict:
    """The steps, with their logging, evaluations, checkpoints and stops, then finish."""
    cfg = run.cfg
    while run.progress.global_step < run.total and run.stop is None:
        row = step(run)
        if row is None:  # a stop signal on some rank: every rank got the same vote
            run.stop = "signal"
            break
        _log_step(run, row)
        fault_points.reached("step-done")
        done = run.progress.global_step
        if run.eval_data is not None and _due(cfg.eval_steps, done, run.total):
            run.metrics.append({**evaluate(run), "step": done})
        if cfg.stop_after_steps is not None and cfg.stop_after_steps <= done < run.total:
            run.stop = "stop_after_steps"
        if cfg.max_nonfinite_steps and run.progress.nonfinite_streak >= cfg.max_nonfinite_steps:
            run.stop = "diverged"
        elif _due(cfg.save_steps, done, run.total) or run.stop is not None:
            run.log(f"checkpoint: {checkpoint(run)}")
    if run.stop == "signal" and run.progress.global_step not in (0, run.saved and run.saved[0]):
        run.log(f"checkpoint: {checkpoint(run)}")
        if preemption.count() > 1:  # recorded only: nothing interrupts the save
            run.log(f"note: {preemption.count() - 1} more stop signal(s) came during the save; it finished")
    return finish(run)


def _preempted(run: Run) -> preemption.Preempted:
    """The stop signal's one line: where the run stands and how to resume it."""
    name = preemption.requested() or "a stop signal (on another rank)"
    if run.saved is None:
        return preemption.Preempted(name, "before the first step: nothing to save", "run the same command again")
    step, path = run.saved
    out = run.cfg.output_dir
    inside = os.path.realpath(os.path.dirname(path)) == os.path.realpath(os.path.join(out, "checkpoints"))
    resume = out if inside else f"{path} --output-dir {out}"  # resumed from a checkpoint kept elsewhere, no step since
    return preemption.Preempted(name, f"after step {step} of {run.total}: checkpoint {path}",
                                f"resume with: rdpo-fast train --resume {resume}")


def _divergence(run: Run) -> str:
    """The diverged run's one line: the step and quantity that began it, how long it lasted, what is left."""
    p, cfg = run.progress, run.cfg
    first, what = p.streak_start
    span = f"step {first}" if p.nonfinite_streak == 1 else f"steps {first}-{p.global_step}"
    newest = ckpt.list_checkpoints(cfg.output_dir)
    kept = f"the newest checkpoint, {newest[-1]}, holds finite weights" if newest else "no checkpoint was written"
    return (f"training diverged at step {first}: its {QUANTITIES[what]} was not finite; {span} "
            f"({p.nonfinite_streak} in a row, --max-nonfinite-steps {cfg.max_nonfinite_steps}) had a non-finite "
            f"loss or gradient norm and were skipped, so no update came from them and no final/ was exported; "
            f"{kept}; try a lower --lr")


def _due(every: int, done: int, total: int) -> bool:
    """A periodic eval or save after step `done` (the last step has its own, in finish)."""
    return bool(every) and done % every == 0 and done < total


def setup(cfg: TrainConfig, dist: Dist) -> Run:
    """Everything before the first step, in the order that fails fastest: the output directory, the data
    (bad input fails in seconds, before the model loads or anything is written), the model and its
    reference, the optimizer, then the checkpoint to resume from."""
    started = time.time()
    log = print if dist.main else _quiet
    resume_from = ckpt.find_checkpoint(cfg.resume) if cfg.resume is not None else None
    if resume_from is not None:
        _check_same_data_world(resume_from, dist.data_world)
    run_dir.prepare_output_dir(cfg, dist.main)  # no other run's checkpoints: before anything loads
    _seed_everything(cfg.seed)
    precision = optim.resolve_precision(cfg.dtype, cfg.bf16, dist.device)

    tokenizer = modeling.load_tokenizer(cfg.model, cache_dir=cfg.cache_location())
    train_data, eval_data = _load_data(cfg, tokenizer, log)
    mode = resolve_reference(cfg, train_data, eval_data)
    if mode == "precompute" and dist.main:
        run_dir.check_writable(cfg.cache_location(), what="reference cache directory (--cache-dir)")
    per_epoch = steps_per_epoch(len(train_data), batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                                world=dist.data_world)
    if per_epoch == 0:
        raise ValueError(f"{train_data.path} has {len(train_data)} pairs, fewer than one optimizer step takes "
                         f"(batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum} x {dist.data_world} "
                         "data-parallel processes)")
    total = cfg.max_steps or per_epoch * cfg.epochs

    model = modeling.load_model(cfg.model, dtype=precision.weights, cache_dir=cfg.cache_location(),
                                tp=cfg.tp).to(dist.device)
    optim.prepare_model(model, precision=precision, gradient_checkpointing=cfg.gradient_checkpointing,
                        disable_dropout=cfg.disable_dropout)
    progress = Progress() if resume_from is None else Progress.from_state(ckpt.read_state(resume_from))
    # The reference is taken from the model as loaded, before LoRA or freezing changes it.
    refs = {"train": None, "eval": None}
    if mode == "precompute":
        needed = pairs_to_train(len(train_data), cfg, progress, per_epoch, total, dist.data_world)
        refs["train"] = precompute_reference(cfg, model, train_data, dist, compute_dtype=precision.compute, log=log,
                                             needed=needed)
        if eval_data is not None:
            refs["eval"] = precompute_reference(cfg, model, eval_data, dist, compute_dtype=precision.compute, log=log)
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if mode == "copy" else None
    if cfg.lora_r:
        model = modeling.apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                                    targets=[t.strip() for t in cfg.lora_targets.split(",") if t.strip()])
    modeling.freeze_all_but_last(model, cfg.train_last_layers)
    optim.master_weights(model)  # trained weights in fp32; frozen ones stay in --dtype
    step_module = PreferenceStep(model, training_loss(cfg, model, use_ref_model=mode != "none"),
                                 adapters_reference=mode == "adapters", compute_dtype=precision.compute,
                                 tensor_parallel=cfg.tp > 1)
    if dist.world > 1 and cfg.distributed == "fsdp" and cfg.lora_r:
        raise ValueError("LoRA with FSDP2 is not supported yet; use --distributed ddp")
    wrapped = dist.wrap(step_module, cfg.distributed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optim.build_optimizer(cfg.optim, params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    stepper = optim.Stepper(optimizer, params, precision=precision, max_grad_norm=cfg.max_grad_norm)
    scheduler, warmup = optim.build_scheduler(cfg.scheduler, optimizer, warmup_steps=cfg.warmup_steps,
                                              warmup_ratio=cfg.warmup_ratio, total_steps=total)

    if resume_from is not None:
        progress = Progress.from_state(ckpt.load_checkpoint(resume_from, model=model, optimizer=optimizer,
                                                            scheduler=scheduler, scaler=stepper.scaler, log=log))
        log(f"resumed from {resume_from} at step {progress.global_step}")
    if dist.main:
        os.makedirs(cfg.output_dir, exist_ok=True)
        run_dir.write_json(os.path.join(cfg.output_dir, "config.json"), cfg.to_dict())
    metrics = reporting.MetricsLog(cfg.output_dir, reporting.for_run(cfg, enabled=dist.main), enabled=dist.main,
                                   resume_step=progress.global_step)
    n_train = sum(p.numel() for p in params)
    log(f"model {cfg.model}: {n_train / 1e6:.3g}M of {sum(p.numel() for p in model.parameters()) / 1e6:.3g}M "
        f"parameters trained; reference: {mode}; {len(train_data)} train pairs"
        + (f", {len(eval_data)} held-out" if eval_data else "") + f"; {total} steps of "
        f"{cfg.batch_size * cfg.grad_accum * dist.data_world} pairs, warmup {warmup}; {dist.world} process(es)"
        + (f" (tensor parallel, tp {cfg.tp})" if cfg.tp > 1 else f" ({cfg.distributed})" if dist.world > 1 else ""))
    bar = None
    if cfg.progress and dist.main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=progress.global_step, desc="train", dynamic_ncols=True, file=sys.stderr)
    model.train()
    return Run(cfg=cfg, dist=dist, log=log, started=started, tokenizer=tokenizer, train_data=train_data,
               eval_data=eval_data, reference=mode, refs=refs, ref_model=ref_model, model=model,
               step_module=step_module, wrapped=wrapped, optimizer=optimizer, stepper=stepper, scheduler=scheduler,
               per_epoch=per_epoch, total=total, pad_id=_pad_id(tokenizer), progress=progress, metrics=metrics,
               bar=bar, saved=None if resume_from is None else (progress.global_step, resume_from))


def _check_same_data_world(resume_from: str, data_world: int) -> None:
    """An exact resume needs the checkpoint's number of data-parallel processes: the pairs each step
    takes, where the epoch stands and the schedule's length all follow from it (checkpoints written
    before it was saved are not checked)."""
    saved = ckpt.read_state(resume_from).get("data_world")
    if saved is not None and saved != data_world:
        raise ValueError(f"cannot resume {resume_from} exactly with {data_world} data-parallel process(es): it was "
                         f"written by {saved} (processes / --tp), and the pairs of each step, the position in the "
                         f"epoch and the schedule's length depend on that number. Resume with {saved}, or start a "
                         "new run from its weights (--model RUN/final after an export)")


def step(run: Run) -> dict | None:
    """One optimizer step over this rank's share of the step's pairs: a forward and backward per
    micro-batch (gradients all-reduced on the last one only), the update, the schedule. Returns the
    step's metrics row (reduced over ranks: every rank must call it), or None, having changed nothing,
    when a stop signal reached any rank before the step began (the counts' sum carries the votes).
    A step with a non-finite loss or gradient norm is done without its update (optim.Stepper); its row
    says "skipped"."""
    cfg, dist, progress = run.cfg, run.dist, run.progress
    epoch, in_epoch = progress.upcoming(run.per_epoch)
    batches = step_batches(run.epoch_order(epoch), in_epoch, batch_size=cfg.batch_size,
                           grad_accum=cfg.grad_accum, rank=dist.data_rank, world=dist.data_world)
    mbs = [collate(run.train_data, b, pad_id=run.pad_id, packed=cfg.packed, ref_logps=run.refs["train"]).to(dist.device)
           for b in batches]
    stop_vote = preemption.requested() is not None
    counts = dist.data_sum(torch.tensor([sum(b.num_pairs for b in mbs), sum(b.num_chosen_tokens for b in mbs),
                                         stop_vote], dtype=torch.int64))
    # Under --tp the replicas' sum is this rank's own, and the vote still needs every rank.
    if (int(counts[2]) if dist.tp == 1 else dist.any_rank(stop_vote)):
        return None
    num_pairs, num_tokens = int(counts[0]), max(int(counts[1]), 1)
    stats = Stats()
    for i, mb in enumerate(mbs):
        with dist.grad_sync(run.wrapped, cfg.distributed, enabled=i == len(mbs) - 1):
            loss, aux = run.wrapped(mb, num_pairs, num_tokens, **reference_inputs(run.ref_model, mb))
            run.stepper.backward(loss * dist.data_world)
        stats.add(loss, aux)
    row = stats.reduce(dist, nll=cfg.nll_alpha > 0)  # before the update: the summed loss decides it on every rank
    lr = run.scheduler.get_last_lr()[0]
    outcome = run.stepper.step(row["loss"])
    if outcome.applied:
        run.scheduler.step()  # the schedule counts updates (optim's docstring)
    run.optimizer.zero_grad(set_to_none=True)
    progress.epoch, progress.step_in_epoch = epoch, in_epoch + 1
    progress.global_step += 1
    progress.count(outcome)
    done = progress.global_step
    row.update(step=done, epoch=round(done / run.per_epoch, 4), learning_rate=lr, grad_norm=outcome.grad_norm)
    if not outcome.applied:
        row["skipped"] = True
        if outcome.nonfinite is not None:
            run.log(f"step {done}: non-finite {QUANTITIES[outcome.nonfinite]} (loss {row['loss']}, gradient "
                    f"norm {outcome.grad_norm}): update skipped, {progress.nonfinite_streak} in a row")
    return row


@torch.no_grad()
def evaluate(run: Run) -> dict:
    """Held-out loss, reward accuracy and margins (TRL's eval_* names). Ranks split the pairs and run the
    unwrapped module (no DDP collectives, so uneven shards are fine), except under FSDP2 where every rank
    must join every forward, so each evaluates all pairs and rank 0's count."""
    cfg, dist, data = run.cfg, run.dist, run.eval_data
    sharded = dist.world > 1 and cfg.distributed == "fsdp" and dist.tp == 1
    model = run.model
    was_training = model.training
    model.eval()
    stats = Stats()
    # Under --tp every rank computes every pair too (its shard of each layer), and holds the same sums.
    everyone = sharded or dist.tp > 1
    idx = torch.arange(len(data)) if everyone else torch.arange(dist.data_rank, len(data), dist.data_world)
    chosen_tokens = max(1, sum(len(p.chosen) for p in data.pairs))
    for part in length_sorted(data, idx).split(cfg.eval_batch_size):
        b = collate(data, part, pad_id=run.pad_id, packed=cfg.packed, ref_logps=run.refs["eval"]).to(dist.device)
        loss, aux = run.step_module(b, len(data), chosen_tokens, **reference_inputs(run.ref_model, b))
        if not sharded or dist.main:
            stats.add(loss, aux)
    model.train(was_training)
    return stats.reduce(dist, prefix="eval_", nll=cfg.nll_alpha > 0)


def checkpoint(run: Run) -> str:
    """Saves RUN/checkpoints/step-N (every rank takes part), keeping the newest --save-total-limit;
    returns its path."""
    _check_finite_weights(run, "checkpoint")
    path = ckpt.save_checkpoint(run.cfg.output_dir, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler,
                                state=run.progress.state(run.cfg, run.dist.data_world), keep=run.cfg.save_total_limit,
                                scaler=run.stepper.scaler)
    run.saved = (run.progress.global_step, path)
    return path


def _check_finite_weights(run: Run, what: str) -> None:
    """Nothing is written from non-finite weights. Skipping non-finite steps keeps them finite; this
    guards the one way left, finite updates that overflow (a weight decay factor far from 1), at one
    sum over ranks per save."""
    bad = run.dist.all_sum(torch.tensor([not optim.weights_finite(run.stepper.params)], dtype=torch.int64))
    if int(bad[0]):
        raise Diverged(f"training diverged: the weights are not finite after step {run.progress.global_step} "
                       f"(finite updates overflowed); no {what} was written from them; try a lower --lr")


def finish(run: Run) -> dict:
    """The end of the run. A run that went the distance is evaluated, checkpointed (with --save-steps)
    and exported (RUN/final); one that stopped early only says so. Writes RUN/summary.json and returns it."""
    cfg, dist, progress = run.cfg, run.dist, run.progress
    if run.bar is not None:
        run.bar.close()
    summary = {"global_step": progress.global_step, "total_steps": run.total, "stopped_early": run.stop is not None,
               "train_pairs": len(run.train_data), "train_truncated": run.train_data.num_truncated,
               "reference": run.reference, "processes": dist.world}
    if run.stop is not None:
        summary["stop"] = run.stop
    if progress.skipped_steps:
        summary["skipped_steps"] = progress.skipped_steps
    if run.stop is None:
        progress.next_epoch_if_done(run.per_epoch)
        if run.eval_data is not None:
            held_out = evaluate(run)
            run.metrics.append({**held_out, "step": progress.global_step})
            summary.update(held_out, eval_pairs=len(run.eval_data), eval_truncated=run.eval_data.num_truncated)
        if cfg.save_steps:
            summary["checkpoint"] = checkpoint(run)
        if cfg.export:
            _check_finite_weights(run, "export")
            final = os.path.join(cfg.output_dir, "final")
            weights = ckpt.full_model_state(run.model) if dist.world > 1 else None
            ckpt.export_model(final, run.model, run.tokenizer, weights)
            summary["export"] = final
    run.metrics.close()
    summary["seconds"] = round(time.time() - run.started, 1)
    if dist.main:
        run_dir.write_json(os.path.join(cfg.output_dir, "summary.json"), summary)
        if "eval_rewards/accuracies" in summary:
            run.log(f"held-out reward accuracy {summary['eval_rewards/accuracies']:.3f}, margin "
                    f"{summary['eval_rewards/margins']:.3f}, loss {summary['eval_loss']:.4f} "
                    f"({summary['eval_pairs']} pairs)")
        run.log(f"done: {progress.global_step} steps in {summary['seconds']:.0f}s; run directory {cfg.output_dir}")
    return summary


# ---------------------------------------------------------------------------------------- setup's parts
def _quiet(*args, **kwargs) -> None:
    """The log of every rank but the main one."""


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _load_data(cfg: TrainConfig, tokenizer, log) -> tuple[PreferenceData, PreferenceData | None]:
    """The training pairs (--data, else the shipped set) and the held-out ones, tokenised and checked."""
    train_path = cfg.data or default_path("train")
    eval_path, eval_split = data_sources.eval_source(cfg, default_path("eval"))
    kw = dict(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
              score_temperature=cfg.score_temperature, columns=data_sources.columns(cfg))
    train_data = data_sources.load(train_path, tokenizer, split=cfg.dataset_split, **kw)
    eval_data = data_sources.load(eval_path, tokenizer, split=eval_split, **kw) if eval_path else None
    if cfg.loss_type == "rdpo" and not train_data.has_soft_labels:
        raise ValueError(f"loss_type 'rdpo' needs soft labels: give soft_label or chosen_score/rejected_score on "
                         f"every record of {train_path}")
    for d in (train_data, eval_data):
        if d is not None and d.num_truncated:
            log(f"{d.path}: {d.num_truncated} of {len(d)} pairs truncated to max_length={cfg.max_length}"
                + (f", max_prompt_length={cfg.max_prompt_length}" if cfg.max_prompt_length else ""))
    return train_data, eval_data


def resolve_reference(cfg: TrainConfig, train_data: PreferenceData, eval_data: PreferenceData | None) -> str:
    """The reference mode a run uses: --reference, with "auto" resolved (the records' own log-probs when
    every record has them, the LoRA base with adapters off, else one precomputed pass)."""
    mode = cfg.reference
    if cfg.loss_type == "simpo":
        return "none"
    if mode == "auto":
        if train_data.has_ref_logps and (eval_data is None or eval_data.has_ref_logps):
            return "dataset"
        return "adapters" if cfg.lora_r else "precompute"
    if mode == "dataset":
        for d in (train_data, eval_data):
            if d is not None and not d.has_ref_logps:
                raise ValueError(f"reference 'dataset' needs ref_chosen_logps and ref_rejected_logps on every "
                                 f"record; {d.path} has none")
    return mode


def pairs_to_train(n: int, cfg: TrainConfig, progress: Progress, per_epoch: int, total: int,
                   world: int) -> torch.Tensor:
    """Indices of the pairs the remaining steps will use, replaying the epoch orders."""
    per_step = cfg.batch_size * cfg.grad_accum * world
    epoch, in_epoch, done = progress.epoch, progress.step_in_epoch, progress.global_step
    used = torch.zeros(n, dtype=torch.bool)
    while done < total and not bool(used.all()):
        k = min(per_epoch - in_epoch, total - done)
        used[epoch_order(n, cfg.seed, epoch)[in_epoch * per_step:(in_epoch + k) * per_step]] = True
        done += k
        epoch, in_epoch = epoch + 1, 0
    return used.nonzero().squeeze(1)


def _log_step(run: Run, row: dict) -> None:
    """The step's row into RUN/metrics.jsonl every --logging-steps, at the last step and whenever its
    update was skipped; the bar."""
    done = run.progress.global_step
    if done % run.cfg.logging_steps == 0 or done == run.total or row.get("skipped"):
        run.metrics.append(row)
    if run.bar is not None:
        run.bar.update(1)
        run.bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['rewards/accuracies']:.2f}",
                            margin=f"{row['rewards/margins']:.3f}")
