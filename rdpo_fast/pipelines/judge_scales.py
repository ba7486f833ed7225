"""Judge score scales and the soft-label temperature suited to each.

A judge's scores become soft labels p = sigmoid((s_chosen - s_rejected) / T) (scorers.soft_label).
What p a gap gives depends on the scale: on a 1-10 scale at T = 1 a 3-point gap already makes
p = sigmoid(3) ~ 0.95, and on a binary 0/1 scale the largest possible gap makes only
p = sigmoid(1) ~ 0.73. So each shipped task states its scale and a temperature that puts the same
confidence on the same share of the scale:

    T = (hi - lo) / 4:  a full-scale gap gives p = sigmoid(4) ~ 0.98, a quarter of the scale
                        gives p = sigmoid(1) ~ 0.73, no gap gives 0.5.

    scale                          range     T      p(1 point)  p(full scale)
    harmlessness (binary)          0..1      0.25   0.98        0.98
    role-play (persona leak)       0..5      1.25   0.69        0.98
    sentiment, closeness to 0      -5..5     1.25   0.69        0.98   (scored -|s|, range 0..5)
    generic rubric                 1..10     2.25   0.61        0.98

A task may also name a target score: the judge's score s then counts as -|s - target| (how close
the answer is to it), e.g. sentiment where the objective answer is the neutral one (target 0).
"""
from __future__ import annotations

from .scorers import Score


def scale_temperature(lo: int, hi: int, target: int | None = None) -> float:
    """T = (width of the scale the soft label sees) / 4; with a target the width is the largest
    distance from it."""
    if lo >= hi:
        raise ValueError(f"score range needs lo < hi, got {lo}..{hi}")
    width = hi - lo if target is None else max(target - lo, hi - target)
    return width / 4


class TargetScorer:
    """Wraps a scorer so that each score s becomes -|s - target|; the judge's own score is kept in
    the detail as raw_score."""

    def __init__(self, inner, target: int):
        self.inner, self.target = inner, target
        self.name = inner.name

    def __call__(self, prompts, responses) -> list[Score]:
        out = []
        for s in self.inner(prompts, responses):
            if s.value is None:
                out.append(s)
            else:
                out.append(Score(-abs(s.value - self.target), None, {**s.detail, "raw_score": s.value}))
        return out
