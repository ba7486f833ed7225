"""`evaluate_against`: the one call a pipeline makes at its end to measure its final model against the
model it started from, by an external judge on held-out prompts (issue 10, item 4).

It generates both models' answers to the prompt set, judges them pairwise (position-swapped) and with
the task rubrics, and writes into out_dir:
    answers_final.json, answers_start.json   AlpacaEval-layout answers with their sampling settings
    eval.json   the full report (every verdict), eval.txt   the tables, eval.png   a plot where it helps
and returns the summary figures (win rate of final over start with its standard error, LC win rate,
mean lengths, per-task rates, per-language shares), the same a user gets from
`rdpo-fast generate` twice and `rdpo-fast eval`.
"""
from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from rdpo_fast.judges.probability import ProbabilityJudge
from rdpo_fast.lm.chat import DEFAULT_SYSTEM
from rdpo_fast.lm.generation import GenerationSettings
from rdpo_fast.lm.inference import load_with_tokenizer
from rdpo_fast.models.sources import DEFAULT_MODEL

from .answers import pair_answers, read_answers
from .compare import evaluate_pairs, write_reports
from .generate import generate_answers, generator_name
from .records import write_records
from .tasks import load_prompts

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Greedy answers: the comparison of two models is not blurred by sampling noise, and reruns agree.
EVAL_GENERATION = GenerationSettings(max_new_tokens=128, temperature=0.0, batch_size=16, progress=False)

SUMMARY_KEYS = ("n_total", "win_rate", "standard_error", "length_controlled_winrate", "discrete_win_rate",
                "avg_length", "judge_position_consistency", "judge_label_mass")


# A model to answer: a name or path, or an already loaded (model, tokenizer) pair.
ModelSpec = str | tuple[torch.nn.Module, "PreTrainedTokenizerBase"]


def _model(spec: ModelSpec, what: str):
    """(model, tokenizer, name) from a model name/path, or a (model, tokenizer) pair already loaded."""
    if isinstance(spec, (tuple, list)):
        model, tok = spec
        return model, tok, getattr(model.config, "_name_or_path", None) or what
    model, tok = load_with_tokenizer(spec)
    return model, tok, str(spec)


def summarize(report: dict) -> dict:
    """The headline figures of an eval report (no per-item verdicts)."""
    out = {k: report.get(k) for k in SUMMARY_KEYS}
    out["model"], out["baseline"], out["judge"] = report["model"], report["baseline"], report["judge"]
    out["rates"] = {t: {"rate_name": r["rate_name"], "model": r["model"], "baseline": r["baseline"], "n": r["n"]}
                    for t, r in (report.get("rates") or {}).items()}
    out["language_share"] = report.get("language_share") or {}
    out["by_task"] = {t: {k: s[k] for k in ("n_total", "win_rate", "standard_error")}
                      for t, s in report["by_task"].items()}
    out["by_language"] = {c: {k: s[k] for k in ("n_total", "win_rate", "standard_error")}
                          for c, s in (report.get("by_language") or {}).items() if c}
    return out


def evaluate_against(start_model: ModelSpec, final_model: ModelSpec, *, prompts: str = "all",
                     judge: ModelSpec | ProbabilityJudge = DEFAULT_MODEL,
                     out_dir: str, generation: GenerationSettings | None = None, num_prompts: int | None = None,
                     languages: list[str] | None = None, system: str | None = DEFAULT_SYSTEM,
                     judge_batch_size: int = 8, max_answer_tokens: int = 512, pointwise: bool = True,
                     log: Callable[[str], object] = print) -> dict:
    """Judge final_model's answers against start_model's on held-out prompts; returns summarize(report).

    start_model, final_model: a model name or path (local Hugging Face directory, .gguf, the embedded default's
        name, models.sources.DEFAULT_MODEL) or an already loaded (model, tokenizer) pair.
    prompts: shipped task names ('all', 'safety', 'general', 'multilingual', comma-separated) or a prompt
        file (JSONL, or AlpacaEval JSON). num_prompts: the first N of each task (or of the file).
    judge: a model name or path, a (model, tokenizer) pair, or a ProbabilityJudge.
    generation: sampling settings of both models (default EVAL_GENERATION: greedy, 128 new tokens).
    """
    t0 = time.time()
    items = load_prompts(prompts, languages=languages, num_prompts=num_prompts)
    gen = generation or EVAL_GENERATION
    os.makedirs(out_dir, exist_ok=True)
    files = {}
    for side, spec in (("final", final_model), ("start", start_model)):
        model, tok, name = _model(spec, side)
        gname = generator_name(name) if isinstance(spec, str) else f"{side} model"
        recs = generate_answers(model, tok, items, gen, model_name=name, generator=gname, system=system)
        files[side] = os.path.join(out_dir, f"answers_{side}.json")
        write_records(files[side], recs)
        log(f"evaluate: {len(recs)} answers of the {side} model ({name}) -> {files[side]}")
        if isinstance(spec, str):
            del model
            gc.collect()
    if isinstance(judge, ProbabilityJudge):
        j = judge
    elif isinstance(judge, (tuple, list)):
        j = ProbabilityJudge(judge[0], judge[1], batch_size=judge_batch_size, max_answer_tokens=max_answer_tokens)
    else:
        j = ProbabilityJudge.load(judge, batch_size=judge_batch_size, max_answer_tokens=max_answer_tokens)
    final, start = read_answers(files["final"]), read_answers(files["start"])
    report = evaluate_pairs(pair_answers(final, start, files["final"], files["start"]), j, pointwise=pointwise,
                            languages=any(p.language and p.language != "en" for p in items))
    report["seconds"] = round(time.time() - t0, 1)
    text, plot = write_reports(out_dir, [report], ["final"], judge=j.name, baseline=files["start"])
    log(text)
    out = summarize(report)
    out["files"] = {**files, "report": os.path.join(out_dir, "eval.json"), "plot": plot}
    out["seconds"] = report["seconds"]
    return out
