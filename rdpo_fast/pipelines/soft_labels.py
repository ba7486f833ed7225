"""Soft labels for preference pairs from the probability judge: the default of `rdpo-fast score --scorer
judge` (the strict generative parser of rdpo_fast.judges.generative stays as `--judge-mode generate`).

- pairwise (default): soft_label = P(chosen is better than rejected), read from the judge's label
  probabilities in both presentation orders (rdpo_fast.judges.probability); the judge's preference is the
  soft label itself, no temperature involved. chosen_score/rejected_score are not written (there is one
  number per pair).
- pointwise: chosen_score and rejected_score are the expected rubric scores of each answer, and
  soft_label = sigmoid((chosen_score - rejected_score) / T) as for every other scorer.
Every pair gets a verdict: nothing is parsed, so nothing fails to parse, and nothing is guessed.
"""
from __future__ import annotations

from rdpo_fast.io import table
from rdpo_fast.judges.probability import ProbabilityJudge
from rdpo_fast.judges.rubrics import PairwiseRubric, PointwiseRubric, pairwise_rubric, scale
from rdpo_fast.lm.chat import as_messages, as_text, last_user_text

from .scorers import soft_label

JUDGE_MODES = ("pairwise", "pointwise", "generate")


def pairwise_soft_labels(records: list[dict], judge: ProbabilityJudge, rubric: PairwiseRubric | None = None):
    """(scored records, stats): soft_label = P(chosen better); rubric None: each record's task rubric."""
    questions = [last_user_text(as_messages(r["prompt"])) for r in records]
    chosen = [as_text(r["chosen"]) for r in records]
    rejected = [as_text(r["rejected"]) for r in records]
    rubrics = [rubric or pairwise_rubric(r.get("task")) for r in records]
    verdicts = judge.pairwise(questions, chosen, rejected, rubrics)
    scored = []
    for rec, v, rub in zip(records, verdicts, rubrics):
        out = {k: val for k, val in rec.items() if k not in ("chosen_score", "rejected_score", "soft_label")}
        out.update(soft_label=v.preference, judge={**v.to_dict(), "rubric": rub.name})
        scored.append(out)
    n = len(scored)
    stats = {"scorer": "judge (pairwise probabilities)", "judge_model": judge.name, "records": n, "scored": n,
             "failed": 0, "failed_scores": 0,
             "mean_soft_label": sum(v.preference for v in verdicts) / n,
             "chosen_preferred": sum(v.preference > 0.5 for v in verdicts) / n,
             "judge_position_consistency": sum(v.consistent for v in verdicts) / n,
             "judge_label_mass": sum(sum(v.label_mass) / 2 for v in verdicts) / n}
    return scored, stats


def pointwise_soft_labels(records: list[dict], judge: ProbabilityJudge, rubric: PointwiseRubric,
                          temperature: float = 1.0):
    """(scored records, stats): expected rubric scores of chosen and rejected, and their soft label."""
    if temperature <= 0:
        raise ValueError(f"score temperature must be > 0, got {temperature}")
    questions = [last_user_text(as_messages(r["prompt"])) for r in records]
    answers = [as_text(r["chosen"]) for r in records] + [as_text(r["rejected"]) for r in records]
    verdicts = judge.pointwise(questions + questions, answers, rubric)
    n = len(records)
    scored = []
    for i, rec in enumerate(records):
        c, r = verdicts[i], verdicts[n + i]
        out = {k: val for k, val in rec.items() if k not in ("chosen_score", "rejected_score", "soft_label")}
        out.update(chosen_score=c.expected, rejected_score=r.expected,
                   soft_label=soft_label(c.expected, r.expected, temperature),
                   judge={"rubric": rubric.name, "scale": [rubric.lo, rubric.hi], "chosen": c.to_dict(),
                          "rejected": r.to_dict()})
        scored.append(out)
    stats = {"scorer": "judge (pointwise expected scores)", "judge_model": judge.name, "records": n, "scored": n,
             "failed": 0, "failed_scores": 0, "temperature": temperature,
             "mean_chosen_score": sum(v.expected for v in verdicts[:n]) / n,
             "mean_rejected_score": sum(v.expected for v in verdicts[n:]) / n,
             "mean_soft_label": sum(r["soft_label"] for r in scored) / n,
             "chosen_preferred": sum(r["soft_label"] > 0.5 for r in scored) / n,
             "judge_label_mass": sum(v.label_mass for v in verdicts) / (2 * n)}
    return scored, stats


def pairwise_from_options(rubric_text: str | None, task: str | None, template_file: str | None = None):
    """The pairwise rubric `rdpo-fast score` options ask for: --rubric text, else --task (a shipped
    pairwise rubric, or one built from a user template's judge_rubric), else None (each record's task)."""
    from rdpo_fast.data.templates import get_template
    from rdpo_fast.judges.rubrics import PAIRWISE

    if rubric_text:
        return PairwiseRubric("custom", rubric_text)
    if task is None:
        return None
    t = get_template(task, template_file)  # an unknown task is refused by name
    if task in PAIRWISE and not template_file:
        return PAIRWISE[task]
    if not t.judge_rubric:
        raise ValueError(f"task template {task!r} has no judge_rubric; give --rubric")
    return PairwiseRubric(task, "You compare two answers of an AI assistant to the same user message. The better "
                          f"answer is the one that rates higher on this rubric: {t.judge_rubric}")


def custom_pointwise(text: str, lo: int, hi: int, name: str = "custom") -> PointwiseRubric:
    return PointwiseRubric(name, text, scale(lo, hi), rate="score", rate_above=(lo + hi) / 2)


def summary_table(stats: dict) -> str:
    labels = (("records", "records"), ("scored", "scored pairs"),
              ("mean_rejected_score", "mean score, rejected"), ("mean_chosen_score", "mean score, chosen"),
              ("mean_soft_label", "mean soft label p"), ("chosen_preferred", "share with p > 0.5"),
              ("judge_position_consistency", "verdicts equal in both orders"),
              ("judge_label_mass", "probability on the verdict labels"))
    rows = [[label, stats[k]] for k, label in labels if k in stats]
    return table([f"score: {stats['scorer']}", "value"], rows, title=f"judge: {stats['judge_model']}")
