"""The package's file I/O: reading its text inputs (JSONL data, prompt files, config files, metrics),
writing its outputs atomically, and the text tables of its reports.

Reading: UTF-8, a byte-order mark at the start accepted; a file that is not UTF-8 is one line naming the
file, the line and the byte. A JSONL line that is not JSON, and a YAML or JSON syntax error, read as one
line naming file and line (and column).

Writing: a file is written whole or not at all, into a temporary file beside it that is then renamed
into place, so a killed process never leaves a half-written file under the real name; a failed write
names the path and the reason (rdpo_fast.errors.OutputError). JSON is written strict: a non-finite
float (NaN, inf) becomes null, since JSON has no such number and strict readers (jq, JavaScript's
JSON.parse) refuse the NaN and Infinity tokens Python writes by default.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from .errors import writing


class EncodingError(ValueError):
    """A text file that is not UTF-8; the message names the file and line."""


def _error(path: str, lineno: int, raw: bytes, e: UnicodeDecodeError) -> EncodingError:
    return EncodingError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                         "save the file as UTF-8")


def lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number from 1, text with its newline) of each line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise _error(path, lineno, raw, e) from None


def read_text(path: str) -> str:
    """The whole file as text."""
    return "".join(text for _, text in lines(path))


def read_jsonl(path: str, error: type[Exception] = ValueError, hint: str = "") -> Iterator[tuple[int, Any]]:
    """(line number from 1, parsed value) of each non-blank line of a JSONL file. A line that is not JSON
    raises `error`: "PATH:LINE: malformed JSON (WHAT at column N)" followed by `hint` (what the file
    should hold). What a value must be is the caller's to check."""
    with contextlib.closing(lines(path)) as numbered:
        for lineno, text in numbered:
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno}){hint}") from None
            yield lineno, value


def read_json(path: str) -> Any:
    """A JSON file this package wrote (run settings, stage markers)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def parse_structured(path: str, what: str, error: type[Exception] = ValueError) -> Any:
    """A YAML (.yaml/.yml) or JSON file's content; a syntax error is one line naming the file, line and
    column: `{what} {path}:LINE:COL: YAML syntax error: ...`."""
    text = read_text(path)
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
            problem = f"{e.problem} ({e.context})" if e.context else str(e.problem)
            raise error(f"{what} {path}{where}: YAML syntax error: {problem}") from None
        except yaml.YAMLError as e:
            raise error(f"{what} {path}: YAML syntax error: {' '.join(str(e).split())}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{what} {path}:{e.lineno}:{e.colno}: JSON syntax error: {e.msg}") from None


# ---------------------------------------------------------------------------------------- strict JSON
def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float in it (NaN, inf, -inf, in dicts, lists and tuples) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dumps(obj: Any, **kw) -> str:
    """json.dumps of json_safe(obj), refusing anything else that is not strict JSON (allow_nan=False)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kw)


# ---------------------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_open(path: str) -> Iterator[TextIO]:
    """A text file to write `path` through: on leaving the block it replaces `path` whole. The temporary
    file is `.tmp-NAME-PID` in the same folder (the rename must not cross file systems; the training
    run directory's cleanup deletes `.tmp-*` left by a killed process). A failed write is an OutputError
    naming `path`; the folder is created when missing."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".tmp-{os.path.basename(path)}-{os.getpid()}")
    try:
        with writing(path):
            os.makedirs(folder, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                yield f
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, obj: Any) -> None:
    """`obj` as indented strict JSON (UTF-8 text, not escaped), atomically."""
    with atomic_open(path) as f:
        f.write(dumps(obj, indent=1, ensure_ascii=False) + "\n")


def write_jsonl(path: str, records: Iterable[Any]) -> int:
    """One JSON value per line, atomically; returns how many."""
    n = 0
    with atomic_open(path) as f:
        for rec in records:
            f.write(dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_text(path: str, text: str) -> None:
    """`text` ending in a newline, atomically."""
    with atomic_open(path) as f:
        f.write(text if text.endswith("\n") else text + "\n")


# ---------------------------------------------------------------------------------------- text tables
def fmt(v: Any) -> str:
    """A table cell: '-' for None, yes/no for booleans, four significant digits for floats."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def table(headers: list[str], rows: list[list], title: str | None = None) -> str:
    """An aligned plain-text table (numbers right-aligned), with an optional title line."""
    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    out = [title] if title else []
    out += ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), line]
    out += ["  ".join(c.rjust(w) if _num(c) else c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(out)


def _num(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False
