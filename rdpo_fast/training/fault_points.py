"""Named moments of a run where a test can stop the process, or make a write fail as a full or read-only
disk would. A test hook, off unless the environment asks for it (then one dictionary look-up per point).

    RDPO_FAST_PAUSE_AT=POINT[:N][,...]   the N-th time POINT is reached (without :N, the first), the
                                         process writes its pid to RDPO_FAST_PAUSE_FILE (when set) and
                                         sleeps until it is killed, so a SIGKILL lands at that moment;
                                         or until a stop signal arrives (SIGTERM, SIGUSR1: the run goes
                                         on to act on it, rdpo_fast.preemption), or until the file
                                         RDPO_FAST_CONTINUE_FILE exists (when set). Several points,
                                         comma-separated, pause in turn.
    RDPO_FAST_FAIL_AT=POINT[:N]=ERRNO    there (without :N, every time) an OSError(ERRNO) is raised for
                                         the path being written, e.g. checkpoint-write:2=ENOSPC (disk
                                         full at the second checkpoint), output-check=EROFS (read-only)

Points:
    step-done                  an optimizer step finished and logged, before its evaluation and scheduled
                               checkpoint
    stage-start                a pipeline stage about to run (after its "[STAGE] running" line)
    output-check               the writability check of an output location, before any model loads
    checkpoint-write           a checkpoint half written: weights and optimizer state in its temporary
                               directory, the scheduler, trainer state and completion marker not yet
    checkpoint-complete        every file and the completion marker written, not yet renamed into place
    checkpoint-rotate          an old checkpoint renamed out of the listing, not yet deleted
    checkpoint-rotate-partial  that deletion half done (its marker and weights gone)
    export-write               the final export half written (in its temporary directory)
"""
from __future__ import annotations

import errno
import os
import time

from rdpo_fast import preemption

PAUSE_ENV = "RDPO_FAST_PAUSE_AT"
PAUSE_FILE_ENV = "RDPO_FAST_PAUSE_FILE"
CONTINUE_FILE_ENV = "RDPO_FAST_CONTINUE_FILE"
FAIL_ENV = "RDPO_FAST_FAIL_AT"
POINTS = ("step-done", "stage-start", "output-check", "checkpoint-write", "checkpoint-complete", "checkpoint-rotate",
          "checkpoint-rotate-partial", "export-write")

_seen: dict[str, int] = {}


def _matches(spec: str, point: str, count: int) -> bool:
    name, _, n = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"unknown fault point {name!r} (known: {', '.join(POINTS)})")
    return name == point and (not n or int(n) == count)


def reached(point: str, path: str | None = None) -> None:
    """Marks that the run is at `point` (writing `path`); pauses or fails there when asked to."""
    pause, fail = os.environ.get(PAUSE_ENV), os.environ.get(FAIL_ENV)
    if not pause and not fail:
        return
    count = _seen[point] = _seen.get(point, 0) + 1
    if fail:
        spec, _, name = fail.partition("=")
        if _matches(spec, point, count):
            code = getattr(errno, name or "EIO")
            raise OSError(code, os.strerror(code), path)
    if pause and any(_matches(spec, point, count) for spec in pause.split(",")):
        _pause()


def _pause() -> None:
    signal_file, go_on = os.environ.get(PAUSE_FILE_ENV), os.environ.get(CONTINUE_FILE_ENV)
    if signal_file:
        tmp = f"{signal_file}.tmp-{os.getpid()}"  # one per process: torchrun's workers pause together
        with open(tmp, "w") as f:
            f.write(str(os.getpid()))
        os.replace(tmp, signal_file)
    signals = preemption.count()
    # Until killed, or a stop signal (outside the training loop its handler raises out of the sleep).
    while preemption.count() == signals and not (go_on and os.path.exists(go_on)):
        time.sleep(0.02)
