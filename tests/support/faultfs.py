"""Real full and read-only file systems for the fault tests, where the machine allows them: a tmpfs of a
few hundred KiB mounted over a test directory (needs root and mount rights; containers often grant
them, CI machines may not). Each helper says which way it went, so a test can fall back to the
fault_points hook (rdpo_fast/fault_points.py) and report it."""
from __future__ import annotations

import contextlib
import os
import subprocess


def _mount(path: str, options: str) -> bool:
    if os.geteuid() != 0:
        return False
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


@contextlib.contextmanager
def tmpfs(path: str, size_kb: int, readonly: bool = False):
    """Mounts a tmpfs of size_kb KiB at `path` (made if missing); yields True, or False when mounting is
    not possible here (nothing is mounted then)."""
    os.makedirs(path, exist_ok=True)
    ok = _mount(path, f"size={size_kb}k" + (",ro" if readonly else ""))
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(["umount", "-l", path], capture_output=True, timeout=20)


def chmod_blocks_writes(path: str) -> bool:
    """Whether a 0o555 directory stops this process from writing (not for root, which ignores the bits)."""
    return os.geteuid() != 0
