"""The rDPO pipeline as one resumable command (`rdpo-fast rdpo`): synth -> score -> select -> train.

Stages of the run directory:
  synth          the teacher's self-critique chain on the task's prompts (synth.py)
  scorer/train   only for --scorer implicit without --scorer-policy: a DPO scorer trained from
                 --scorer-reference (default: the teacher) on offline pairs
  score          external scores of chosen (revision) and rejected (original) -> soft labels
                 (scorers.py, with the task's judge scale, judge_scales.py)
  select         the training records of the method (below)
  student/train  the student trained on them (rdpo_fast.training.loop)
  final_eval     the trained student against the untrained one on the task's held-out prompts (safety
                 with held-out jailbreak wrappers), by an external judge: win rate and the task's
                 rubric rate (final_eval.py)

Methods (the paper's rDPO and its baselines, one loop):
  rdpo   scored pairs, loss "rdpo" (soft labels)       dpo   all pairs, loss "sigmoid" (no scores)
  sft    all revisions, loss "sft" (NLL on chosen)      dsc   revisions scored higher, loss "sft"
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from rdpo_fast.data.shipped import default_path
from rdpo_fast.data.templates import get_template
from rdpo_fast.io import table, write_json, write_jsonl
from rdpo_fast.judges.generative import DEFAULT_RUBRIC, JudgeSettings
from rdpo_fast.lm.chat import DEFAULT_SYSTEM
from rdpo_fast.lm.generation import GenerationSettings
from rdpo_fast.losses.head import LOSS_TYPES
from rdpo_fast.models import loading as modeling
from rdpo_fast.models.sources import DEFAULT_MODEL

from .baselines import distill_self_critique, sft_records, without_labels
from .dice import offline_records
from .final_eval import FinalEval, FinalEvalSettings, default_task_prompts
from .final_eval import summary_table as final_eval_table
from .judge_scales import TargetScorer, scale_temperature
from .rounds import Models, TrainSettings, materialise, train_stage
from .stages import StageDir, read_stage_records
from .synth import SynthSettings, load_prompts, synthesize

METHODS = {
    "rdpo": ("rdpo", True, "scored pairs, soft labels (rDPO)"),
    "dpo": ("sigmoid", False, "every synthesised pair, hard labels (DPO)"),
    "sft": ("sft", False, "every revision, NLL on chosen (SFT baseline)"),
    "dsc": ("sft", True, "revisions scored above the original, NLL on chosen (distilled self-critique)"),
}
SCORERS = ("judge", "rm", "implicit")
JUDGE_MODES = ("pairwise", "pointwise", "generate")  # as `rdpo-fast score --judge-mode`


def _scorer_train() -> TrainSettings:
    return TrainSettings(lr=1e-4, max_steps=20, batch_size=8)


@dataclass
class RdpoSettings:
    task: str = "safety"
    template_file: str | None = None
    prompts: str | None = None  # default: the task's shipped prompts
    num_prompts: int | None = None
    teacher: str = DEFAULT_MODEL
    student: str | None = None  # None: the teacher distils into itself
    method: str = "rdpo"
    scorer: str = "judge"
    judge_model: str | None = None
    judge_mode: str = "pairwise"  # probability judge (rdpo_fast.evaluation) or the strict [[N]] parser
    judge_max_retries: int = 2
    judge_max_new_tokens: int = 96
    judge_prefill: str = ""
    rm_model: str | None = None
    rm_label_index: int | None = None
    scorer_policy: str | None = None  # implicit scorer: the DPO model (None: trained in scorer/train)
    scorer_reference: str | None = None  # its reference (None: the teacher)
    scorer_pairs: int = 64  # offline pairs of the scorer/train stage
    offline: str | None = None  # default: the shipped training pairs
    score_range: tuple[int, int] | None = None  # None: the task's
    score_temperature: float | None = None  # None: the task's (judge), else 1
    score_batch_size: int = 8
    drop_truncated: bool = False
    seed: int = 0
    generation: GenerationSettings = field(default_factory=lambda: GenerationSettings(max_new_tokens=256))
    train: TrainSettings = field(default_factory=TrainSettings)
    scorer_train: TrainSettings = field(default_factory=_scorer_train)

    def loss_type(self) -> str:
        return METHODS[self.method][0]

    def needs_scores(self) -> bool:
        return METHODS[self.method][1]

    def validate(self) -> RdpoSettings:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; valid: {', '.join(METHODS)}")
        loss = self.loss_type()
        if loss not in LOSS_TYPES:
            raise ValueError(f"method {self.method!r} trains with loss_type {loss!r}, which this build of rdpo_fast "
                             f"does not have (rdpo_fast.losses.head.LOSS_TYPES: {', '.join(LOSS_TYPES)})")
        if self.scorer not in SCORERS:
            raise ValueError(f"unknown scorer {self.scorer!r}; valid: {', '.join(SCORERS)}")
        if self.judge_mode not in JUDGE_MODES:
            raise ValueError(f"unknown judge mode {self.judge_mode!r}; valid: {', '.join(JUDGE_MODES)}")
        if self.needs_scores():
            if self.scorer == "judge" and not self.judge_model:
                raise ValueError("--scorer judge needs --judge-model")
            if self.scorer == "rm" and not self.rm_model:
                raise ValueError("--scorer rm needs --rm-model DIR")
        if self.score_temperature is not None and self.score_temperature <= 0:
            raise ValueError(f"score temperature must be > 0, got {self.score_temperature}")
        if self.num_prompts is not None and self.num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {self.num_prompts}")
        if self.scorer_pairs < 1:
            raise ValueError(f"scorer_pairs must be >= 1, got {self.scorer_pairs}")
        self.generation.validate()
        dataclasses.replace(self.train, loss_type=loss).check()
        self.scorer_train.check()
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["generation"].pop("progress")
        d["train"], d["scorer_train"] = self.train.to_dict(), self.scorer_train.to_dict()
        return d


class RdpoChain:
    name = "rdpo"

    def __init__(self, s: RdpoSettings, output_dir: str, *, overwrite: bool = False,
                 final_eval: FinalEvalSettings | None = None, log=print):
        self.s, self.output_dir, self.overwrite, self.log = s, output_dir, overwrite, log
        self.final_eval_settings = final_eval
        self.models = Models()

    def prepare(self):
        s = self.s
        self.task = get_template(s.task, s.template_file)
        self.prompts = load_prompts(self.task, s.prompts, s.num_prompts)
        for p in (s.teacher, s.student, s.judge_model, s.scorer_policy, s.scorer_reference):
            if p:
                modeling.resolve(p)
        self.offline = []
        if s.needs_scores() and s.scorer == "implicit" and not s.scorer_policy:
            self.offline = offline_records(s.offline or default_path("train"))[: s.scorer_pairs]
        self.scale = self._scale()
        self.final_eval = FinalEval(self.final_eval_settings, default_prompts=default_task_prompts(s.task),
                                    system=DEFAULT_SYSTEM,
                                    log=self.log)
        uses_judge = s.needs_scores() and s.scorer == "judge"
        self.final_eval.prepare(training_judge=s.judge_model if uses_judge else None)
        if (s.needs_scores() and s.scorer == "judge" and s.judge_mode == "pointwise"
                and self.scale["target"] is not None):
            raise ValueError(f"task {s.task!r} scores the judge's rating by its closeness to {self.scale['target']} "
                             "(judge_scales.py), which --judge-mode pointwise does not do; use pairwise or generate")

    def _scale(self) -> dict:
        """The judge's range, soft-label temperature and target: flags, else the task's, else defaults."""
        s, t = self.s, self.task
        if s.scorer != "judge":
            return {"range": None, "temperature": s.score_temperature or 1.0, "target": None}
        from_task = s.score_range is None and t.score_range is not None
        lo, hi = s.score_range or t.score_range or (1, 10)
        target = t.score_target if from_task else None
        temp = s.score_temperature or (t.score_temperature if from_task else None) or scale_temperature(lo, hi, target)
        return {"range": (lo, hi), "temperature": temp, "target": target}

    def run(self) -> dict:
        s = self.s
        s.validate()
        self.prepare()
        with StageDir(self.output_dir, s.to_dict(), overwrite=self.overwrite, log=self.log) as run:
            self.run_dir = run
            return self.run_stages(run)

    def run_stages(self, run: StageDir) -> dict:
        """Every stage, in the run directory this process holds."""
        s = self.s
        teacher = materialise(run, self.models, "teacher", s.teacher)
        student = teacher if not s.student or s.student == s.teacher else materialise(run, self.models, "student",
                                                                                        s.student)
        stats = {}

        def synth_stage():
            model, tok = self.models.model(teacher), self.models.tokenizer(teacher)
            recs, st = synthesize(model, tok, self.task, self.prompts,
                                  SynthSettings(drop_truncated=s.drop_truncated, generation=s.generation))
            path = run.file("synth.jsonl")
            write_jsonl(path, recs)
            return st, [path]

        stats["synth"] = run.run("synth", synth_stage)
        records = read_stage_records(run.file("synth.jsonl"))
        if not records:
            raise ValueError("the teacher made no usable pair (see the synth stage's counts); raise --max-new-tokens "
                             "or --num-prompts")
        data = run.file("synth.jsonl")
        if s.needs_scores():
            stats["score"] = self.score(run, teacher, records)
            data = run.file("scored.jsonl")
        self.models.keep()

        def select_stage():
            recs = read_stage_records(data)
            kept, st = distill_self_critique(recs) if s.method == "dsc" else sft_records(recs)
            path = run.file("train.jsonl")
            write_jsonl(path, without_labels(kept) if s.loss_type() == "sft" else kept)
            return dict(st, method=s.method), [path]

        stats["select"] = run.run("select", select_stage)
        if stats["select"]["kept"] == 0:
            raise ValueError(f"no pair left to train on after selection ({stats['select']})")
        train = dataclasses.replace(s.train, loss_type=s.loss_type())
        t = train_stage(run, "student/train", train, model=student, data=run.file("train.jsonl"),
                        n_pairs=stats["select"]["kept"], log=self.log)
        stats["train"] = t
        return self.finish(student, os.path.join(run.path, "student", "train", "final"), stats)

    def score(self, run: StageDir, teacher: str, records: list[dict]) -> dict:
        from .scorers import ImplicitScorer, JudgeScorer, RewardModelScorer, score_records

        s = self.s
        policy, reference = s.scorer_policy, s.scorer_reference or teacher
        if s.scorer == "implicit" and not policy:
            def data():
                path = run.file("scorer", "train.jsonl")
                write_jsonl(path, self.offline)
                return {"pairs": len(self.offline)}, [path]

            run.run("scorer/data", data)
            self.models.keep()
            train_stage(run, "scorer/train", s.scorer_train, model=reference, data=run.file("scorer", "train.jsonl"),
                        n_pairs=len(self.offline), log=self.log)
            policy = os.path.join(run.path, "scorer", "train", "final")

        def go():
            probability = s.scorer == "judge" and s.judge_mode != "generate"
            if probability:
                (scored, st), failed = self._probability_judge(records), []
            elif s.scorer == "judge":
                lo, hi = self.scale["range"]
                settings = JudgeSettings(rubric=self.task.judge_rubric or DEFAULT_RUBRIC, lo=lo, hi=hi,
                                         max_retries=s.judge_max_retries, max_new_tokens=s.judge_max_new_tokens,
                                         batch_size=s.score_batch_size, seed=s.seed, prefill=s.judge_prefill,
                                         progress=s.generation.progress).validate()
                scorer = JudgeScorer(s.judge_model, settings)
                if self.scale["target"] is not None:
                    scorer = TargetScorer(scorer, self.scale["target"])
            elif s.scorer == "rm":
                scorer = RewardModelScorer(s.rm_model, batch_size=s.score_batch_size, label_index=s.rm_label_index)
            else:
                m = self.models
                scorer = ImplicitScorer(policy, reference, batch_size=s.score_batch_size,
                                        models=(m.model(policy), m.model(reference), m.tokenizer(reference)))
            if not probability:
                scored, failed, st = score_records(records, scorer, temperature=self.scale["temperature"])
            path, failed_path = run.file("scored.jsonl"), run.file("scored.failed.jsonl")
            write_jsonl(path, scored)
            write_jsonl(failed_path, failed)
            if failed:
                self.log(f"[score] {len(failed)} pair(s) could not be scored (none guessed); reasons in {failed_path}")
            if not scored:
                raise ValueError(f"no pair could be scored; see {failed_path}")
            pairwise = probability and s.judge_mode == "pairwise"  # one preference per pair, no scale
            return dict(st, judge_mode=s.judge_mode if s.scorer == "judge" else None,
                        score_range=None if pairwise else self.scale["range"], score_target=self.scale["target"],
                        scorer_policy=policy if s.scorer == "implicit" else None), [path, failed_path]

        return run.run("score", go)

    def _probability_judge(self, records: list[dict]):
        """Soft labels from the probability judge (rdpo_fast.evaluation): pairwise P(revision better) with
        the task's pairwise rubric, or pointwise expected scores on the task's scale."""
        from rdpo_fast.judges.probability import ProbabilityJudge

        from . import soft_labels as scoring

        s = self.s
        judge = ProbabilityJudge.load(s.judge_model, batch_size=s.score_batch_size, progress=s.generation.progress)
        if s.judge_mode == "pairwise":
            from rdpo_fast.judges.rubrics import PairwiseRubric

            # The task template's criteria (the tasks as this package defines them), else the
            # evaluation's rubric of that task name.
            rubric = (PairwiseRubric(s.task, self.task.pairwise_criteria) if self.task.pairwise_criteria
                      else scoring.pairwise_from_options(None, s.task, s.template_file))
            return scoring.pairwise_soft_labels(records, judge, rubric)
        lo, hi = self.scale["range"]
        rubric = scoring.custom_pointwise(self.task.judge_rubric or DEFAULT_RUBRIC, lo, hi, name=s.task)
        return scoring.pointwise_soft_labels(records, judge, rubric, self.scale["temperature"])

    def finish(self, start: str, final: str, stats: dict) -> dict:
        """The one place a run ends: the external evaluation of the final student against the starting
        one, then summary.json with every stage's numbers, that evaluation, the two students."""
        run = self.run_dir
        self.models.keep()
        final_eval = self.final_eval.run(run, self.models, start, final)
        summary = {"pipeline": self.name, "method": self.s.method, "task": self.s.task, "start_policy": start,
                   "final_policy": final, **stats, "final_eval": final_eval, "stage_seconds": run.seconds()}
        write_json(os.path.join(run.path, "summary.json"), summary)
        self.log(summary_table(summary))
        self.log(final_eval_table(final_eval))
        self.log(f"final policy: {final}")
        return summary


def run_rdpo(s: RdpoSettings, output_dir: str, *, overwrite: bool = False,
             final_eval: FinalEvalSettings | None = None, log=print) -> dict:
    return RdpoChain(s, output_dir, overwrite=overwrite, final_eval=final_eval, log=log).run()


def summary_table(summary: dict) -> str:
    syn, sc, sel, tr = (summary.get(k) or {} for k in ("synth", "score", "select", "train"))
    secs = summary.get("stage_seconds", {})
    rows = [["method", f"{summary['method']}: {METHODS[summary['method']][2]}"],
            ["task", summary["task"]], ["prompts", syn.get("prompts")], ["pairs synthesised", syn.get("pairs")]]
    if sc:
        rows.append(["pairs scored / failed", f"{sc.get('scored')} / {sc.get('failed')}"])
        if "mean_chosen_score" in sc:
            rows.append(["mean score rejected -> chosen", f"{sc['mean_rejected_score']:.3g} -> "
                                                          f"{sc['mean_chosen_score']:.3g}"])
        rows.append(["mean soft label", sc.get("mean_soft_label")])
    rows += [["pairs trained on", sel.get("kept")], ["train steps", tr.get("global_step")],
             ["seconds (synth / score / train)",
              f"{secs.get('synth', 0):.0f} / {secs.get('score', 0) + secs.get('scorer/train', 0):.0f} / "
              f"{secs.get('student/train', 0):.0f}"]]
    return table(["rdpo", "value"], rows)
