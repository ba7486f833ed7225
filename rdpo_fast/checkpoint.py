"""Atomic checkpoints, exact resume, and the final export.

A checkpoint is a directory RUN/checkpoints/step-NNNNNNN holding
    model.safetensors     every parameter and buffer, full (gathered from FSDP2 shards), tied aliases once
    optimizer.pt          the optimizer state, full, keyed by parameter name
    scheduler.pt          the LR scheduler state
    rng-rank{R}.pt        each rank's torch (and CUDA) and Python RNG states
    trainer_state.json    step, epoch, position in the epoch, the run's config; written last
It is assembled in a hidden temporary directory beside its final name and renamed into place, so a
crash never leaves a directory that looks like a checkpoint. The final export (RUN/final) is a plain
save_pretrained directory, written the same way, that AutoModelForCausalLM.from_pretrained loads.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid

import torch
from safetensors.torch import load_file, save_file

from .modeling import tied_aliases

STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "model.safetensors"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(ValueError):
    """A path that is not a loadable checkpoint."""


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _rank() -> int:
    d = _dist()
    return d.get_rank() if d else 0


def _barrier():
    d = _dist()
    if d:
        d.barrier()


def _sd_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_model_state(model) -> dict[str, torch.Tensor]:
    """Every rank must call this (FSDP2 gathers shards); rank 0 gets the full state on CPU."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(model, options=_sd_options(cpu_offload=True))
    for alias in tied_aliases(model):
        sd.pop(alias, None)
    return {k: v.detach().contiguous() for k, v in sd.items()}


class _AtomicDir:
    """A temporary directory renamed to `final` on success and removed on failure (on rank 0; other
    ranks write into it between barriers)."""

    def __init__(self, final: str):
        self.final = final
        parent = os.path.dirname(final) or "."
        tag = uuid.uuid4().hex[:8] if _dist() is None else "dist"
        self.tmp = os.path.join(parent, f".tmp-{os.path.basename(final)}-{tag}")

    def __enter__(self):
        if _rank() == 0:
            os.makedirs(os.path.dirname(self.tmp) or ".", exist_ok=True)
            shutil.rmtree(self.tmp, ignore_errors=True)
            os.makedirs(self.tmp)
        _barrier()
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            if _rank() == 0:
                shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        _barrier()
        if _rank() == 0:
            _fsync_dir(self.tmp)
            if os.path.exists(self.final):
                # Replacing an older directory of the same name: move it aside first, since rename
                # onto a non-empty directory fails.
                old = self.tmp + ".old"
                os.rename(self.final, old)
                os.rename(self.tmp, self.final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(self.tmp, self.final)
        _barrier()
        return False


def _fsync_dir(path):
    for f in os.listdir(path):
        with open(os.path.join(path, f), "rb") as fh:
            os.fsync(fh.fileno())


def save_checkpoint(run_dir: str, *, model, optimizer, scheduler, state: dict, keep: int = 0) -> str:
    """Writes RUN/checkpoints/step-N atomically (collective: every rank calls it). keep > 0 keeps only the
    newest `keep` checkpoints. Returns the checkpoint's path."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    step = int(state["global_step"])
    root = os.path.join(run_dir, "checkpoints")
    final = os.path.join(root, f"step-{step:07d}")
    weights = full_model_state(model)
    optim = get_optimizer_state_dict(model, optimizer, options=_sd_options(cpu_offload=True))
    with _AtomicDir(final) as tmp:
        rank = _rank()
        torch.save(rng_state(), os.path.join(tmp, f"rng-rank{rank}.pt"))
        if rank == 0:
            save_file(weights, os.path.join(tmp, WEIGHTS_FILE), metadata={"format": "pt"})
            torch.save(optim, os.path.join(tmp, "optimizer.pt"))
            torch.save(scheduler.state_dict(), os.path.join(tmp, "scheduler.pt"))
            with open(os.path.join(tmp, STATE_FILE), "w") as f:
                json.dump(state, f, indent=1)
    if keep > 0 and _rank() == 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str) -> list[str]:
    """Complete checkpoints of a run, oldest first."""
    root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = _STEP_DIR.match(name)
        if m and os.path.isfile(os.path.join(root, name, STATE_FILE)):
            found.append((int(m.group(1)), os.path.join(root, name)))
    return [p for _, p in sorted(found)]


def remove_stale_temporaries(run_dir: str) -> None:
    """Deletes half-written checkpoint directories left by a process killed while saving."""
    for parent in (os.path.join(run_dir, "checkpoints"), run_dir):
        if os.path.isdir(parent):
            for name in os.listdir(parent):
                if name.startswith(".tmp-"):
                    shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def find_checkpoint(path: str) -> str:
    """A checkpoint directory itself, or the newest checkpoint of a run directory."""
    if not os.path.isdir(path):
        raise CheckpointError(f"cannot resume from {path}: no such directory")
    if os.path.isfile(os.path.join(path, STATE_FILE)):
        missing = [f for f in (WEIGHTS_FILE, "optimizer.pt", "scheduler.pt") if not os.path.isfile(os.path.join(path, f))]
        if missing:
            raise CheckpointError(f"{path} is not a complete checkpoint: missing {', '.join(missing)}")
        return path
    found = list_checkpoints(path)
    if not found:
        raise CheckpointError(f"{path} is not a checkpoint: it has no {STATE_FILE}, and no checkpoints/step-N "
                              "inside (give a checkpoint directory or a run directory that holds one)")
    return found[-1]


def read_state(ckpt: str) -> dict:
    with open(os.path.join(ckpt, STATE_FILE)) as f:
        return json.load(f)


def load_checkpoint(ckpt: str, *, model, optimizer, scheduler) -> dict:
    """Restores weights, optimizer, scheduler and this rank's RNG; returns the trainer state."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    weights = load_file(os.path.join(ckpt, WEIGHTS_FILE))
    for alias, name in tied_aliases(model).items():
        if name in weights:
            weights[alias] = weights[name]
    expected = set(dict(model.state_dict()).keys())
    missing = sorted(expected - set(weights))
    if missing:
        raise CheckpointError(f"{ckpt}: weights do not match this model (missing {missing[:3]}"
                              f"{'...' if len(missing) > 3 else ''}); was it written with other model settings?")
    set_model_state_dict(model, weights, options=_sd_options())
    optim = torch.load(os.path.join(ckpt, "optimizer.pt"), map_location="cpu", weights_only=False)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=optim, options=_sd_options())
    scheduler.load_state_dict(torch.load(os.path.join(ckpt, "scheduler.pt"), weights_only=False))
    rng_file = os.path.join(ckpt, f"rng-rank{_rank()}.pt")
    if os.path.isfile(rng_file):
        set_rng_state(torch.load(rng_file, weights_only=False))
    return read_state(ckpt)


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def export_model(out_dir: str, model, tokenizer, weights: dict[str, torch.Tensor] | None = None) -> str:
    """A plain Hugging Face directory (safetensors) that AutoModelForCausalLM.from_pretrained loads.
    `weights`: the full state from full_model_state (rank 0); a LoRA policy is merged into its base."""
    if _rank() != 0:
        _barrier()
        return out_dir
    target = model
    if hasattr(model, "merge_and_unload"):
        import copy

        target = copy.deepcopy(model).merge_and_unload()
        weights = None
    try:
        with _AtomicDirLocal(out_dir) as tmp:
            target.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
    finally:
        _barrier()
    return out_dir


class _AtomicDirLocal(_AtomicDir):
    """_AtomicDir for a write done by rank 0 alone (no barriers inside)."""

    def __enter__(self):
        shutil.rmtree(self.tmp, ignore_errors=True)
        os.makedirs(self.tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        _fsync_dir(self.tmp)
        if os.path.exists(self.final):
            old = self.tmp + ".old"
            os.rename(self.final, old)
            os.rename(self.tmp, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.tmp, self.final)
        return False
