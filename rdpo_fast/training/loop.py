"""The lean preference-training loop: a Hugging Face causal LM, the fused loss on its last hidden states
and lm_head weight (no logits), a reference model in one of four forms, AdamW with warmup and a
schedule, exact gradient accumulation, checkpoints with exact resume, held-out evaluation, and
torchrun scale-out with DDP or FSDP2.

Exactness of accumulation: every micro-batch calls the loss with the whole optimizer step's pair and
chosen-token counts (summed over micro-batches and ranks), so the micro-batch losses add up to the
step's loss. DDP and FSDP2 average gradients over ranks; the loss is multiplied by the world size before
backward so the average becomes that sum.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
import math
import os
import random
import sys
import time

import torch

from . import checkpoint as ckpt
from rdpo_fast.data import sources as data_sources
from rdpo_fast import errors
from rdpo_fast.models import loading as modeling
from . import optim
from . import reporting
from . import run_dir
from .config import TrainConfig
from rdpo_fast.data.records import PreferenceData, collate, epoch_order, step_batches, steps_per_epoch
from rdpo_fast.data.shipped import default_path
from rdpo_fast.losses.fused import FusedLinearPreferenceLoss

METRIC_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
               "logps/rejected", "logits/chosen", "logits/rejected")


# ---------------------------------------------------------------------------------------- processes
class Dist:
    """Rank, world size and device of this process; torch.distributed is set up under torchrun."""

    def __init__(self):
        import torch.distributed as dist

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        self.device = torch.device(f"cuda:{local}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        self.started = False
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
            self.started = True
        self.dist = dist if self.world > 1 else None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.dist is not None:
            t = t.to(self.device)
            self.dist.all_reduce(t)
        return t

    def barrier(self):
        if self.dist is not None:
            self.dist.barrier()

    def close(self):
        if self.started:
            self.dist.destroy_process_group()


# ---------------------------------------------------------------------------------------- the step
class PreferenceStep(torch.nn.Module):
    """Policy forward + fused loss as one module, so DDP and FSDP2 wrap a single forward; inside it the
    FSDP2 root has unsharded the lm_head/embedding weight, so the loss reads the full matrix."""

    def __init__(self, model, loss_fn, *, adapters_reference: bool, bf16):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.adapters_reference = adapters_reference
        # bf16: True / False, or the autocast dtype itself (rdpo_fast.training.optim.Precision.compute).
        self.compute = bf16 if isinstance(bf16, torch.dtype) else (torch.bfloat16 if bf16 else None)
        self.bf16 = self.compute is not None

    def _device_type(self):
        return next(self.model.parameters()).device.type

    def _hidden(self, batch):
        with torch.autocast(self._device_type(), dtype=self.compute or torch.float32, enabled=self.bf16):
            return modeling.hidden_states(self.model, batch)

    def _cast(self, t):
        # The loss runs outside autocast; under bf16/fp16 its GEMMs take low-precision inputs (fp32 dW accumulation).
        return t.to(self.compute) if self.bf16 else t

    def forward(self, batch, num_pairs: int, num_chosen_tokens: int, ref_hidden=None, ref_weight=None):
        kw = {}
        if self.adapters_reference:
            with torch.no_grad(), self.model.disable_adapter():
                kw["ref_input"] = self._cast(self._hidden(batch))
                kw["ref_weight"] = self._cast(modeling.output_weight(self.model))
        elif ref_hidden is not None:
            kw["ref_input"], kw["ref_weight"] = self._cast(ref_hidden), self._cast(ref_weight)
        elif batch.ref_chosen is not None and self.loss_fn.cfg.use_ref_model:
            kw["ref_chosen_logps"], kw["ref_rejected_logps"] = batch.ref_chosen, batch.ref_rejected
        hidden = self._cast(self._hidden(batch))
        weight = self._cast(modeling.output_weight(self.model))
        if batch.host_counts is not None and isinstance(self.loss_fn, FusedLinearPreferenceLoss):
            kw["host_counts"] = list(batch.host_counts)  # no device read-back before the loss's kernels
        with torch.autocast(self._device_type(), enabled=False):
            return self.loss_fn(weight, hidden, batch.target, soft_labels=batch.soft_labels,
                                num_pairs=num_pairs, num_chosen_tokens=num_chosen_tokens, **kw)


class Stats:
    """Sums over pairs for one optimizer step or one evaluation, reduced over ranks, as TRL's names."""

    def __init__(self):
        self.v = torch.zeros(11, dtype=torch.float64)

    def add(self, loss, aux):
        c_logp, r_logp, c_logit, r_logit, nll, c_rew, r_rew = (t.detach().double().cpu() for t in aux)
        n = c_rew.numel()
        self.v += torch.stack([
            torch.tensor(float(n)), c_rew.sum(), r_rew.sum(), (c_rew > r_rew).double().sum(),
            (c_rew - r_rew).sum(), c_logp.sum(), r_logp.sum(), c_logit * n, r_logit * n,
            nll.reshape(()), loss.detach().double().cpu().reshape(())])

    def reduce(self, dist: Dist, prefix: str = "", nll: bool = False) -> dict:
        v = dist.all_sum(self.v.clone()).cpu()
        n = max(v[0].item(), 1.0)
        out = {prefix + "loss": v[10].item()}
        out.update({prefix + k: (v[i + 1] / n).item() for i, k in enumerate(METRIC_KEYS)})
        if nll:  # TRL logs nll_loss only when the NLL term is on
            out[prefix + "nll_loss"] = v[9].item()
        return out


# ---------------------------------------------------------------------------------------- reference
def _logps_fn(cfg: TrainConfig, model) -> FusedLinearPreferenceLoss:
    """The loss's own sequence log-probs (length-averaged / LD-weighted as configured, under the model's
    logit transform): its aux outputs under no_grad with no reference, so a cached reference matches
    the in-pass one exactly."""
    return FusedLinearPreferenceLoss(loss_type="sigmoid", beta=1.0, use_ref_model=False,
                                     average_log_prob=cfg.average_log_prob, ld_alpha=cfg.ld_alpha,
                                     workspace_budget=_workspace(cfg),
                                     **modeling.logit_transform(model).kernel_args())


def _workspace(cfg):
    return None if cfg.workspace_mb is None else int(cfg.workspace_mb * 2**20)


def reference_key(cfg: TrainConfig, data: PreferenceData, bf16: bool) -> str:
    """Cache key of a reference pass: the model's files, the tokenised data (which fixes the data and
    every tokenizer setting), and the settings that shape a sequence log-prob."""
    h = hashlib.sha256()
    weights = optim.resolve_precision(cfg.dtype, cfg.bf16, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    low = {} if weights.weights == torch.float32 else {"weights": str(weights.weights)}  # fp32 keys as before
    h.update(json.dumps({"model": modeling.identity(cfg.model), "average_log_prob": cfg.average_log_prob,
                         "ld_alpha": cfg.ld_alpha, "bf16": bf16 if isinstance(bf16, bool) else str(bf16),
                         "packed": cfg.packed, "max_length": cfg.max_length,
                         "max_prompt_length": cfg.max_prompt_length, **low}, sort_keys=True).encode())
    for p in data.pairs:
        h.update(json.dumps([p.prompt, p.chosen, p.rejected]).encode())
    return h.hexdigest()


def _cache_dir(cfg):
    return cfg.cache_dir or os.environ.get("RDPO_FAST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                              "rdpo_fast")


@torch.no_grad()
def precompute_reference(cfg, model, data, dist, *, bf16, log=print, needed=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference log-probs [len(data)] (chosen, rejected) from the model as it is now, before training.
    Cached on disk per pair: `needed` (pair indices; default all) are computed unless already cached, so
    a run that trains on part of an epoch pays only for that part, and a later run reuses it. Ranks
    split the work and sum the results; entries outside `needed` may be zero."""
    from safetensors.torch import load_file, save_file

    key = reference_key(cfg, data, bf16)
    path = os.path.join(_cache_dir(cfg), "reference", f"{key[:32]}.safetensors")
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
    step = PreferenceStep(model, _logps_fn(cfg, model), adapters_reference=False, bf16=bf16)
    was_training = model.training
    model.eval()
    new_c, new_r = torch.zeros(n), torch.zeros(n)
    device = next(model.parameters()).device
    for idx in _length_sorted(data, todo[dist.rank::dist.world]).split(cfg.eval_batch_size):
        b = collate(data, idx, pad_id=_pad_id(model), packed=cfg.packed).to(device)
        _, aux = step(b, b.num_pairs, max(b.num_chosen_tokens, 1))
        new_c[idx], new_r[idx] = aux[0].float().cpu(), aux[1].float().cpu()
    new_c, new_r = dist.all_sum(new_c).cpu(), dist.all_sum(new_r).cpu()
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


def pairs_to_train(n: int, cfg: TrainConfig, state: dict, per_epoch: int, total: int, world: int) -> torch.Tensor:
    """Indices of the pairs the remaining steps will use, replaying the epoch orders."""
    per_step = cfg.batch_size * cfg.grad_accum * world
    epoch, in_epoch, step = state["epoch"], state["step_in_epoch"], state["global_step"]
    used = torch.zeros(n, dtype=torch.bool)
    while step < total and not bool(used.all()):
        k = min(per_epoch - in_epoch, total - step)
        used[epoch_order(n, cfg.seed, epoch)[in_epoch * per_step:(in_epoch + k) * per_step]] = True
        step += k
        epoch, in_epoch = epoch + 1, 0
    return used.nonzero().squeeze(1)


def _length_sorted(data, idx):
    # Similar lengths per batch: less padding in the reference and evaluation passes.
    lens = torch.tensor([len(data.pairs[i].prompt) + max(len(data.pairs[i].chosen), len(data.pairs[i].rejected))
                         for i in idx.tolist()])
    return idx[torch.argsort(lens, stable=True)]


def _pad_id(model):
    cfg = modeling._base(model).config
    pad = getattr(cfg, "pad_token_id", None)
    return 0 if pad is None else int(pad)


def resolve_reference(cfg: TrainConfig, train_data: PreferenceData, eval_data: PreferenceData | None) -> str:
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


# ---------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(step_module, data, ref, cfg, dist, *, ref_model=None, model_sharded=False, pad_id=0) -> dict:
    """Held-out loss, reward accuracy and margins (TRL's eval_* names). Ranks split the pairs and run the
    unwrapped module (no DDP collectives, so uneven shards are fine), except under FSDP2 where every rank
    must join every forward, so each evaluates all pairs and rank 0's count."""
    model = step_module.model
    was_training = model.training
    model.eval()
    stats = Stats()
    idx = torch.arange(len(data)) if model_sharded else torch.arange(dist.rank, len(data), dist.world)
    for part in _length_sorted(data, idx).split(cfg.eval_batch_size):
        b = collate(data, part, pad_id=pad_id, packed=cfg.packed, ref_logps=ref).to(dist.device)
        kw = _ref_inputs(ref_model, b)
        loss, aux = step_module(b, len(data), max(1, _chosen_tokens(data)), **kw)
        if not model_sharded or dist.main:
            stats.add(loss, aux)
    model.train(was_training)
    return stats.reduce(dist, prefix="eval_", nll=cfg.nll_alpha > 0)


def _chosen_tokens(data):
    return sum(len(p.chosen) for p in data.pairs)


def _ref_inputs(ref_model, batch):
    if ref_model is None:
        return {}
    with torch.no_grad():
        return {"ref_hidden": modeling.hidden_states(ref_model, batch),
                "ref_weight": modeling.output_weight(ref_model)}


# ---------------------------------------------------------------------------------------- the run
def _seed_everything(seed):
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _scheduler(cfg, optimizer, total_steps):
    from transformers import get_scheduler

    warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * total_steps)
    name = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}[cfg.scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps), warmup


def _wrap(step_module, cfg, dist):
    """DDP or FSDP2 around the step module under torchrun; the module itself otherwise."""
    if dist.world == 1:
        return step_module
    if cfg.distributed == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        # Buffers (rotary tables) are never trained: no need to sync them every forward.
        params = inspect.signature(DDP).parameters
        no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
        return DDP(step_module, device_ids=[dist.device.index] if dist.device.type == "cuda" else None, **no_sync)
    from torch.distributed.fsdp import fully_shard

    if cfg.lora_r:
        raise ValueError("LoRA with FSDP2 is not supported yet; use --distributed ddp")
    for layer in modeling.decoder_layers(step_module.model):
        fully_shard(layer)
    fully_shard(step_module)
    return step_module


def _sync(wrapped, cfg, dist, enabled: bool):
    """Gradient all-reduce only on the last micro-batch of a step."""
    if dist.world == 1:
        return contextlib.nullcontext()
    if cfg.distributed == "ddp":
        return contextlib.nullcontext() if enabled else wrapped.no_sync()
    wrapped.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def train(cfg: TrainConfig) -> dict:
    """Runs training; returns the final summary (also written to RUN/summary.json)."""
    cfg.validate()
    dist = Dist()
    try:
        return _train(cfg, dist)
    finally:
        dist.close()


def _train(cfg: TrainConfig, dist: Dist) -> dict:
    t_start = time.time()
    log = print if dist.main else (lambda *a, **k: None)
    resume_from = None
    if cfg.resume is not None:
        resume_from = ckpt.find_checkpoint(cfg.resume)
    run_dir.prepare_output_dir(cfg, dist.main)  # writable, no other run's checkpoints: before anything loads
    _seed_everything(cfg.seed)
    precision = optim.resolve_precision(cfg.dtype, cfg.bf16, dist.device)
    bf16 = precision.compute or False  # the autocast dtype (False: none)

    # Data first: bad input fails in seconds, before the model loads or anything is written.
    tokenizer = modeling.load_tokenizer(cfg.model, cache_dir=_cache_dir(cfg))
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
    mode = resolve_reference(cfg, train_data, eval_data)
    if mode == "precompute" and dist.main:
        run_dir.check_writable(_cache_dir(cfg), what="reference cache directory (--cache-dir)")
    per_epoch = steps_per_epoch(len(train_data), batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                                world=dist.world)
    if per_epoch == 0:
        raise ValueError(f"{train_path} has {len(train_data)} pairs, fewer than one optimizer step takes "
                         f"(batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum} x {dist.world} processes)")
    total = cfg.max_steps or per_epoch * cfg.epochs

    model = modeling.load_model(cfg.model, dtype=precision.weights, cache_dir=_cache_dir(cfg)).to(dist.device)
    optim.prepare_model(model, precision=precision, gradient_checkpointing=cfg.gradient_checkpointing,
                        disable_dropout=cfg.disable_dropout)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    state = {"global_step": 0, "epoch": 0, "step_in_epoch": 0}
    if resume_from is not None:
        state = {k: v for k, v in ckpt.read_state(resume_from).items() if k in state}
    refs = {"train": None, "eval": None}
    if mode == "precompute":
        needed = pairs_to_train(len(train_data), cfg, state, per_epoch, total, dist.world)
        refs["train"] = precompute_reference(cfg, model, train_data, dist, bf16=bf16, log=log, needed=needed)
        if eval_data is not None:
            refs["eval"] = precompute_reference(cfg, model, eval_data, dist, bf16=bf16, log=log)
    ref_model = None
    if mode == "copy":
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    if cfg.lora_r:
        model = modeling.apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                                    targets=[t.strip() for t in cfg.lora_targets.split(",") if t.strip()])
    modeling.freeze_all_but_last(model, cfg.train_last_layers)
    optim.master_weights(model)  # trained weights in fp32; frozen ones stay in --dtype
    loss_fn = FusedLinearPreferenceLoss(
        loss_type=cfg.loss_type, beta=cfg.beta, label_smoothing=cfg.label_smoothing,
        alpha=cfg.nll_alpha if cfg.nll_alpha > 0 else 1.0, compute_nll_loss=cfg.nll_alpha > 0,
        use_ref_model=mode != "none", average_log_prob=cfg.average_log_prob, gamma=cfg.gamma, tau=cfg.tau,
        ld_alpha=cfg.ld_alpha, workspace_budget=_workspace(cfg), **modeling.logit_transform(model).kernel_args())
    step_module = PreferenceStep(model, loss_fn, adapters_reference=mode == "adapters", bf16=bf16)
    wrapped = _wrap(step_module, cfg, dist)
    params = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    optimizer = optim.build_optimizer(cfg.optim, params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    stepper = optim.Stepper(optimizer, params, precision=precision, clip=_clip, max_grad_norm=cfg.max_grad_norm)
    scheduler, warmup = _scheduler(cfg, optimizer, total)

    if resume_from is not None:
        state = ckpt.load_checkpoint(resume_from, model=model, optimizer=optimizer, scheduler=scheduler)
        log(f"resumed from {resume_from} at step {state['global_step']}")
    if dist.main:
        os.makedirs(cfg.output_dir, exist_ok=True)
        run_dir.write_json(os.path.join(cfg.output_dir, "config.json"), cfg.to_dict())
    metrics_path = os.path.join(cfg.output_dir, "metrics.jsonl")
    if dist.main:
        _trim_metrics(metrics_path, state["global_step"])
    reporter = reporting.for_run(cfg, enabled=dist.main)
    log(f"model {cfg.model}: {n_train / 1e6:.3g}M of {sum(p.numel() for p in model.parameters()) / 1e6:.3g}M "
        f"parameters trained; reference: {mode}; {len(train_data)} train pairs"
        + (f", {len(eval_data)} held-out" if eval_data else "") + f"; {total} steps of "
        f"{cfg.batch_size * cfg.grad_accum * dist.world} pairs, warmup {warmup}; {dist.world} process(es)"
        + (f" ({cfg.distributed})" if dist.world > 1 else ""))

    sharded_eval = dist.world > 1 and cfg.distributed == "fsdp"
    bar = None
    if cfg.progress and dist.main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=state["global_step"], desc="train", dynamic_ncols=True, file=sys.stderr)
    last_eval = {}
    stopped = False
    model.train()
    while state["global_step"] < total:
        order = epoch_order(len(train_data), cfg.seed, state["epoch"])
        while state["step_in_epoch"] < per_epoch and state["global_step"] < total:
            batches = step_batches(order, state["step_in_epoch"], batch_size=cfg.batch_size,
                                   grad_accum=cfg.grad_accum, rank=dist.rank, world=dist.world)
            mbs = [collate(train_data, b, pad_id=pad_id, packed=cfg.packed, ref_logps=refs["train"]).to(dist.device)
                   for b in batches]
            counts = dist.all_sum(torch.tensor([sum(b.num_pairs for b in mbs),
                                                sum(b.num_chosen_tokens for b in mbs)], dtype=torch.int64))
            num_pairs, num_tokens = int(counts[0]), max(int(counts[1]), 1)
            stats = Stats()
            for i, mb in enumerate(mbs):
                with _sync(wrapped, cfg, dist, i == len(mbs) - 1):
                    loss, aux = wrapped(mb, num_pairs, num_tokens, **_ref_inputs(ref_model, mb))
                    stepper.backward(loss * dist.world)
                stats.add(loss, aux)
            lr = scheduler.get_last_lr()[0]
            grad_norm = stepper.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["global_step"] += 1
            state["step_in_epoch"] += 1
            step = state["global_step"]
            row = stats.reduce(dist, nll=cfg.nll_alpha > 0)
            if step % cfg.logging_steps == 0 or step == total:
                row.update(step=step, epoch=round(step / per_epoch, 4), learning_rate=lr, grad_norm=grad_norm)
                _append_metrics(metrics_path, row, dist, reporter)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['rewards/accuracies']:.2f}",
                                margin=f"{row['rewards/margins']:.3f}")
            if eval_data is not None and cfg.eval_steps and step % cfg.eval_steps == 0 and step < total:
                last_eval = evaluate(step_module, eval_data, refs["eval"], cfg, dist, ref_model=ref_model,
                                     model_sharded=sharded_eval, pad_id=pad_id)
                _append_metrics(metrics_path, {**last_eval, "step": step}, dist, reporter)
            stop_now = cfg.stop_after_steps is not None and step >= cfg.stop_after_steps and step < total
            if (cfg.save_steps and step % cfg.save_steps == 0 and step < total) or stop_now:
                path = ckpt.save_checkpoint(cfg.output_dir, model=model, optimizer=optimizer, scheduler=scheduler,
                                            state={**state, "config": cfg.to_dict()}, keep=cfg.save_total_limit)
                log(f"checkpoint: {path}")
            if stop_now:
                stopped = True
                break
        if stopped:
            break
        if state["step_in_epoch"] >= per_epoch:
            state["epoch"] += 1
            state["step_in_epoch"] = 0
    if bar is not None:
        bar.close()

    summary = {"global_step": state["global_step"], "total_steps": total, "stopped_early": stopped,
               "train_pairs": len(train_data), "train_truncated": train_data.num_truncated,
               "reference": mode, "processes": dist.world}
    if not stopped:
        if eval_data is not None:
            last_eval = evaluate(step_module, eval_data, refs["eval"], cfg, dist, ref_model=ref_model,
                                 model_sharded=sharded_eval, pad_id=pad_id)
            _append_metrics(metrics_path, {**last_eval, "step": state["global_step"]}, dist, reporter)
            summary.update(last_eval, eval_pairs=len(eval_data), eval_truncated=eval_data.num_truncated)
        if cfg.save_steps:
            summary["checkpoint"] = ckpt.save_checkpoint(
                cfg.output_dir, model=model, optimizer=optimizer, scheduler=scheduler,
                state={**state, "config": cfg.to_dict()}, keep=cfg.save_total_limit)
        if cfg.export:
            weights = ckpt.full_model_state(model) if dist.world > 1 else None
            ckpt.export_model(os.path.join(cfg.output_dir, "final"), model, tokenizer, weights)
            summary["export"] = os.path.join(cfg.output_dir, "final")
    reporter.close()
    summary["seconds"] = round(time.time() - t_start, 1)
    if dist.main:
        run_dir.write_json(os.path.join(cfg.output_dir, "summary.json"), summary)
        if "eval_rewards/accuracies" in summary:
            log(f"held-out reward accuracy {summary['eval_rewards/accuracies']:.3f}, margin "
                f"{summary['eval_rewards/margins']:.3f}, loss {summary['eval_loss']:.4f} "
                f"({summary['eval_pairs']} pairs)")
        log(f"done: {state['global_step']} steps in {summary['seconds']:.0f}s; run directory {cfg.output_dir}")
    return summary


def _clip(params, max_norm) -> float:
    if max_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
    full = getattr(norm, "full_tensor", None)
    return float(full() if full is not None else norm)


def _append_metrics(path, row, dist, reporter=None):
    if dist.main:
        with errors.writing(path), open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if reporter is not None:
            reporter.log(row)


def _trim_metrics(path, step):
    """On resume, drop rows logged after the checkpoint's step (they will be logged again)."""
    if not os.path.isfile(path):
        return
    if step == 0:
        os.remove(path)
        return
    with open(path) as f:
        keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
    with open(path, "w") as f:
        f.writelines(keep)
