"""The shipped preference data: the embedded default for `rdpo-fast train` and `make demo`.

default_train.jsonl and default_eval.jsonl are written by the repository's tests/support/compose_data.py
from the hand-written items and templates there; the eval split holds items (requests, questions,
misconceptions) that never appear in training."""
from importlib.resources import files


def default_path(split: str) -> str:
    """Path of the shipped split: 'train' or 'eval'."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    return str(files(__package__).joinpath(f"default_{split}.jsonl"))
