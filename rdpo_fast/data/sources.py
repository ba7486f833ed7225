"""Where preference records come from, for the training loop: a JSONL file (rdpo_fast.data.records's own reader,
its messages unchanged), or, through the `datasets` library, a `save_to_disk` directory, parquet / JSON /
CSV files, a folder of data files, or a dataset name with a split.

Every record is normalised into TRL's fields before rdpo_fast.data.records validates it, so everything
downstream sees the same records whatever the source:
- column mapping: --prompt-key / --chosen-key / --rejected-key name the source's columns;
- score aliases: UltraFeedback's `score_chosen` / `score_rejected` (and `chosen_rating` /
  `rejected_rating`) are `chosen_score` / `rejected_score`;
- TRL's implicit-prompt format: records whose chosen and rejected carry the whole conversation (and no
  prompt, or a plain-string prompt beside conversational completions, as UltraFeedback-binarized has)
  get the shared prefix as the prompt: the common leading messages, or for strings the common leading
  characters with a trailing space given back to the completions, as TRL's extract_prompt does.
Errors name the source and the row ("data.parquet:row 7", rows counted from 0 as dataset[i]) or the
JSONL line.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .records import DataError, PreferenceData, check_optional_fields, load_preference_data, read_jsonl, validate_record

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SCORE_ALIASES = {"chosen_score": ("score_chosen", "chosen_rating"),
                 "rejected_score": ("score_rejected", "rejected_rating")}
FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv",
                 ".arrow": "arrow"}


@dataclass(frozen=True)
class Columns:
    """The source's names of the three TRL fields."""
    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"

    @property
    def mapped(self) -> bool:
        return (self.prompt, self.chosen, self.rejected) != ("prompt", "chosen", "rejected")


# ---------------------------------------------------------------------------------------- records
def _is_messages(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(m, dict) and "role" in m for m in v)


def extract_prompt(chosen: str | list[dict], rejected: str | list[dict]) -> dict | str:
    """TRL's implicit prompt: the longest shared prefix of chosen and rejected (messages or characters)
    becomes the prompt; for strings a space just before the split goes with the completions. Returns the
    three fields, or why there is no such prompt."""
    if type(chosen) is not type(rejected) or not isinstance(chosen, (str, list)):
        return "chosen and rejected are not both strings or both chat messages"
    n = min(len(chosen), len(rejected))
    i = next((k for k in range(n) if chosen[k] != rejected[k]), n)
    if isinstance(chosen, str) and 0 < i and chosen[i - 1] == " ":
        i -= 1
    if chosen == rejected:
        return "chosen and rejected are identical"
    if i == 0:
        return "chosen and rejected share no prefix"
    if i == len(chosen) or i == len(rejected):
        return "one of chosen and rejected is a prefix of the other"
    return {"prompt": chosen[:i], "chosen": chosen[i:], "rejected": rejected[i:]}


def normaliser(columns: Columns = Columns()) -> Callable[[Any, str], Any]:
    """rec, where -> the record in TRL's fields (see the module docstring); other fields kept."""
    def normalise(rec, where):
        if not isinstance(rec, dict):
            return rec  # validate_record says what is wrong
        rec = dict(rec)
        for canon, key, flag in (("prompt", columns.prompt, "--prompt-key"), ("chosen", columns.chosen, "--chosen-key"),
                                 ("rejected", columns.rejected, "--rejected-key")):
            if key == canon:
                continue
            if key not in rec:
                raise DataError(f"{where}: no field {key!r} ({flag} {key}); the record has {sorted(rec)}")
            rec[canon] = rec.pop(key)
        for canon, aliases in SCORE_ALIASES.items():
            for alias in aliases:
                if alias in rec:
                    if canon in rec:
                        raise DataError(f"{where}: both {canon!r} and its alias {alias!r} are given; keep one")
                    rec[canon] = rec.pop(alias)
        if "chosen" in rec and "rejected" in rec:
            if "prompt" not in rec:
                got = extract_prompt(rec["chosen"], rec["rejected"])
                if isinstance(got, str):
                    raise DataError(f"{where}: missing field(s) 'prompt' (need 'prompt', 'chosen', 'rejected'), and "
                                    f"no implicit prompt (TRL's format) can be extracted: {got}")
                rec.update(got)
            elif isinstance(rec["prompt"], str) and _is_messages(rec["chosen"]):
                # TRL's rule: a text prompt beside conversations that hold it is the implicit kind.
                got = extract_prompt(rec["chosen"], rec["rejected"])
                if not isinstance(got, str):
                    rec.update(got)
        return rec

    return normalise


# ---------------------------------------------------------------------------------------- sources
def _builder(path: str) -> str | None:
    for ext, builder in FILE_BUILDERS.items():
        if path.endswith(ext) or path.endswith(ext + ".gz"):
            return builder
    return None


def _open_dataset(source: str, split: str):
    """(label, datasets.Dataset) of a non-JSONL source."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"{source}: reading anything but JSONL needs the datasets library: "
                        "pip install 'rdpo_fast[data]'") from None
    path = os.path.expanduser(source)
    if not os.path.exists(path) and (_builder(path) or not _could_be_name(source)):
        raise DataError(f"data file not found: {source}")
    try:
        if os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in
                                       ("dataset_info.json", "state.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(path)
            kind = "save_to_disk directory"
        elif os.path.isfile(path):
            builder = _builder(path)
            if builder is None:
                raise DataError(f"{source}: unknown data file type (give .jsonl, .json, .parquet, .csv, .tsv, "
                                ".arrow, a datasets save_to_disk directory or a dataset name)")
            kw = {"delimiter": "\t"} if path.endswith((".tsv", ".tsv.gz")) else {}
            ds = datasets.load_dataset(builder, data_files={split: path}, split=split, **kw)
            kind = f"{builder} file"
        else:
            ds = datasets.load_dataset(path, split=split)  # a folder of data files, or a dataset name
            kind = "dataset"
    except DataError:
        raise
    except Exception as e:  # datasets raises many kinds (ValueError, DatasetNotFoundError, ArrowInvalid, ...)
        raise DataError(f"{source}: cannot load it as a dataset ({type(e).__name__}: {_first_line(e)})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{source}: no split {split!r} (it has {sorted(ds)}); choose one with --dataset-split")
        ds, kind = ds[split], f"{kind}, split {split}"
    return kind, ds


def _could_be_name(source: str) -> bool:
    return not source.startswith((".", "/", "~")) and source.count("/") <= 1


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _row(rec: dict) -> dict:
    # Columnar sources give every column on every row, None where a record lacks it; an absent optional
    # field must read as absent. NaN in a numeric column (pandas / CSV) is the same hole.
    return {k: v for k, v in rec.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}


def read_records(source: str, *, split: str = "train", columns: Columns = Columns()) -> list[tuple]:
    """[(location, record)] in TRL's fields, validated as rdpo_fast.data.records validates JSONL records: a JSONL
    line number, or "row i" of a dataset."""
    norm = normaliser(columns)
    if source.endswith(".jsonl") and not os.path.isdir(source):
        return read_jsonl(source, normalise=norm)
    _, ds = _open_dataset(source, split)
    if len(ds) == 0:
        raise DataError(f"{source}: no records (the dataset is empty); a preference dataset needs at least one pair")
    records = []
    for i, rec in enumerate(ds):
        where = f"{source}:row {i}"
        rec = norm(_row(rec), where)
        validate_record(rec, where)
        records.append((f"row {i}", rec))
    check_optional_fields(records, source)
    return records


def load(source: str, tokenizer: PreTrainedTokenizerBase, *, split: str = "train", columns: Columns = Columns(),
         **kw) -> PreferenceData:
    """rdpo_fast.data.records.load_preference_data for any source: the same pairs as the JSONL equivalent."""
    return load_preference_data(source, tokenizer, records=read_records(source, split=split, columns=columns), **kw)


def columns(cfg: Any) -> Columns:
    return Columns(cfg.prompt_key, cfg.chosen_key, cfg.rejected_key)


def eval_source(cfg: Any, default_eval: str) -> tuple[str | None, str]:
    """(held-out source, its split): --eval-data (split --eval-dataset-split, default "test"); without it,
    the --eval-dataset-split of --data when one is named; else the shipped held-out split when --data is
    the default, else none."""
    if cfg.eval_data:
        return cfg.eval_data, cfg.eval_dataset_split or "test"
    if cfg.eval_dataset_split:
        if cfg.data is None:
            raise DataError("eval_dataset_split needs --data (or --eval-data): the shipped data has no splits")
        return cfg.data, cfg.eval_dataset_split
    return (default_eval if cfg.data is None else None), "test"
