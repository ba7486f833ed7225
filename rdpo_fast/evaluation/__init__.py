"""Offline evaluation: what the three papers measured (SPEC section 5, "Evaluation"). It judges with
rdpo_fast.judges (the probability judge and its rubrics), generates with rdpo_fast.lm, and never imports
the pipelines.

- tasks.py + prompt_files/: held-out prompt sets (safety with held-out jailbreak wrappers, role-play,
  sycophancy, general, multilingual), user JSONL and AlpacaEval JSON prompt files.
- generate.py: `rdpo-fast generate`, a model's answers with their sampling settings.
- answers.py, compare.py, lc.py, langid.py: `rdpo-fast eval`, win rate and its standard error, AlpacaEval
  2's length-controlled win rate, per-task rubric rates, the share of answers in the requested language.
- records.py: the answer and prompt files (a JSON list or JSONL), read with file:line errors.
- api.py: evaluate_against(start, final, ...), the call a pipeline makes at its end.
- cli.py: the generate and eval subcommands.
"""
from rdpo_fast.judges.probability import PairVerdict, ProbabilityJudge, ScoreVerdict

from .api import evaluate_against

__all__ = ["PairVerdict", "ProbabilityJudge", "ScoreVerdict", "evaluate_against"]
