"""Stopping on a scheduler's signal. SLURM, Kubernetes and spot instances send SIGTERM (SLURM may send
SIGUSR1 ahead of the time limit, with --signal), then SIGKILL when the grace period is over; by default
Python dies at once on either and keeps nothing since the last scheduled checkpoint.

While `handling()` is active (every rdpo-fast command runs inside it, through rdpo_fast.errors, and so
does training.loop.train when called from Python), SIGTERM and SIGUSR1 do not kill the process:

- inside `deferred()` (the training loop, from its setup to its last write) the signal is only
  recorded: the loop reads `requested()` where a step begins, agrees with the other ranks, writes a
  checkpoint at the last finished step and then raises Preempted itself;
- elsewhere the first signal raises Preempted where the program stands, as Ctrl-C raises
  KeyboardInterrupt. Every output is written atomically (rdpo_fast.io, the checkpoints, the stage
  markers), so the unwinding leaves finished outputs and no partial one.

A later signal is only counted: it never interrupts the checkpoint or the unwinding the first one
started. Preempted ends the command with EXIT_PREEMPTED and one line saying how to go on
(rdpo_fast.errors.run_command). Handlers are installed in the main thread only (Python delivers
signals there) and the previous ones are restored when the outermost `handling()` ends.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

# 128 + SIGTERM: what a shell reports for a process SIGTERM ended, kept for SIGUSR1 too, so one code
# means "stopped by the scheduler, resumable".
EXIT_PREEMPTED = 143
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
DEFAULT_HINT = "finished outputs are kept and nothing partial was written; run the same command again to go on"


class Preempted(BaseException):
    """A stop signal ended the command. A BaseException, as KeyboardInterrupt is, so that no
    `except Exception` on the way swallows it. `detail` says where it stopped and what was saved,
    `hint` how to go on; callers that know more (a pipeline stage) rewrite them on the way up."""

    def __init__(self, signal_name: str, detail: str = "", hint: str = ""):
        super().__init__(signal_name, detail, hint)
        self.signal_name, self.detail, self.hint = signal_name, detail, hint

    def line(self) -> str:
        where = f" {self.detail}" if self.detail else ""
        return f"stopped by {self.signal_name}{where}; {self.hint or DEFAULT_HINT}"


class _State:
    installed = 0  # depth of nested handling()
    deferring = 0  # depth of nested deferred()
    previous: dict = {}
    received: list[str] = []  # names of the signals received, in order


def _handler(signum, frame) -> None:
    _State.received.append(signal.Signals(signum).name)
    if len(_State.received) == 1 and not _State.deferring:
        raise Preempted(_State.received[0])


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """SIGTERM and SIGUSR1 stop the program as described above while the block runs (nested blocks
    share the outermost one's handlers and record)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # Python runs handlers in the main thread only: nothing to install from here
        return
    outermost = _State.installed == 0
    if outermost:
        _State.received = []
        _State.previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    _State.installed += 1
    try:
        yield
    finally:
        _State.installed -= 1
        if outermost:
            for s, h in _State.previous.items():
                signal.signal(s, h)
            _State.received = []


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Inside the block a stop signal is only recorded; the code polls `requested()` where stopping is
    safe. A signal recorded here and not acted on is still `requested()` after the block."""
    _State.deferring += 1
    try:
        yield
    finally:
        _State.deferring -= 1


def requested() -> str | None:
    """The name of the first stop signal received (SIGTERM, SIGUSR1), or None."""
    return _State.received[0] if _State.received else None


def count() -> int:
    """How many stop signals have been received."""
    return len(_State.received)
