"""Which language an answer is written in, by py3langid (a fork of langid.py that ships its trained model
inside the wheel, so it runs offline): the optional `eval` extra, `pip install 'rdpo_fast[eval]'`.

Identification is over all 97 of its languages, not restricted to the requested one, so an English answer
to a Spanish instruction counts as not Spanish. Very short answers are hard for any identifier; the
evaluation reports the share per language with the number of answers behind it.
"""
from __future__ import annotations

import types


class LanguageIdError(ValueError):
    """The language identifier is not installed."""


def identifier() -> types.ModuleType:
    """The py3langid module, or a LanguageIdError saying how to install it."""
    try:
        import py3langid
    except ImportError:
        raise LanguageIdError("the share of answers in the requested language needs py3langid: "
                              "pip install 'rdpo_fast[eval]' (or pip install py3langid)") from None
    return py3langid


def identify(texts: list[str]) -> list[str | None]:
    """ISO 639-1 code of each text's language (None for an empty text)."""
    lid = identifier()
    return [lid.classify(t)[0] if t.strip() else None for t in texts]


def language_share(texts: list[str], requested: list[str]) -> dict:
    """{language: {"n", "in_language", "share"}} over the texts, grouped by requested language."""
    found = identify(texts)
    out: dict[str, dict] = {}
    for want, got in zip(requested, found):
        row = out.setdefault(want, {"n": 0, "in_language": 0})
        row["n"] += 1
        row["in_language"] += int(got == want)
    for row in out.values():
        row["share"] = row["in_language"] / row["n"]
    return out
