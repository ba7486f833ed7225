"""The resumable run directory of a multi-stage pipeline.

A run directory holds `run.json` (the settings it was started with) and, per finished stage, a marker
`<stage>.done.json` with the stage's statistics and the files it wrote. A stage's outputs are written
first (each atomically), its marker last, so a crash leaves either a finished stage or an unfinished
one, never a half-written output that looks done. A rerun skips every stage whose marker and outputs
exist; a rerun with different settings is refused, because its finished stages would silently mix two
configurations.

One process at a time writes a run directory: a StageDir holds its lock (rdpo_fast.run_lock) until
closed. A stop signal (SIGTERM, SIGUSR1: rdpo_fast.preemption) ends the run with the stage it came in
unfinished and every finished stage's marker kept; a training stage checkpoints first (the training
loop does), and the rerun resumes it from that checkpoint (rounds.train_stage).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable

from rdpo_fast import preemption, run_lock
from rdpo_fast.errors import Diverged
from rdpo_fast.io import read_json, read_jsonl, write_json
from rdpo_fast.training import fault_points
from rdpo_fast.training.run_dir import check_writable

RUN_FILE = "run.json"
RERUN_HINT = ("rerun the same command to resume (finished stages are skipped, a training stage resumes from its "
              "checkpoint)")


def read_stage_records(path: str) -> list[dict]:
    """The records of a JSONL file a stage wrote (no validation beyond JSON)."""
    return [rec for _, rec in read_jsonl(path)]


class StageDirError(ValueError):
    """A pipeline run directory that cannot be (re)used as asked."""


class StageDir:
    """A pipeline's run directory of resumable stages (not a training run's directory, which is
    rdpo_fast.training.run_dir); `settings` are the values that decide what the stages compute. It holds
    the directory's lock from construction to close() (a context manager)."""

    def __init__(self, path: str, settings: dict, *, overwrite: bool = False, log: Callable = print):
        self.path = path
        self.log = log
        run_file = os.path.join(path, RUN_FILE)
        # JSON round trip so tuples and lists compare equal to what was saved.
        settings = json.loads(json.dumps(settings))
        check_writable(path, what="run directory")  # before any model loads
        self.lock = run_lock.lock_dir(path)  # before anything is read: the settings, the stages' markers
        try:
            if os.path.isfile(run_file):
                if overwrite:
                    _empty(path)
                else:
                    saved = read_json(run_file)
                    diff = [f"{k}: {saved.get(k)!r} -> {settings.get(k)!r}"
                            for k in sorted(set(saved) | set(settings)) if saved.get(k) != settings.get(k)]
                    if diff:
                        raise StageDirError(f"run directory {path} was started with different settings "
                                            f"({'; '.join(diff)}); rerun with the same settings to resume, or pass "
                                            "--overwrite to start over, or choose another --output-dir")
            elif set(os.listdir(path)) - {run_lock.LOCK_FILE}:
                raise StageDirError(f"{path} exists, is not empty and is not a pipeline run directory (no "
                                    f"{RUN_FILE}); choose another --output-dir")
            if not os.path.isfile(run_file):
                write_json(run_file, settings)
        except BaseException:
            self.lock.release()
            raise
        self.settings = settings

    def close(self) -> None:
        """Releases the directory's lock."""
        self.lock.release()

    def __enter__(self) -> StageDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def file(self, *parts: str) -> str:
        p = os.path.join(self.path, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def _marker(self, stage: str) -> str:
        return self.file(f"{stage}.done.json")

    def done(self, stage: str) -> dict | None:
        """The stage's recorded statistics when it finished and its outputs are still there, else None."""
        marker = self._marker(stage)
        if not os.path.isfile(marker):
            return None
        info = read_json(marker)
        if not all(os.path.exists(os.path.join(self.path, f)) for f in info.get("outputs", [])):
            self.log(f"[{stage}] marker found but an output is missing: running it again")
            return None
        return info

    def run(self, stage: str, fn: Callable[[], tuple[dict, list[str]]]) -> dict:
        """Runs `fn` unless the stage is done. fn returns (stats, output paths); returns the stats."""
        info = self.done(stage)
        if info is not None:
            self.log(f"[{stage}] done earlier: skipped")
            return info["stats"]
        try:
            if preemption.requested():  # came during a training stage's last step: not acted on there
                raise preemption.Preempted(preemption.requested(), f"before stage {stage}")
            self.log(f"[{stage}] running")
            t0 = time.time()
            fault_points.reached("stage-start")
            stats, outputs = fn()
        except preemption.Preempted as e:
            if e.hint != RERUN_HINT:  # said once, by the innermost stage (stages nest: score > scorer/train)
                if not e.detail.startswith("before stage"):
                    e.detail = " ".join(filter(None, [f"in stage {stage}", e.detail]))
                e.hint = RERUN_HINT
            raise
        except Diverged as e:
            if str(e).startswith("stage "):  # said by an inner stage
                raise
            raise Diverged(f"stage {stage}: {e}") from None
        rel = [os.path.relpath(p, self.path) for p in outputs]
        seconds = round(time.time() - t0, 3)  # ms: the benches derive rates from it
        write_json(self._marker(stage), {"stats": stats, "outputs": rel, "seconds": seconds})
        self.log(f"[{stage}] done in {seconds:.0f}s")
        return stats

    def seconds(self) -> dict[str, float]:
        """Seconds each finished stage took, by stage name (from the markers)."""
        out = {}
        for root, _, names in os.walk(self.path):
            for n in names:
                if n.endswith(".done.json"):
                    stage = os.path.relpath(os.path.join(root, n[: -len(".done.json")]), self.path)
                    out[stage] = read_json(os.path.join(root, n)).get("seconds", 0.0)
        return dict(sorted(out.items()))


def _empty(path: str) -> None:
    """Deletes what a run directory holds (--overwrite), but the lock file this process holds."""
    for name in os.listdir(path):
        p = os.path.join(path, name)
        if name == run_lock.LOCK_FILE:
            continue
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.remove(p)
