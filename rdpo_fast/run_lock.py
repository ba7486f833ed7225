"""One writer per run directory: an exclusive OS lock that a command holds for its lifetime.

A command that writes a run directory (train, the rdpo/dice/crosslingual pipelines, eval's output
directory) holds `DIR/.lock`; one that writes a single output file (generate, synth, score) holds
`.NAME.lock` beside the file. The lock is fcntl.flock(LOCK_EX | LOCK_NB), which the kernel releases
when the process ends however it ends (SIGKILL, the OOM killer), so a crashed run never leaves a lock
that blocks the next one. The holder writes its pid, host, start time and command line into the file,
and a second writer fails at once, without waiting, with RunDirBusy naming the directory and that
holder: one line and exit status 2 through rdpo_fast.errors. Readers (plot, eval of a finished run)
take no lock.

The file is removed when its holder releases the lock. A process that opened it just before the
removal and locks it just after would hold a lock on a file no longer in the directory, while a third
process creates and locks a new one; so a lock counts only when the file it locked is still the one at
the path, and the attempt is repeated otherwise.

Locks nest by directory: a pipeline holds its run directory and its training stage holds the stage's
subdirectory, two lock files, so nothing ever waits on itself (and no lock waits at all). Linux NFS
clients honour flock as a whole-file POSIX lock across machines; a file system without flock support
(ENOSYS, ENOLCK, EOPNOTSUPP, e.g. Lustre mounted without -o flock) gets one note line and no lock,
rather than no run.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time

from .errors import OutputError, writing

LOCK_FILE = ".lock"
_UNSUPPORTED = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP)


class RunDirBusy(OutputError):
    """Another process holds the lock of the run directory (or output file) this command would write."""


def _holder_text(lock_path: str) -> str:
    """Who holds the lock, as its holder wrote it: "pid P on host H since T" (its command line is in
    the file, for whoever looks: too long for the message)."""
    try:
        with open(lock_path, encoding="utf-8") as f:
            info = json.load(f)
        return f"pid {info['pid']} on host {info['host']}" + (f" since {info['since']}" if info.get("since") else "")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its pid yet"  # between its lock and its write


def _made_dirs(path: str) -> list[str]:
    """The directories os.makedirs(path) would create, deepest first."""
    made = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        made.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return made


class RunLock:
    """The exclusive lock of `path` (a lock file), held from acquire() to release(); a context manager.
    `target` and `what` name what it guards in messages ("run directory runs/x")."""

    def __init__(self, path: str, *, target: str, what: str):
        self.path, self.target, self.what = path, target, what
        self.fd: int | None = None
        self._made: list[str] = []

    def acquire(self) -> RunLock:
        folder = os.path.dirname(self.path)
        with writing(self.path, shown=f"{self.what} {self.target}"):
            self._made = _made_dirs(folder)
            os.makedirs(folder, exist_ok=True)
            while self.fd is None:
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                except FileNotFoundError:  # the directory, left empty, removed by a failed holder's release
                    os.makedirs(folder, exist_ok=True)
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    self._remove_made()
                    raise RunDirBusy(f"{self.what} {self.target} is in use by another process "
                                     f"({_holder_text(self.path)}); wait for it to end or choose another "
                                     "output location") from None
                except OSError as e:
                    os.close(fd)
                    if e.errno not in _UNSUPPORTED:
                        raise
                    print(f"note: {self.what} {self.target}: this file system cannot lock files "
                          f"({os.strerror(e.errno)}); nothing stops a second process writing it", file=sys.stderr)
                    return self
                if _same_file(fd, self.path):
                    self.fd = fd
                else:  # removed by its last holder between our open and our lock: lock the new one
                    os.close(fd)
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "command": " ".join(sys.argv)[:300]}
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, (json.dumps(info) + "\n").encode(), 0)
        return self

    def release(self) -> None:
        """Removes the lock file, then unlocks (in that order: see the module's docstring); a directory
        the lock itself created is removed again when nothing else was written into it."""
        if self.fd is None:
            return
        try:
            os.remove(self.path)
        except OSError:
            pass  # already gone (the directory was removed), or not ours to remove: the unlock still counts
        os.close(self.fd)  # closing the last descriptor releases the flock
        self.fd = None
        self._remove_made()

    def _remove_made(self) -> None:
        for d in self._made:
            try:
                os.rmdir(d)
            except OSError:
                break  # not empty: the command wrote into it
        self._made = []

    def __enter__(self) -> RunLock:
        return self  # acquired by lock_dir / lock_file

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def lock_dir(directory: str, what: str = "run directory") -> RunLock:
    """Holds DIRECTORY/.lock (the directory is made when missing); raises RunDirBusy when another process
    holds it. Use as a context manager, or release() it."""
    return RunLock(os.path.join(directory, LOCK_FILE), target=directory, what=what).acquire()


def lock_file(path: str, what: str = "output file") -> RunLock:
    """Holds the lock of a single output file, `.NAME.lock` beside it; as lock_dir."""
    folder, name = os.path.split(os.path.abspath(path))
    return RunLock(os.path.join(folder, f".{name}.lock"), target=path, what=what).acquire()
