"""Tiny models for the evaluation tests, with the tiny tokenizer built once per test process (training
the byte-level BPE is the slow part of tests/support/tiny.py), and a teacher-forcing oracle of string
probabilities that the probability judge is checked against."""
from __future__ import annotations

import functools

import torch
from tiny import build_model, build_tokenizer


@functools.lru_cache(maxsize=1)
def tokenizer():
    return build_tokenizer()


def tiny_model(seed: int = 0):
    tok = tokenizer()
    return build_model(tok, seed=seed).eval(), tok


def save_tiny(path: str, seed: int = 0) -> str:
    model, tok = tiny_model(seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


class TeacherForcing:
    """log P(cont | prompt) by plain full forwards of prompt + cont and of prompt (one sequence each, no
    batching, no cache): the tokens after the two tokenisations' common prefix."""

    def __init__(self, model, tok):
        self.model, self.tok = model, tok
        self._cache = {}

    def _logp(self, ids: tuple) -> torch.Tensor:
        if ids not in self._cache:
            with torch.no_grad():
                self._cache[ids] = self.model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
        return self._cache[ids]

    def __call__(self, prompt: str, cont: str) -> float:
        p = tuple(self.tok(prompt, add_special_tokens=False)["input_ids"])
        f = tuple(self.tok(prompt + cont, add_special_tokens=False)["input_ids"])
        k = 0
        while k < min(len(p), len(f)) and p[k] == f[k]:
            k += 1

        def tail(ids):
            lp = self._logp(ids)
            return sum(float(lp[t - 1, ids[t]]) for t in range(k, len(ids)))

        return tail(f) - tail(p)
