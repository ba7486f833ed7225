"""The resumable run directory of a multi-stage pipeline.

A run directory holds `run.json` (the settings it was started with) and, per finished stage, a marker
`<stage>.done.json` with the stage's statistics and the files it wrote. A stage's outputs are written
first (each atomically), its marker last, so a crash leaves either a finished stage or an unfinished
one, never a half-written output that looks done. A rerun skips every stage whose marker and outputs
exist; a rerun with different settings is refused, because its finished stages would silently mix two
configurations.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Callable

from rdpo_fast.io import read_json, read_jsonl, write_json
from rdpo_fast.training.run_dir import check_writable

RUN_FILE = "run.json"


def read_stage_records(path: str) -> list[dict]:
    """The records of a JSONL file a stage wrote (no validation beyond JSON)."""
    return [rec for _, rec in read_jsonl(path)]


class StageDirError(ValueError):
    """A pipeline run directory that cannot be (re)used as asked."""


class StageDir:
    """A pipeline's run directory of resumable stages (not a training run's directory, which is
    rdpo_fast.training.run_dir); `settings` are the values that decide what the stages compute."""

    def __init__(self, path: str, settings: dict, *, overwrite: bool = False, log: Callable = print):
        self.path = path
        self.log = log
        run_file = os.path.join(path, RUN_FILE)
        # JSON round trip so tuples and lists compare equal to what was saved.
        settings = json.loads(json.dumps(settings))
        if os.path.isfile(run_file):
            if overwrite:
                shutil.rmtree(path)
            else:
                saved = read_json(run_file)
                diff = [f"{k}: {saved.get(k)!r} -> {settings.get(k)!r}"
                        for k in sorted(set(saved) | set(settings)) if saved.get(k) != settings.get(k)]
                if diff:
                    raise StageDirError(f"run directory {path} was started with different settings "
                                        f"({'; '.join(diff)}); rerun with the same settings to resume, or pass "
                                        "--overwrite to start over, or choose another --output-dir")
        elif os.path.isdir(path) and os.listdir(path):
            raise StageDirError(f"{path} exists, is not empty and is not a pipeline run directory (no {RUN_FILE}); "
                                "choose another --output-dir")
        check_writable(path, what="run directory")  # before any model loads
        os.makedirs(path, exist_ok=True)
        if not os.path.isfile(run_file):
            write_json(run_file, settings)
        self.settings = settings

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
        self.log(f"[{stage}] running")
        t0 = time.time()
        stats, outputs = fn()
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
