"""Which sampled responses are usable candidates. A truncated sample (cut off by max_new_tokens) is
an unfinished answer whose length says nothing about the model's preference; an empty or
repetition-dominated one is degenerate. Each rejection has a named reason so runs can count them."""
from __future__ import annotations

import re

from rdpo_fast.lm.generation import Sample

REASONS = ("truncated", "empty", "repetitive")
_WORD = re.compile(r"\w+", re.UNICODE)
_RUN = re.compile(r"(.)\1{19,}", re.S)  # one character 20+ times in a row


def rejection_reason(sample: Sample, *, drop_truncated: bool = True, min_distinct_trigrams: float = 0.5) -> str | None:
    """None for a usable sample, else one of REASONS."""
    if drop_truncated and sample.truncated:
        return "truncated"
    text = sample.text.strip()
    if not _WORD.search(text):
        return "empty"
    if _RUN.search(text) or is_repetitive(text, min_distinct_trigrams):
        return "repetitive"
    return None


def is_repetitive(text: str, min_distinct: float = 0.5) -> bool:
    """True when fewer than `min_distinct` of the word trigrams are distinct (loops like 'the the the'
    or a sentence repeated); needs at least 12 trigrams to judge."""
    words = [w.lower() for w in _WORD.findall(text)]
    grams = list(zip(words, words[1:], words[2:]))
    if len(grams) < 12:
        return False
    return len(set(grams)) / len(grams) < min_distinct
