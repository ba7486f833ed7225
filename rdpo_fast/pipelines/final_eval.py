"""The last stage of every pipeline run (DICE, cross-lingual, rDPO): the final model judged against the
model the run started from, by an external judge on held-out prompts (issue 10, item 4).

The judge is a separate model (`--judge`, default the embedded SmolLM2-135M), never the implicit reward
the rounds trained on, and the prompts are the evaluation's held-out sets (rdpo_fast/evaluation/tasks.py),
none of which any training stage sees. Each pipeline picks the set its paper measured on:
    DICE          general (the AlpacaEval kind): win rate and LC win rate vs the starting DPO model
    cross-lingual multilingual, in the run's languages: win rate per language and the share of answers
                  in the requested language
    rDPO          the run's task (safety with held-out jailbreak wrappers, role-play, sycophancy): win
                  rate and the task's rubric rate (harmlessness, persona leak, sycophancy)

The settings of this stage are kept out of the run's settings (run.json), so a finished run can be
judged again with another judge or more prompts without retraining: a changed evaluation reruns this
stage only.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass

from rdpo_fast.evaluation.tasks import TASKS, load_prompts
from rdpo_fast.io import table
from rdpo_fast.lm.generation import GenerationSettings
from rdpo_fast.models import loading as modeling
from rdpo_fast.models.sources import DEFAULT_MODEL

from .stages import StageDir

STAGE = "final_eval"
DEFAULT_JUDGE = DEFAULT_MODEL  # the embedded model judges unless --judge names a better one


@dataclass
class FinalEvalSettings:
    judge: str = DEFAULT_JUDGE
    enabled: bool = True
    prompts: str | None = None  # a task list or a prompt file; None: the pipeline's set (above)
    num_prompts: int | None = None  # the first N of each set (per language for multilingual); None: all
    max_new_tokens: int = 128  # of each model's greedy answers
    batch_size: int = 16  # answers per generate call
    judge_batch_size: int = 8

    def validate(self) -> FinalEvalSettings:
        for name in ("max_new_tokens", "batch_size", "judge_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"final evaluation: {name} must be >= 1, got {getattr(self, name)}")
        if self.num_prompts is not None and self.num_prompts < 1:
            raise ValueError(f"final evaluation: num_prompts must be >= 1, got {self.num_prompts}")
        return self


class FinalEval:
    """The evaluation of one run: checked in `prepare` (before any model loads), run by `run`."""

    def __init__(self, settings: FinalEvalSettings | None, *, default_prompts: str,
                 languages: list[str] | None = None, system: str | None, log=print):
        self.s = (settings or FinalEvalSettings()).validate()
        self.prompts = self.s.prompts or default_prompts
        self.languages, self.system, self.log = languages, system, log
        self.same_judge = False

    def prepare(self, training_judge: str | None = None) -> None:
        if not self.s.enabled:
            return
        load_prompts(self.prompts, languages=self.languages, num_prompts=self.s.num_prompts)  # names the bad input
        modeling.resolve(self.s.judge)
        # A judge that also made the training labels is not an independent measure: say so, in the
        # summary too, rather than refuse (a user may want exactly that comparison).
        self.same_judge = bool(training_judge) and _same_model(training_judge, self.s.judge)
        if self.same_judge:
            self.log(f"note: the evaluation judge ({self.s.judge}) also scored the training pairs; its win rate "
                     "is not an independent measure (pass --judge another model)")

    def record(self) -> dict:
        """What decides this stage's result (kept in its marker; a change reruns it)."""
        return {**dataclasses.asdict(self.s), "prompts": self.prompts, "languages": self.languages,
                "system": self.system}

    def run(self, run: StageDir, models, start: str, final: str) -> dict | None:
        if not self.s.enabled:
            self.log("[final_eval] skipped (--no-final-eval)")
            return None
        from rdpo_fast.evaluation.api import evaluate_against

        want = self.record()
        done = run.done(STAGE)
        if done is not None and done["stats"].get("settings") != want:
            self.log(f"[{STAGE}] the evaluation settings changed: evaluating again")
            os.remove(run.file(f"{STAGE}.done.json"))
        out_dir = os.path.join(run.path, STAGE)

        def go():
            models.keep()  # the evaluation loads both models and the judge itself
            shutil.rmtree(out_dir, ignore_errors=True)
            gen = GenerationSettings(max_new_tokens=self.s.max_new_tokens, temperature=0.0,
                                     batch_size=self.s.batch_size, progress=False)
            summary = evaluate_against(start, final, prompts=self.prompts, judge=self.s.judge, out_dir=out_dir,
                                       generation=gen, num_prompts=self.s.num_prompts, languages=self.languages,
                                       system=self.system, judge_batch_size=self.s.judge_batch_size, log=self.log)
            summary["files"] = {k: v and os.path.relpath(v, run.path) for k, v in summary["files"].items()}
            summary.update(settings=want, same_judge_as_training=self.same_judge,
                           start_model=start, final_model=final)
            return summary, [out_dir]

        return run.run(STAGE, go)


def _same_model(a: str, b: str) -> bool:
    """Both names resolved already (prepare): the same files on disk."""
    return os.path.realpath(modeling.resolve(a)[0]) == os.path.realpath(modeling.resolve(b)[0])


def default_task_prompts(task: str) -> str:
    """The held-out set of an rDPO task: the evaluation set of that name, else the general one."""
    return task if task in TASKS and task != "multilingual" else "general"


def multilingual_languages(languages) -> list[str]:
    """The run's languages that the shipped multilingual evaluation set has; none is an error."""
    from rdpo_fast.evaluation.tasks import LANGUAGES

    have = [c for c in languages if c in LANGUAGES]
    if not have:
        raise ValueError(f"none of the run's languages ({', '.join(languages)}) is in the shipped multilingual "
                         f"evaluation set ({', '.join(LANGUAGES)}); pass --final-eval-prompts FILE (JSONL with "
                         "'instruction' and 'language') or --no-final-eval")
    return have


def summary_table(ev: dict | None) -> str:
    """The external judge's verdict on the final model, for the end of a run's log."""
    if not ev:
        return "final evaluation: not run"
    rows = [["judge (external; not the training reward)", ev["judge"]],
            ["prompts (held-out)", f"{ev['n_total']} ({ev['settings']['prompts']})"],
            ["win rate final vs start, %", f"{_f(ev['win_rate'])} +- {_f(ev['standard_error'])} (SE)"],
            ["length-controlled win rate, %", _f(ev.get("length_controlled_winrate"))],
            ["mean length final / start, chars", " / ".join(_f(x) for x in _lengths(ev))],
            ["judge: same verdict in both orders", _f(ev.get("judge_position_consistency"))]]
    for task, r in (ev.get("rates") or {}).items():
        rows.append([f"{task}: {r['rate_name']} final / start",
                     f"{_f(r['model']['rate'])} / {_f(r['baseline']['rate'])} (n={r['n']})"])
    by_lang = ev.get("by_language") or {}
    for lang in sorted(set(by_lang) | set(ev.get("language_share") or {})):
        w, sh = by_lang.get(lang), (ev.get("language_share") or {}).get(lang)
        if w and len(by_lang) > 1:
            rows.append([f"{lang}: win rate final vs start, %", f"{_f(w['win_rate'])} +- {_f(w['standard_error'])} "
                                                                f"(n={w['n_total']})"])
        if sh:
            rows.append([f"{lang}: share of answers in {lang}, final / start",
                         f"{_f(sh['model'])} / {_f(sh['baseline'])} (n={sh['n']})"])
    if ev.get("same_judge_as_training"):
        rows.append(["note", "the judge also scored the training pairs: not independent"])
    return table(["final evaluation", "value"], rows)


def _lengths(ev) -> tuple:
    avg = ev.get("avg_length") or {}
    return avg.get("model"), avg.get("baseline")


def _f(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if isinstance(v, float) else str(v)

