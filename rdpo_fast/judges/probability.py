"""The probability judge: a verdict read from the judge model's next-token probabilities after a rubric
prompt, never parsed from generated prose and never guessed, so every item gets one.

Pairwise: the judge sees the question and two answers labelled "A" and "B" (or "1" and "2") and its
reply is forced to begin with the rubric's answer prefix; the probability of each label (with and
without a leading space, every tokenisation variant summed) is renormalised over the two labels, and
the share of probability the labels got is reported as `label_mass`. Both orders are asked (position
swap). With l1 = log P(A)/P(B) when a is shown first and l2 = log P(B)/P(A) when a is shown second (both
"a is better" log-odds), the preference is p = sigmoid((l1 + l2) / 2): a position bias that adds to the
log-odds of the first label cancels exactly, and because swapping the answers negates l1 and l2 exactly
and the sigmoid is evaluated so that sigmoid(-z) = 1 - sigmoid(z) holds in floating point,
p(a, b) == 1 - p(b, a) exactly and p(a, a) == 0.5 exactly.

Pointwise: the expected score under the judge's distribution over the rubric's scale, each score read as
the complete string "<score>]]" (so "1" is not confused with the first token of "10", nor "-5" with "5").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from rdpo_fast.lm.chat import prompt_text, require_template
from rdpo_fast.lm.inference import load_with_tokenizer

from .labelprobs import continuation_logprobs
from .rubrics import JUDGE_SYSTEM, PairwiseRubric, PointwiseRubric


def sigmoid(z: float) -> float:
    """Logistic function with sigmoid(-z) == 1 - sigmoid(z) exactly: for z >= 0 the value lies in
    [0.5, 1], where 1 - s is exact (Sterbenz), and the negative side is defined as that difference."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    return 1.0 - 1.0 / (1.0 + math.exp(z))


def _variants(label: str, terminator: str | None) -> list[str]:
    """The strings that spell a verdict label: with and without a leading space, then the terminator."""
    end = terminator or ""
    return [label + end, " " + label + end]


@dataclass
class PairVerdict:
    preference: float  # P(answer a is better than answer b), both orders combined
    first_order: float  # P(a better) with a shown first
    second_order: float  # P(a better) with a shown second
    label_mass: tuple[float, float]  # probability the two labels got, per order
    truncated: bool = False  # an answer was cut to max_answer_tokens for the judge

    @property
    def consistent(self) -> bool:
        """Both orders prefer the same answer (the judge is not just picking a position)."""
        return (self.first_order - 0.5) * (self.second_order - 0.5) > 0

    def to_dict(self) -> dict:
        return {"preference": self.preference, "first_order": self.first_order, "second_order": self.second_order,
                "label_mass": list(self.label_mass), "consistent": self.consistent, "truncated": self.truncated}


@dataclass
class ScoreVerdict:
    expected: float  # expected score under the judge's renormalised distribution over the scale
    distribution: dict[str, float] = field(default_factory=dict)  # label -> probability (sums to 1)
    label_mass: float = 0.0  # probability the scale's labels got before renormalising
    truncated: bool = False

    def to_dict(self) -> dict:
        return {"expected": self.expected, "distribution": self.distribution, "label_mass": self.label_mass,
                "truncated": self.truncated}


class ProbabilityJudge:
    """A causal LM judge read through its label probabilities. `model` must be a Hugging Face causal LM
    with a chat-template tokenizer; multi-token labels need sdpa or eager attention (load() uses sdpa)."""

    def __init__(self, model, tokenizer, *, batch_size: int = 8, max_answer_tokens: int = 512,
                 system: str | None = JUDGE_SYSTEM, progress: bool = False, name: str | None = None):
        require_template(tokenizer, "the probability judge")
        if max_answer_tokens < 1:
            raise ValueError(f"max_answer_tokens must be >= 1, got {max_answer_tokens}")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_answer_tokens = batch_size, max_answer_tokens
        self.system, self.progress = system, progress
        self.name = name or getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__

    @classmethod
    def load(cls, name: str, *, dtype: str = "auto", **kw) -> ProbabilityJudge:
        """The judge from a local Hugging Face directory, a .gguf file or the embedded default, on the GPU
        when there is one (dtype "auto": bfloat16 there, float32 on CPU)."""
        model, tok = load_with_tokenizer(name, dtype=dtype, attn="sdpa")
        return cls(model, tok, name=name, **kw)

    # ------------------------------------------------------------------------------------ helpers
    def _clip(self, text: str) -> tuple[str, bool]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_answer_tokens:
            return text, False
        return self.tokenizer.decode(ids[: self.max_answer_tokens]) + " [...]", True

    def _label_logmass(self, prompts: list[str], labels: tuple[str, ...], terminator, desc) -> torch.Tensor:
        """[n, len(labels)] log P(label) summed over the label's spellings."""
        conts, owner = [], []
        for k, lab in enumerate(labels):
            for v in _variants(lab, terminator):
                conts.append(v)
                owner.append(k)
        lp = continuation_logprobs(self.model, self.tokenizer, prompts, conts, batch_size=self.batch_size,
                                   progress=self.progress, desc=desc)
        out = torch.full((len(prompts), len(labels)), -math.inf, dtype=torch.float64)
        for k in range(len(labels)):
            cols = [j for j, o in enumerate(owner) if o == k]
            out[:, k] = torch.logsumexp(lp[:, cols], dim=1)
        return out

    # ------------------------------------------------------------------------------------ pairwise
    def pairwise(self, questions: list[str], answers_a: list[str], answers_b: list[str],
                 rubric: PairwiseRubric | list[PairwiseRubric]) -> list[PairVerdict]:
        """P(a better than b) for each item, from both presentation orders."""
        n = len(questions)
        if not n == len(answers_a) == len(answers_b):
            raise ValueError(f"{n} questions, {len(answers_a)} answers a, {len(answers_b)} answers b")
        rubrics = rubric if isinstance(rubric, list) else [rubric] * n
        if len(rubrics) != n:
            raise ValueError(f"{n} items but {len(rubrics)} rubrics")
        out: list[PairVerdict | None] = [None] * n
        for r in dict.fromkeys(rubrics):  # one scoring call per distinct rubric (its labels)
            idx = [i for i in range(n) if rubrics[i] == r]
            clipped = [(self._clip(answers_a[i]), self._clip(answers_b[i])) for i in idx]
            p_ab = [self._prompt(r.messages(questions[i], a[0], b[0], self.system), r)
                    for i, (a, b) in zip(idx, clipped)]
            p_ba = [self._prompt(r.messages(questions[i], b[0], a[0], self.system), r)
                    for i, (a, b) in zip(idx, clipped)]
            lm = self._label_logmass(p_ab + p_ba, r.labels, r.terminator, f"judge ({r.name}, pairwise)")
            m = len(idx)
            for j, i in enumerate(idx):
                first = lm[j]  # a shown first: label 0 is a
                second = lm[m + j]  # a shown second: label 1 is a
                l1 = float(first[0] - first[1])
                l2 = float(second[1] - second[0])
                out[i] = PairVerdict(
                    preference=sigmoid((l1 + l2) / 2), first_order=sigmoid(l1), second_order=sigmoid(l2),
                    label_mass=(float(first.exp().sum()), float(second.exp().sum())),
                    truncated=clipped[j][0][1] or clipped[j][1][1])
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------ pointwise
    def pointwise(self, questions: list[str], answers: list[str],
                  rubric: PointwiseRubric | list[PointwiseRubric]) -> list[ScoreVerdict]:
        """The expected score of each answer on its rubric's scale."""
        n = len(questions)
        if n != len(answers):
            raise ValueError(f"{n} questions but {len(answers)} answers")
        rubrics = rubric if isinstance(rubric, list) else [rubric] * n
        if len(rubrics) != n:
            raise ValueError(f"{n} items but {len(rubrics)} rubrics")
        out: list[ScoreVerdict | None] = [None] * n
        for r in dict.fromkeys(rubrics):
            idx = [i for i in range(n) if rubrics[i] == r]
            clipped = [self._clip(answers[i]) for i in idx]
            prompts = [self._prompt(r.messages(questions[i], a, self.system), r) for i, (a, _) in zip(idx, clipped)]
            lm = self._label_logmass(prompts, r.labels, r.terminator, f"judge ({r.name}, pointwise)")
            probs = torch.softmax(lm, dim=1)
            values = torch.tensor(r.scores, dtype=torch.float64)
            for j, i in enumerate(idx):
                out[i] = ScoreVerdict(expected=float((probs[j] * values).sum()),
                                      distribution={lab: float(p) for lab, p in zip(r.labels, probs[j])},
                                      label_mass=float(lm[j].exp().sum()), truncated=clipped[j][1])
        return out  # type: ignore[return-value]

    def _prompt(self, messages: list[dict], rubric) -> str:
        return prompt_text(self.tokenizer, messages) + rubric.answer_prefix
