"""The run directory of `rdpo-fast train`: where a run (or a resumed one) writes, checked before any
model loads.

- `check_writable(path)`: an output location (existing or to be made) that cannot be written is a
  one-line error naming it, found in milliseconds rather than after the model and reference pass.
- `resume_settings(resume)`: the settings of a resumed run. Its output directory is the run directory
  that holds the checkpoint, wherever the run has been moved or copied, never the path the saved
  config names (which may be another run's now); a difference is said in one line.
- `claim(cfg, dist)`: holds the output directory for the run: checked writable and locked
  (rdpo_fast.run_lock: one writer per run directory) by rank 0, whose outcome every rank shares.
- `prepare_output_dir(cfg)`: refuses to start over a run with checkpoints, and deletes the temporary
  leftovers of a process killed while writing (under the lock: never a live run's).
- `write_json(path, obj)`: rdpo_fast.io's atomic JSON write, whose failure names the file.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator

from rdpo_fast import run_lock
from rdpo_fast.errors import OutputError, write_failure_reason
from rdpo_fast.io import write_json as write_json  # re-exported: the loop writes config.json, summary.json with it

from . import checkpoint as ckpt
from . import fault_points
from .config import TrainConfig
from .dist import Dist

# Settings that belong to one invocation, not to the run: a resume never inherits them.
TRANSIENT = ("resume", "stop_after_steps", "overwrite")


def _nearest_existing(path: str) -> str:
    """The path itself or its nearest existing parent, in the form the user gave it."""
    while not os.path.exists(path):
        parent = os.path.dirname(path) or "."
        if parent == path:
            break
        path = parent
    return path


def check_writable(path: str, what: str = "output directory") -> None:
    """Raises OutputError unless files can be created in `path` (a directory, made later if missing):
    a probe file is created and deleted in it or in its nearest existing parent. Nothing is left."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{what} {path} exists and is not a directory")
    probe_in = _nearest_existing(path)
    if not os.path.isdir(probe_in):
        raise OutputError(f"{what} {path} cannot be made: {probe_in} is not a directory")
    try:
        fault_points.reached("output-check", probe_in)
        fd, probe = tempfile.mkstemp(prefix=".tmp-write-check-", dir=probe_in)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        where = "" if os.path.abspath(probe_in) == os.path.abspath(path) else f" (in {probe_in})"
        raise OutputError(f"{what} {path} is not writable{where}: {write_failure_reason(e, probe_in)}") from None


def check_file_writable(path: str, what: str = "output file") -> None:
    """check_writable for the directory a file will be written into."""
    if os.path.isdir(path):
        raise OutputError(f"{what} {path} is a directory")
    try:
        check_writable(os.path.dirname(os.path.abspath(path)), what="directory")
    except OutputError as e:
        raise OutputError(f"{what} {path} cannot be written: {e}") from None


def run_dir_of(checkpoint: str) -> str | None:
    """The run directory holding RUN/checkpoints/step-N, or None for a checkpoint kept elsewhere."""
    parent = os.path.dirname(os.path.normpath(checkpoint))
    if os.path.basename(parent) != "checkpoints":
        return None
    return os.path.dirname(parent) or "."


def _same_path(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def resume_settings(resume: str, output_dir: str | None = None, log: Callable[[str], None] | None = None) -> dict:
    """The saved settings of the checkpoint `resume` names (a checkpoint or a run directory), with
    resume set to that exact checkpoint and output_dir to the run directory holding it (or to
    `output_dir` when the user gave one). One line is logged when that differs from the saved path."""
    log = log or (lambda m: print(m, file=sys.stderr))
    found = ckpt.find_checkpoint(resume, log=log)
    saved = dict(ckpt.read_state(found).get("config", {}))
    for key in TRANSIENT:
        saved.pop(key, None)
    target = output_dir
    if target is None:
        target = run_dir_of(found)
        if target is None:
            raise ckpt.CheckpointError(f"{found} is not inside a run directory (RUN/checkpoints/step-N): give "
                                       "--output-dir for the resumed run")
    before = saved.get("output_dir")
    if before and not _same_path(before, target):
        log(f"note: resuming into {target}; the checkpoint's saved output directory {before} is not used "
            "(the run was moved or copied, or --output-dir was given)")
    saved.update(resume=found, output_dir=target)
    return saved


@contextlib.contextmanager
def claim(cfg: TrainConfig, dist: Dist) -> Iterator[None]:
    """Holds the output directory while the block runs: rank 0 checks it writable and takes its lock
    (other ranks write into it only through the collective checkpoint, and wait here for rank 0); a
    failure there (not writable, another process's run) is raised on every rank with rank 0's message."""
    lock, failure = None, None
    if dist.main:
        try:
            check_writable(cfg.output_dir)
            lock = run_lock.lock_dir(cfg.output_dir)
        except OutputError as e:
            failure = e
    message = dist.broadcast(None if failure is None else str(failure))
    if failure is not None:
        raise failure
    if message is not None:
        raise OutputError(message)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def prepare_output_dir(cfg: TrainConfig, main: bool) -> None:
    """Before anything loads, with the directory claimed: it must not hold another run's checkpoints
    unless resuming or overwriting; leftovers of a killed process are deleted."""
    if cfg.resume is None and ckpt.list_checkpoints(cfg.output_dir) and not cfg.overwrite:
        raise ValueError(f"{cfg.output_dir} already holds checkpoints; pass --resume {cfg.output_dir} to continue "
                         "or --overwrite to start over")
    if main:
        ckpt.remove_stale_temporaries(cfg.output_dir)
