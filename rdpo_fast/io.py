"""Reading the package's text inputs (JSONL data, prompt files, config files, metrics) as UTF-8, with a
file that is not UTF-8 reported as one line naming the file, the line and the byte. A UTF-8 byte-order
mark at the start is accepted. YAML and JSON syntax errors read as one line naming file, line and column."""
from __future__ import annotations

import json
from typing import Iterator


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


def parse_structured(path: str, what: str, error=ValueError):
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


# ---------------------------------------------------------------------------------------- text tables
def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def table(headers: list[str], rows: list[list], title: str | None = None) -> str:
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
