"""Reading and writing the evaluation's record files, with errors that name the file and line.

Two layouts, chosen by the file name: `.json` is one JSON list of objects (AlpacaEval's format, e.g.
{"instruction", "output", "generator", "dataset"}), `.jsonl` one object per line. Each record comes back
with the line it starts on, so every later error (a missing answer, a prompt the other side lacks) can
point at it. Writes are atomic (a temporary file renamed into place).
"""
from __future__ import annotations

import json
import os


class RecordError(ValueError):
    """A record file that cannot be read as asked; the message names the file and line."""


def read_records(path: str, what: str = "records") -> list[tuple[int, dict]]:
    """[(line, record)] of a .json list or a .jsonl file; an empty file is an error."""
    if not os.path.isfile(path):
        raise RecordError(f"{what} file not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        raise RecordError(f"{path}: the file is empty; expected {what}")
    out = _read_json_list(path, text) if text.lstrip().startswith("[") else _read_jsonl(path, text)
    if not out:
        raise RecordError(f"{path}: no {what} in the file")
    for line, rec in out:
        if not isinstance(rec, dict):
            raise RecordError(f"{path}:{line}: expected a JSON object, got {type(rec).__name__}")
    return out


def _read_jsonl(path: str, text: str) -> list[tuple[int, dict]]:
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}:{lineno}: malformed JSON ({e.msg}); expected one JSON object per line, "
                              "or a .json file holding one list") from None
    return out


def _read_json_list(path: str, text: str) -> list[tuple[int, dict]]:
    """The elements of a top-level JSON list, each with the line where it starts."""
    dec = json.JSONDecoder()
    i = text.index("[") + 1
    out = []

    def line_of(pos):
        return text.count("\n", 0, pos) + 1

    def skip(pos):
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    i = skip(i)
    if i < len(text) and text[i] == "]":
        return out
    while True:
        i = skip(i)
        try:
            rec, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}:{line_of(e.pos)}: malformed JSON ({e.msg})") from None
        out.append((line_of(i), rec))
        i = skip(end)
        if i < len(text) and text[i] == ",":
            i += 1
            continue
        if i < len(text) and text[i] == "]":
            if text[i + 1:].strip():
                raise RecordError(f"{path}:{line_of(i + 1)}: text after the end of the JSON list")
            return out
        raise RecordError(f"{path}:{line_of(i)}: expected ',' or ']' in the JSON list")


def write_records(path: str, records: list[dict]) -> None:
    """A .jsonl file one record per line, any other name a JSON list (AlpacaEval's layout)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        else:
            f.write("[\n")
            for k, r in enumerate(records):
                f.write("  " + json.dumps(r, ensure_ascii=False) + ("," if k + 1 < len(records) else "") + "\n")
            f.write("]\n")
    os.replace(tmp, path)


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    os.replace(tmp, path)
