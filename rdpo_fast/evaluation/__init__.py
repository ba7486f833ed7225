"""Offline evaluation: what the three papers measured (SPEC section 5, "Evaluation").

- judge.py: the probability judge, a verdict read from the judge model's next-token probabilities after
  a rubric prompt (pairwise in both answer orders, or the expected score on a rubric's scale), never
  parsed from prose and never guessed; labelprobs.py scores the verdict strings in one batched forward.
- rubrics.py: the pairwise rubrics per task and the pointwise scales of rDPO (harmlessness 0/1, persona
  0-5, sycophancy -5..5) and a generic 1-10.
- tasks.py + prompt_files/: held-out prompt sets (safety with held-out jailbreak wrappers, role-play,
  sycophancy, general, multilingual), user JSONL and AlpacaEval JSON prompt files.
- generate.py: `rdpo-fast generate`, a model's answers with their sampling settings.
- answers.py, compare.py, lc.py, langid.py: `rdpo-fast eval`, win rate and its standard error, AlpacaEval
  2's length-controlled win rate, per-task rubric rates, the share of answers in the requested language.
- scoring.py: soft labels for `rdpo-fast score --scorer judge` from the same judge.
- api.py: evaluate_against(start, final, ...), the call a pipeline makes at its end.
"""
from .api import evaluate_against
from rdpo_fast.judges.probability import PairVerdict, ProbabilityJudge, ScoreVerdict

__all__ = ["PairVerdict", "ProbabilityJudge", "ScoreVerdict", "evaluate_against"]
