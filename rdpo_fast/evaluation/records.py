"""Reading and writing the evaluation's record files, with errors that name the file and line.

Two layouts: one JSON list of objects (AlpacaEval's format, e.g. {"instruction", "output", "generator",
"dataset"}), or one object per line (JSONL). A read tells them apart by the first character, a write by
the file name (`.jsonl` or not). Each record comes back
with the line it starts on, so every later error (a missing answer, a prompt the other side lacks) can
point at it. Writes are atomic (rdpo_fast.io).
"""
from __future__ import annotations

import json
import os

from rdpo_fast import io as textfile


class RecordError(ValueError):
    """A record file that cannot be read as asked; the message names the file and line."""


def read_records(path: str, what: str = "records") -> list[tuple[int, dict]]:
    """[(line, record)] of a .json list or a .jsonl file; an empty file is an error."""
    if not os.path.isfile(path):
        raise RecordError(f"{what} file not found: {path}")
    text = textfile.read_text(path)
    if not text.strip():
        raise RecordError(f"{path}: the file is empty; expected {what}")
    if text.lstrip().startswith("["):
        out = _read_json_list(path, text)
    else:
        out = list(textfile.read_jsonl(path, RecordError, "; expected one JSON object per line, or a .json file "
                                       "holding one list"))
    if not out:
        raise RecordError(f"{path}: no {what} in the file")
    for line, rec in out:
        if not isinstance(rec, dict):
            raise RecordError(f"{path}:{line}: expected a JSON object, got {type(rec).__name__}")
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
    """A .jsonl file one record per line, any other name a JSON list (AlpacaEval's layout) with one
    record per line; atomically."""
    if path.endswith(".jsonl"):
        textfile.write_jsonl(path, records)
        return
    with textfile.atomic_open(path) as f:
        f.write("[\n")
        for k, r in enumerate(records):
            f.write("  " + textfile.dumps(r, ensure_ascii=False) + ("," if k + 1 < len(records) else "") + "\n")
        f.write("]\n")
