"""Atomic checkpoints, exact resume, and the final export.

A checkpoint is a directory RUN/checkpoints/step-NNNNNNN holding
    model.safetensors     every parameter and buffer, full (gathered from FSDP2 shards), tied aliases once
    optimizer.pt          the optimizer state, full, keyed by parameter name
    scheduler.pt          the LR scheduler state
    rng-rank{R}.pt        each rank's torch (and CUDA) and Python RNG states
    scaler.pt             the fp16 loss scaler's state (--dtype fp16 only): its scale and growth count
    trainer_state.json    step, epoch, position in the epoch, the run's config
    complete.json         the completion marker, written last: every file above with its size
It is assembled in a hidden temporary directory (.tmp-*) beside its final name and renamed into place;
an old checkpoint is rotated out by renaming it to a .tmp-* name first and deleting it after. A
directory counts as a checkpoint only when its marker is there and every file it lists has its
recorded size, so a crash at any moment never leaves a listed partial checkpoint; a resumed run
deletes the .tmp-* leftovers. Checkpoints written before the marker existed count when all their
files are present. The final export (RUN/final) is a plain save_pretrained directory, written the same
atomic way, that AutoModelForCausalLM.from_pretrained loads.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import sys
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from rdpo_fast.errors import writing
from rdpo_fast.models.loading import tied_aliases

from . import fault_points

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

STATE_FILE = "trainer_state.json"
SCALER_FILE = "scaler.pt"
WEIGHTS_FILE = "model.safetensors"
COMPLETE_FILE = "complete.json"
# What a checkpoint written before the completion marker existed must hold to count as complete.
LEGACY_FILES = (WEIGHTS_FILE, "optimizer.pt", "scheduler.pt", STATE_FILE, "rng-rank0.pt")
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


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every rank must call this (FSDP2 gathers shards); rank 0 gets the full state on CPU."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(model, options=_sd_options(cpu_offload=True))
    for alias in tied_aliases(model):
        sd.pop(alias, None)
    return {k: v.detach().contiguous() for k, v in sd.items()}


class _AtomicDir:
    """A temporary directory renamed to `final` on success and removed on failure (on rank 0; other
    ranks write into it between barriers). `on_complete(tmp)` runs on rank 0 once every rank has
    written its files, before the rename (the checkpoint's completion marker)."""

    def __init__(self, final: str, on_complete=None):
        self.final = final
        self.on_complete = on_complete
        parent = os.path.dirname(final) or "."
        tag = uuid.uuid4().hex[:8] if _dist() is None else "dist"
        self.tmp = os.path.join(parent, f".tmp-{os.path.basename(final)}-{tag}")

    def __enter__(self):
        if _rank() == 0:
            with writing(self.tmp):
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
            try:
                with writing(self.final):
                    if self.on_complete is not None:
                        self.on_complete(self.tmp)
                    _fsync_dir(self.tmp)
                    fault_points.reached("checkpoint-complete", self.final)
                    _rename_into_place(self.tmp, self.final)
            except BaseException:
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise
        _barrier()
        return False


def _rename_into_place(tmp: str, final: str) -> None:
    if os.path.exists(final):
        # Replacing an older directory of the same name: move it aside first (a .tmp-* name, so an
        # interrupted replacement leaves nothing listed), since rename onto a non-empty directory fails.
        old = tmp + ".old"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_path(os.path.dirname(final) or ".")


def _fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path):
    for f in os.listdir(path):
        with open(os.path.join(path, f), "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_path(path)


def _write_marker(folder: str) -> None:
    """The completion marker, written last: each file of the checkpoint and its size."""
    files = {f: os.path.getsize(os.path.join(folder, f)) for f in sorted(os.listdir(folder)) if f != COMPLETE_FILE}
    with open(os.path.join(folder, COMPLETE_FILE), "w") as f:
        json.dump({"format": 1, "files": files}, f, indent=1)


def save_checkpoint(run_dir: str, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, state: dict, keep: int = 0,
                    scaler: torch.amp.GradScaler | None = None) -> str:
    """Writes RUN/checkpoints/step-N atomically (collective: every rank calls it). keep > 0 keeps only the
    newest `keep` checkpoints. scaler: the fp16 loss scaler, saved when enabled (a resumed run that
    started again from the initial scale would overflow, and skip, steps the uninterrupted run applied).
    Returns the checkpoint's path."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    step = int(state["global_step"])
    root = os.path.join(run_dir, "checkpoints")
    final = os.path.join(root, f"step-{step:07d}")
    weights = full_model_state(model)
    optim = get_optimizer_state_dict(model, optimizer, options=_sd_options(cpu_offload=True))
    with _AtomicDir(final, on_complete=_write_marker) as tmp:
        rank = _rank()

        def save(name, write, point=None):
            path = os.path.join(tmp, name)
            with writing(path, shown=f"checkpoint {final} ({name})"):  # as the user will look for it
                if point:
                    fault_points.reached(point, path)
                write(path)

        save(f"rng-rank{rank}.pt", lambda p: torch.save(rng_state(), p))
        if rank == 0:
            save(WEIGHTS_FILE, lambda p: save_file(weights, p, metadata={"format": "pt"}))
            save("optimizer.pt", lambda p: torch.save(optim, p))
            save("scheduler.pt", lambda p: torch.save(scheduler.state_dict(), p), point="checkpoint-write")
            if scaler is not None and scaler.is_enabled():
                save(SCALER_FILE, lambda p: torch.save(scaler.state_dict(), p))
            save(STATE_FILE, lambda p: _dump_json(state, p))
    if keep > 0 and _rank() == 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            retire(old)
    return final


def _dump_json(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def retire(ckpt: str) -> None:
    """Deletes a checkpoint without ever leaving a listed partial one: renamed out of the listing first
    (a .tmp-* name, which a later run deletes if this process dies), then removed."""
    trash = os.path.join(os.path.dirname(ckpt), f".tmp-retired-{os.path.basename(ckpt)}-{uuid.uuid4().hex[:8]}")
    os.rename(ckpt, trash)
    fault_points.reached("checkpoint-rotate", trash)
    for name in (COMPLETE_FILE, WEIGHTS_FILE):  # the marker first: a half-deleted copy is never complete
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(trash, name))
    fault_points.reached("checkpoint-rotate-partial", trash)
    shutil.rmtree(trash, ignore_errors=True)


def checkpoint_problem(path: str) -> str | None:
    """Why `path` is not a complete checkpoint, or None when it is one."""
    marker = os.path.join(path, COMPLETE_FILE)
    if os.path.isfile(marker):
        try:
            with open(marker, encoding="utf-8") as f:
                files = json.load(f)["files"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"its completion marker {COMPLETE_FILE} is unreadable ({e})"
        for name, size in files.items():
            p = os.path.join(path, name)
            if not os.path.isfile(p):
                return f"{name} is missing"
            if os.path.getsize(p) != size:
                return f"{name} is truncated or altered ({os.path.getsize(p)} bytes, {size} when written)"
        return None
    # Written before the marker existed: complete when every file is there.
    missing = [f for f in LEGACY_FILES if not os.path.isfile(os.path.join(path, f))]
    if missing:
        return f"no completion marker ({COMPLETE_FILE}) and {', '.join(missing)} missing"
    return None


def _step_dirs(run_dir: str) -> list[tuple[int, str]]:
    root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    found = [(int(m.group(1)), os.path.join(root, name)) for name in os.listdir(root)
             if (m := _STEP_DIR.match(name)) and os.path.isdir(os.path.join(root, name))]
    return sorted(found)


def list_checkpoints(run_dir: str) -> list[str]:
    """Complete checkpoints of a run, oldest first."""
    return [p for _, p in _step_dirs(run_dir) if checkpoint_problem(p) is None]


# A complete directory moved aside by _rename_into_place while its replacement is renamed in.
_MOVED_ASIDE = re.compile(r"\.tmp-(?P<name>.+)-(?:[0-9a-f]{8}|dist)\.old")


def remove_stale_temporaries(run_dir: str) -> None:
    """Deletes the .tmp-* leftovers (half-written or half-deleted checkpoints, probe files) of a process
    killed while writing. A directory moved aside to be replaced (a checkpoint saved again at the same
    step, the final export written again) whose replacement never arrived is renamed back instead: it
    was complete, and the crash would otherwise lose it."""
    for parent in (os.path.join(run_dir, "checkpoints"), run_dir):
        if os.path.isdir(parent):
            for name in os.listdir(parent):
                moved = _MOVED_ASIDE.fullmatch(name)
                if moved and not os.path.exists(os.path.join(parent, moved["name"])):
                    os.rename(os.path.join(parent, name), os.path.join(parent, moved["name"]))
                    continue
                if name.startswith(".tmp-"):
                    p = os.path.join(parent, name)
                    if os.path.isdir(p) and not os.path.islink(p):
                        shutil.rmtree(p, ignore_errors=True)
                    else:  # a write-check probe or a half-written JSON file
                        with contextlib.suppress(OSError):
                            os.remove(p)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def find_checkpoint(path: str, log: Callable[[str], None] = _stderr) -> str:
    """A checkpoint directory itself, or the newest complete checkpoint of a run directory (newer,
    incomplete ones are named in a note and skipped)."""
    if not os.path.isdir(path):
        raise CheckpointError(f"cannot resume from {path}: no such directory")
    if any(os.path.isfile(os.path.join(path, f)) for f in (STATE_FILE, COMPLETE_FILE)):
        problem = checkpoint_problem(path)
        if problem:
            raise CheckpointError(f"{path} is not a complete checkpoint: {problem}")
        return path
    steps = _step_dirs(path)
    complete = [(n, p) for n, p in steps if checkpoint_problem(p) is None]
    if not complete:
        detail = f" ({len(steps)} incomplete: {os.path.basename(steps[-1][1])}: {checkpoint_problem(steps[-1][1])})" \
            if steps else ""
        raise CheckpointError(f"{path} is not a checkpoint: it has no {STATE_FILE}, and no complete "
                              f"checkpoints/step-N inside{detail} (give a checkpoint directory or a run directory "
                              "that holds one)")
    newest, chosen = complete[-1]
    for n, p in steps:
        if n > newest and (problem := checkpoint_problem(p)):
            log(f"note: skipping {p}, not a complete checkpoint: {problem}")
    return chosen


def _reading(ckpt: str, name: str, read):
    """read(path) of one file of a checkpoint; a corrupt or truncated file is a CheckpointError naming it."""
    path = os.path.join(ckpt, name)
    try:
        return read(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {ckpt}: {name} is missing") from None
    except Exception as e:  # safetensors, zip/pickle and JSON readers each raise their own kinds
        raise CheckpointError(f"checkpoint {ckpt}: {name} is corrupt or truncated ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''}); resume from another "
                              "checkpoint") from None


def _load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_state(ckpt: str) -> dict:
    return _reading(ckpt, STATE_FILE, _load_json)


def load_checkpoint(ckpt: str, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler | None = None,
                    log: Callable[[str], None] = _stderr) -> dict:
    """Restores weights, optimizer, scheduler, the fp16 loss scaler (when enabled) and this rank's RNG;
    returns the trainer state."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    weights = _reading(ckpt, WEIGHTS_FILE, load_file)
    for alias, name in tied_aliases(model).items():
        if name in weights:
            weights[alias] = weights[name]
    expected = set(dict(model.state_dict()).keys())
    missing = sorted(expected - set(weights))
    if missing:
        raise CheckpointError(f"{ckpt}: weights do not match this model (missing {missing[:3]}"
                              f"{'...' if len(missing) > 3 else ''}); was it written with other model settings?")
    set_model_state_dict(model, weights, options=_sd_options())
    optim = _reading(ckpt, "optimizer.pt", lambda p: torch.load(p, map_location="cpu", weights_only=False))
    set_optimizer_state_dict(model, optimizer, optim_state_dict=optim, options=_sd_options())
    scheduler.load_state_dict(_reading(ckpt, "scheduler.pt", lambda p: torch.load(p, weights_only=False)))
    if scaler is not None and scaler.is_enabled():
        if os.path.isfile(os.path.join(ckpt, SCALER_FILE)):
            scaler.load_state_dict(_reading(ckpt, SCALER_FILE, lambda p: torch.load(p, weights_only=True)))
        else:  # written by a run without loss scaling, or before the scaler was saved
            log(f"note: {ckpt} holds no loss-scaler state; fp16 loss scaling starts again from "
                f"{scaler.get_scale():g}")
    rng_file = f"rng-rank{_rank()}.pt"
    if os.path.isfile(os.path.join(ckpt, rng_file)):
        set_rng_state(_reading(ckpt, rng_file, lambda p: torch.load(p, weights_only=False)))
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


def export_model(out_dir: str, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                 weights: dict[str, torch.Tensor] | None = None) -> str:
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
    # A tensor-parallel model (transformers' plan) would gather its shards and wait at a barrier inside
    # save_pretrained, which rank 0 alone runs here: the weights are gathered already, so the export
    # is written as a plain model (its config without the distributed settings).
    distributed = getattr(target.config, "distributed_config", None) if weights is not None else None
    try:
        if distributed is not None:
            target.config.distributed_config = None
        with writing(out_dir), _AtomicDirLocal(out_dir) as tmp:
            target.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
            fault_points.reached("export-write", tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
    finally:
        if distributed is not None:
            target.config.distributed_config = distributed
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
        try:
            _fsync_dir(self.tmp)
            _rename_into_place(self.tmp, self.final)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return False
