"""The pipelines' subcommands of `rdpo-fast`: synth, score, rdpo, dice, crosslingual.

SUBCOMMANDS lists them (name, help, add arguments, run); rdpo_fast.cli registers them beside train and
plot. This module does not import rdpo_fast.cli (the dependency runs one way: the top-level CLI
imports the pipelines); `main(argv)` parses the pipeline subcommands alone (tests,
`python -m rdpo_fast.pipelines.cli`). Bad input raises ValueError subclasses with a clear message;
both entry points print it as one line through the command line's one error path (rdpo_fast/errors.py).
The rdpo, dice and crosslingual commands take `--preset paper` or `--preset cpu-demo` (presets.py);
explicit flags override the preset.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from rdpo_fast.errors import run_command
from rdpo_fast.lm.generation import GenerationSettings
from rdpo_fast.models.sources import DEFAULT_MODEL

from . import presets

if TYPE_CHECKING:
    from .rounds import TrainSettings


# ---------------------------------------------------------------------------------------- shared flags
def _generation_flags(p, d: GenerationSettings, *, what: str = "generation"):
    g = p.add_argument_group(what)
    g.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens,
                   help=f"tokens per answer (default {d.max_new_tokens})")
    g.add_argument("--temperature", type=float, default=d.temperature,
                   help=f"sampling temperature, 0 = greedy (default {d.temperature})")
    g.add_argument("--top-p", type=float, default=d.top_p, help=f"nucleus sampling (default {d.top_p})")
    g.add_argument("--gen-batch-size", type=int, default=d.batch_size,
                   help=f"sequences per generate call (default {d.batch_size})")
    g.add_argument("--seed", type=int, default=0, help="seed of sampling, replay draws and training (default 0)")


def _generation(args) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              batch_size=args.gen_batch_size, seed=args.seed, progress=args.progress).validate()


def _train_flags(p: argparse.ArgumentParser, d: TrainSettings, *,
                 title: str = "training of each round (rdpo_fast.training.loop; --train-config sets any other option)",
                 loss: bool = True) -> None:
    """The TrainSettings options as flags, generated from TrainConfig as `rdpo-fast train`'s are, with the
    defaults of `d` (the command's TrainSettings)."""
    from rdpo_fast.training.flags import add_config_flags

    from .rounds import TRAIN_FLAGS

    t = p.add_argument_group(title)
    add_config_flags(t, [n for n in TRAIN_FLAGS if loss or n != "loss_type"], defaults=d)
    t.add_argument("--train-config", default=None, help="JSON/YAML file of further rdpo-fast train options")


def _train(args: argparse.Namespace) -> TrainSettings:
    from .rounds import TRAIN_FLAGS, TrainSettings

    v = vars(args)
    return TrainSettings(**{k: v[k] for k in TRAIN_FLAGS if k in v}, seed=args.seed, progress=args.progress,
                         config_file=v.get("train_config"))


def _common(p):
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _final_eval_flags(p, what: str):
    from .final_eval import FinalEvalSettings

    d = FinalEvalSettings()
    e = p.add_argument_group("final evaluation (the final model vs the starting one, by an external judge on "
                             "held-out prompts; final_eval.py)")
    e.add_argument("--judge", default=d.judge,
                   help=f"judge model: local HF directory, .gguf or {DEFAULT_MODEL!r} (default {d.judge}); a larger "
                        "local instruct model judges far better than the 135M default")
    e.add_argument("--no-final-eval", dest="final_eval", action="store_false", help="end without the evaluation")
    e.add_argument("--final-eval-prompts", default=None,
                   help=f"task names of the shipped held-out sets (safety, roleplay, sycophancy, general, "
                        f"multilingual) or a prompt file (JSONL, or AlpacaEval JSON) (default: {what})")
    e.add_argument("--final-eval-num-prompts", type=int, default=d.num_prompts,
                   help="the first N prompts of each set, per language for multilingual (default: all)")
    e.add_argument("--final-eval-max-new-tokens", type=int, default=d.max_new_tokens,
                   help=f"tokens of each model's greedy answer (default {d.max_new_tokens})")
    e.add_argument("--final-eval-batch-size", type=int, default=d.batch_size,
                   help=f"answers per generate call (default {d.batch_size})")
    e.add_argument("--judge-batch-size", type=int, default=d.judge_batch_size,
                   help=f"judge prompts per forward (default {d.judge_batch_size})")


def _final_eval(args):
    from .final_eval import FinalEvalSettings

    return FinalEvalSettings(judge=args.judge, enabled=args.final_eval, prompts=args.final_eval_prompts,
                             num_prompts=args.final_eval_num_prompts, max_new_tokens=args.final_eval_max_new_tokens,
                             batch_size=args.final_eval_batch_size, judge_batch_size=args.judge_batch_size)


def _system_flag(p, default):
    shown = "none" if default is None else repr(default)
    p.add_argument("--system", default=default,
                   help=f"system message of the prompts ('' = none; default {shown})")


def _rounds_flags(p, d, *, what: str):
    from .driver import GENERATORS, PROMPT_POOLS, REWARD_PAIRS
    from .pairing import ALPHA_RULES

    p.add_argument("--policy", default=d.policy,
                   help=f"{what} (local HF directory, .gguf file or {DEFAULT_MODEL!r}; default {d.policy})")
    p.add_argument("--reference", default=None,
                   help="the policy's DPO reference; without it round 0 first trains a DPO model from the policy "
                        "on offline pairs (the policy would otherwise be its own reference: every reward 0)")
    p.add_argument("--output-dir", required=True, help="run directory; a rerun skips finished stages")
    p.add_argument("--overwrite", action="store_true", help="start the run directory over")
    p.add_argument("--rounds", type=int, default=d.rounds, help=f"rounds (default {d.rounds})")
    p.add_argument("-k", "--k", type=int, default=d.k, help=f"samples per prompt, >= 2 (default {d.k})")
    p.add_argument("--prompts-per-round", type=int, default=d.prompts_per_round,
                   help=f"prompts sampled per round, 0 = the whole pool (default {d.prompts_per_round})")
    p.add_argument("--prompt-pool", choices=PROMPT_POOLS, default=d.prompt_pool,
                   help="fresh: round r takes the r-th slice of the pool; same: the same prompts every round "
                        f"(upstream) (default {d.prompt_pool})")
    p.add_argument("--min-valid", type=int, default=d.min_valid,
                   help="valid samples a prompt needs before it may form a pair (upstream DICE: 8 of 16; "
                        "default K/2, at least 2)")
    p.add_argument("--alpha-rule", choices=ALPHA_RULES, default=d.alpha_rule,
                   help="length-debiasing alpha: argmin = the grid point with mean chosen-rejected length closest "
                        "to 0; early-stop = DICE's walk from the grid's start, stopping at the first alpha that "
                        f"makes it worse (default {d.alpha_rule})")
    p.add_argument("--alpha-grid", type=float, nargs=3, default=[d.alpha_start, d.alpha_stop, d.alpha_step],
                   metavar=("START", "STOP", "STEP"),
                   help=f"alpha grid, STOP included (default {d.alpha_start:g} {d.alpha_stop:g} {d.alpha_step:g})")
    p.add_argument("--reward-pair", choices=tuple(REWARD_PAIRS), default=d.reward_pair,
                   help="implicit reward of round r: " + "; ".join(f"{k} = {v}" for k, v in REWARD_PAIRS.items())
                        + f" (default {d.reward_pair})")
    p.add_argument("--offline", default=None, help="offline preference JSONL (default: the shipped training pairs)")
    p.add_argument("--init-pairs", type=int, default=d.init_pairs,
                   help=f"offline pairs of the round-0 DPO (default {d.init_pairs})")
    _system_flag(p, d.system)
    p.add_argument("--keep-truncated", action=argparse.BooleanOptionalAction, default=d.keep_truncated,
                   help=f"keep samples cut off by --max-new-tokens as candidates (default {d.keep_truncated})")
    p.add_argument("--score-batch-size", type=int, default=d.score_batch_size,
                   help=f"sequences per implicit-reward forward (default {d.score_batch_size})")
    p.add_argument("--score-max-tokens", type=int, default=d.score_max_tokens,
                   help="token budget of one implicit-reward forward, rows x longest row (default: none)")
    p.add_argument("--generator", choices=GENERATORS, default=d.generator,
                   help="sampler of the K candidates: transformers' generate, or vLLM (GPU; pip install "
                        f"'rdpo_fast[vllm]') (default {d.generator})")
    p.add_argument("--vllm-gpu-memory", type=float, default=d.vllm.gpu_memory_utilization,
                   help=f"vLLM gpu_memory_utilization; training in the same process needs the rest "
                        f"(default {d.vllm.gpu_memory_utilization})")


def _round_settings(args) -> dict:
    from rdpo_fast.lm.vllm import VllmSettings

    start, stop, step = args.alpha_grid
    return dict(policy=args.policy, reference=args.reference, offline=args.offline, init_pairs=args.init_pairs,
                rounds=args.rounds, k=args.k, prompts_per_round=args.prompts_per_round, prompt_pool=args.prompt_pool,
                min_valid=args.min_valid, alpha_rule=args.alpha_rule, alpha_start=start, alpha_stop=stop,
                alpha_step=step, reward_pair=args.reward_pair, system=args.system or None,
                keep_truncated=args.keep_truncated, score_batch_size=args.score_batch_size,
                score_max_tokens=args.score_max_tokens, generator=args.generator,
                vllm=VllmSettings(gpu_memory_utilization=args.vllm_gpu_memory), seed=args.seed,
                generation=_generation(args), train=_train(args))


# ---------------------------------------------------------------------------------------- synth
def add_synth_arguments(p):
    p.add_argument("--task", default="safety",
                   help="task template: safety, roleplay, sycophancy, or one of --template-file")
    p.add_argument("--template-file", default=None, help="YAML/JSON file of task templates (same format as the shipped "
                                                         "rdpo_fast/pipelines/prompt_files/tasks.yaml)")
    p.add_argument("--list-tasks", action="store_true", help="print the task templates and exit")
    p.add_argument("--prompts", default=None, help="prompt file: JSONL with 'prompt', or .txt one per line "
                                                   "(default: the task's shipped prompts)")
    p.add_argument("--num-prompts", type=int, default=None, help="use the first N prompts")
    p.add_argument("--teacher", default=DEFAULT_MODEL, help=f"teacher model (default {DEFAULT_MODEL})")
    p.add_argument("--output", "-o", default=None, help="output JSONL (required unless --list-tasks)")
    p.add_argument("--drop-truncated", action="store_true", help="drop pairs whose answer or revision was cut off")
    _generation_flags(p, GenerationSettings(max_new_tokens=96))
    _common(p)


def run_synth_cmd(args) -> int:
    from rdpo_fast.data.templates import get_template, load_templates

    from .synth import SynthSettings, run_synth

    if args.list_tasks:
        for name, t in sorted(load_templates(args.template_file).items()):
            print(f"{name}: {t.description}\n  critique: {t.critique()}\n  revision: {t.revision()}")
        return 0
    if not args.output:
        raise ValueError("give --output FILE for the synthesised pairs")
    task = get_template(args.task, args.template_file)
    run_synth(teacher=args.teacher, task=task, output=args.output, prompts_file=args.prompts,
              settings=SynthSettings(num_prompts=args.num_prompts, drop_truncated=args.drop_truncated,
                                     generation=_generation(args)))
    return 0


# ---------------------------------------------------------------------------------------- score
def add_score_arguments(p):
    from rdpo_fast.judges.generative import JudgeSettings

    d = JudgeSettings()
    p.add_argument("--input", "-i", required=True, help="preference JSONL (prompt, chosen, rejected)")
    p.add_argument("--output", "-o", required=True, help="scored JSONL; pairs that could not be scored go to "
                                                         "OUTPUT with .failed.jsonl, with the reasons")
    p.add_argument("--scorer", choices=("judge", "rm", "implicit"), required=True,
                   help="judge: an LLM judge with a rubric; rm: a sequence-classification reward model; "
                        "implicit: log pi - log pi_ref of a DPO model and its reference")
    p.add_argument("--score-temperature", type=float, default=None,
                   help="T of soft_label = sigmoid((chosen_score - rejected_score) / T) (default: the task "
                        "template's, judge_scales.py; else 1)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward or generate call (default 8)")
    p.add_argument("--seed", type=int, default=0)
    j = p.add_argument_group("judge")
    j.add_argument("--judge-model", default=None, help=f"judge model (local HF directory, .gguf or {DEFAULT_MODEL!r})")
    j.add_argument("--judge-mode", choices=("pairwise", "pointwise", "generate"), default="pairwise",
                   help="pairwise (default): soft label = the judge's P(chosen better) from its label probabilities "
                        "in both orders; pointwise: expected rubric scores from its score-token probabilities; "
                        "generate: the judge writes a marked score [[N]], parsed strictly (rdpo_fast.evaluation)")
    j.add_argument("--task", default=None, help="take the rubric of this task template (default: the records' "
                                                "'task' field when they share one, else a generic rubric)")
    j.add_argument("--template-file", default=None, help="extra task templates")
    j.add_argument("--rubric", default=None, help="rubric text (overrides --task)")
    j.add_argument("--score-range", type=int, nargs=2, default=None, metavar=("LO", "HI"),
                   help=f"integer score range (default: the task template's, else {d.lo} {d.hi})")
    j.add_argument("--max-retries", type=int, default=d.max_retries,
                   help=f"retries of an unparsable answer (default {d.max_retries})")
    j.add_argument("--judge-max-new-tokens", type=int, default=d.max_new_tokens, help=f"default {d.max_new_tokens}")
    j.add_argument("--judge-prefill", default="", help="text the judge's answer is forced to start with, e.g. "
                                                       "'Rating: [[' (helps small judges; parsed with the answer)")
    r = p.add_argument_group("reward model")
    r.add_argument("--rm-model", default=None, help="sequence-classification reward model directory")
    r.add_argument("--rm-label-index", type=int, default=None, help="which logit is the reward when there are several")
    r.add_argument("--rm-max-length", type=int, default=1024)
    i = p.add_argument_group("implicit reward")
    i.add_argument("--policy", default=None, help="the DPO model")
    i.add_argument("--reference", default=None, help="its reference model")
    _common(p)


def _pick_rubric(args, records):
    from rdpo_fast.data.templates import get_template
    from rdpo_fast.judges.generative import DEFAULT_RUBRIC

    if args.rubric:
        return args.rubric, "--rubric"
    name = args.task
    if name is None:
        tasks = {r.get("task") for r in records}
        if len(tasks) == 1 and None not in tasks:
            name = tasks.pop()
            try:
                get_template(name, args.template_file)
            except ValueError:
                return DEFAULT_RUBRIC, f"generic (records' task {name!r} has no template)"
    if name is None:
        return DEFAULT_RUBRIC, "generic"
    t = get_template(name, args.template_file)
    if not t.judge_rubric:
        raise ValueError(f"task template {name!r} has no judge_rubric; give --rubric")
    return t.judge_rubric, f"task {name!r}"


def _task_scale(args, records) -> dict:
    """The judge scale of the task the rubric came from (empty for --rubric or the generic rubric)."""
    from rdpo_fast.data.templates import get_template

    if args.rubric:
        return {}
    name = args.task
    if name is None:
        tasks = {r.get("task") for r in records}
        name = tasks.pop() if len(tasks) == 1 else None
    if name is None:
        return {}
    try:
        t = get_template(name, args.template_file)
    except ValueError:
        return {}
    return {"range": t.score_range, "temperature": t.score_temperature, "target": t.score_target}


def run_score_cmd(args) -> int:
    from rdpo_fast import run_lock
    from rdpo_fast.data.records import read_jsonl
    from rdpo_fast.training.run_dir import check_file_writable

    if args.score_temperature is not None and args.score_temperature <= 0:
        raise ValueError(f"--score-temperature must be > 0, got {args.score_temperature}")
    lines = read_jsonl(args.input)  # validated before any model loads
    check_file_writable(args.output)
    with run_lock.lock_file(args.output):  # one writer of the output (and its .failed.jsonl) at a time
        return _score(args, lines)


def _score(args, lines) -> int:
    from rdpo_fast.io import write_jsonl

    from .scorers import ImplicitScorer, JudgeScorer, RewardModelScorer, score_records, summary_table

    records = [r for _, r in lines]
    target = None
    if args.scorer == "judge":
        # The judge's scale: --score-range, else the task template's (its range, soft-label temperature
        # and target, judge_scales.py), else the judge's default.
        from rdpo_fast.judges.generative import JudgeSettings

        scale = _task_scale(args, records)
        if args.score_range is None:
            args.score_range = scale.get("range") or (JudgeSettings().lo, JudgeSettings().hi)
            target = scale.get("target")
            if args.score_temperature is None:
                args.score_temperature = scale.get("temperature")
        if args.score_temperature is None:
            args.score_temperature = 1.0
    if args.scorer == "judge" and args.judge_mode != "generate":
        if not args.judge_model:
            raise ValueError("--scorer judge needs --judge-model")
        if target is not None and args.judge_mode == "pointwise":
            raise ValueError(f"this task scores the judge's rating by its closeness to {target} (judge_scales.py), "
                             "which --judge-mode pointwise does not do; use --judge-mode generate or pairwise")
        return _score_with_probability_judge(args, lines, records)
    if args.scorer == "judge":
        from rdpo_fast.judges.generative import JudgeSettings

        if not args.judge_model:
            raise ValueError("--scorer judge needs --judge-model")
        rubric, origin = _pick_rubric(args, records)
        lo_hi = args.score_range
        settings = JudgeSettings(rubric=rubric, lo=lo_hi[0], hi=lo_hi[1],
                                 max_retries=args.max_retries, max_new_tokens=args.judge_max_new_tokens,
                                 batch_size=args.batch_size, seed=args.seed, progress=args.progress,
                                 prefill=args.judge_prefill).validate()
        print(f"judge rubric: {origin}; scale {lo_hi[0]}..{lo_hi[1]}"
              + (f", scored by closeness to {target}" if target is not None else ""))
        scorer = JudgeScorer(args.judge_model, settings)
        if target is not None:
            from .judge_scales import TargetScorer

            scorer = TargetScorer(scorer, target)
    elif args.scorer == "rm":
        if not args.rm_model:
            raise ValueError("--scorer rm needs --rm-model DIR")
        scorer = RewardModelScorer(args.rm_model, batch_size=args.batch_size, max_length=args.rm_max_length,
                                   label_index=args.rm_label_index)
    else:
        if not (args.policy and args.reference):
            raise ValueError("--scorer implicit needs --policy (the DPO model) and --reference")
        scorer = ImplicitScorer(args.policy, args.reference, batch_size=args.batch_size)
    if args.score_temperature is None:
        args.score_temperature = 1.0
    scored, failed, stats = score_records(records, scorer, temperature=args.score_temperature,
                                          sources=[f"{args.input}:{ln}" for ln, _ in lines])
    write_jsonl(args.output, scored)
    failed_path = failed_file(args.output)
    if failed:
        write_jsonl(failed_path, failed)
    elif os.path.exists(failed_path):
        os.remove(failed_path)  # a stale report of an earlier run would mislead
    print(summary_table(stats))
    if failed:
        print(f"{len(failed)} pair(s) could not be scored (no score was guessed); reasons in {failed_path}")
    if not scored:
        raise ValueError(f"no pair of {args.input} could be scored; see {failed_path}")
    print(f"wrote {len(scored)} scored pairs to {args.output}; train with: rdpo-fast train --loss-type rdpo "
          f"--data {args.output}")
    return 0


def _score_with_probability_judge(args, lines, records) -> int:
    """--judge-mode pairwise/pointwise: every pair gets a verdict from the judge's label probabilities."""
    from rdpo_fast.io import write_jsonl
    from rdpo_fast.judges.probability import ProbabilityJudge
    from rdpo_fast.judges.rubrics import scale

    from . import soft_labels as scoring

    scale(*args.score_range)  # bad options fail before the judge loads
    if args.judge_mode == "pairwise":
        rubric = scoring.pairwise_from_options(args.rubric, args.task, args.template_file)  # None: per record
    else:
        text, origin = _pick_rubric(args, records)
        print(f"judge rubric: {origin}")
        rubric = scoring.custom_pointwise(text, *args.score_range, name=args.task or "custom")
    judge = ProbabilityJudge.load(args.judge_model, batch_size=args.batch_size, progress=args.progress)
    if args.judge_mode == "pairwise":
        scored, stats = scoring.pairwise_soft_labels(records, judge, rubric)
    else:
        scored, stats = scoring.pointwise_soft_labels(records, judge, rubric, args.score_temperature)
    write_jsonl(args.output, scored)
    if os.path.exists(failed_file(args.output)):
        os.remove(failed_file(args.output))  # every pair has a verdict; an earlier run's report would mislead
    print(scoring.summary_table(stats))
    print(f"wrote {len(scored)} scored pairs to {args.output}; train with: rdpo-fast train --loss-type rdpo "
          f"--data {args.output}")
    return 0


def failed_file(output: str) -> str:
    stem = output[: -len(".jsonl")] if output.endswith(".jsonl") else output
    return stem + ".failed.jsonl"


# ---------------------------------------------------------------------------------------- rdpo
# The implicit scorer's DPO takes the student's training settings but these, as --scorer-* flags.
SCORER_TRAIN_FLAGS = ("max_steps", "lr", "batch_size")


def add_rdpo_arguments(p):
    from rdpo_fast.training.flags import add_config_flags

    from .rdpo_chain import JUDGE_MODES, METHODS, SCORERS, RdpoSettings

    d = RdpoSettings()
    p.add_argument("--output-dir", required=True, help="run directory; a rerun skips finished stages")
    p.add_argument("--overwrite", action="store_true", help="start the run directory over")
    p.add_argument("--task", default=d.task, help=f"task template: safety, roleplay, sycophancy, or one of "
                                                  f"--template-file (default {d.task})")
    p.add_argument("--template-file", default=None, help="YAML/JSON file of task templates")
    p.add_argument("--prompts", default=None, help="prompt file (default: the task's shipped prompts)")
    p.add_argument("--num-prompts", type=int, default=d.num_prompts, help="use the first N prompts")
    p.add_argument("--teacher", default=d.teacher, help=f"teacher model (default {d.teacher})")
    p.add_argument("--student", default=None, help="student model (default: the teacher)")
    p.add_argument("--method", choices=tuple(METHODS), default=d.method,
                   help="; ".join(f"{k}: {v[2]}" for k, v in METHODS.items()) + f" (default {d.method})")
    p.add_argument("--drop-truncated", action="store_true", help="drop pairs whose answer or revision was cut off")
    sc = p.add_argument_group("scoring")
    sc.add_argument("--scorer", choices=SCORERS, default=d.scorer,
                    help=f"judge: an LLM judge with the task's rubric and scale; rm: a sequence-classification "
                         f"reward model; implicit: log pi - log pi_ref of a DPO model (default {d.scorer})")
    sc.add_argument("--judge-model", default=None, help=f"judge model (local HF directory, .gguf or {DEFAULT_MODEL!r})")
    sc.add_argument("--judge-mode", choices=JUDGE_MODES, default=d.judge_mode,
                    help="pairwise: soft label = the probability judge's P(revision better); pointwise: its expected "
                         "scores on the task's scale; generate: the judge writes [[N]], parsed strictly "
                         f"(default {d.judge_mode})")
    sc.add_argument("--judge-max-retries", type=int, default=d.judge_max_retries,
                    help=f"retries of an unparsable judge answer (default {d.judge_max_retries})")
    sc.add_argument("--judge-max-new-tokens", type=int, default=d.judge_max_new_tokens)
    sc.add_argument("--judge-prefill", default="", help="text the judge's answer is forced to start with")
    sc.add_argument("--rm-model", default=None, help="sequence-classification reward model directory")
    sc.add_argument("--rm-label-index", type=int, default=None)
    sc.add_argument("--scorer-policy", default=None, help="implicit scorer: the DPO model (default: trained by DPO "
                                                          "from --scorer-reference on --offline pairs)")
    sc.add_argument("--scorer-reference", default=None, help="implicit scorer: its reference (default: the teacher)")
    sc.add_argument("--scorer-pairs", type=int, default=d.scorer_pairs,
                    help=f"offline pairs of the implicit scorer's DPO (default {d.scorer_pairs})")
    add_config_flags(sc, SCORER_TRAIN_FLAGS, defaults=d.scorer_train, prefix="scorer")
    sc.add_argument("--offline", default=None, help="offline pairs of the scorer's DPO (default: the shipped ones)")
    sc.add_argument("--score-range", type=int, nargs=2, default=None, metavar=("LO", "HI"),
                    help="judge's integer scale (default: the task's)")
    sc.add_argument("--score-temperature", type=float, default=None,
                    help="soft-label T (default: the task's, judge_scales.py; 1 for rm/implicit)")
    sc.add_argument("--score-batch-size", type=int, default=d.score_batch_size)
    _generation_flags(p, d.generation, what="teacher generation")
    _train_flags(p, d.train, title="student training (rdpo_fast.training.loop; the loss follows --method)", loss=False)
    _final_eval_flags(p, "the task's held-out set (safety: held-out jailbreak wrappers), else general")
    _common(p)
    presets.install(p, "rdpo")


def rdpo_settings(args):
    from .rdpo_chain import RdpoSettings

    scorer_train = _train(args)
    scorer_train.loss_type, scorer_train.nll_alpha = "sigmoid", 0.0
    for name in SCORER_TRAIN_FLAGS:
        setattr(scorer_train, name, getattr(args, "scorer_" + name))
    train = _train(args)  # its loss follows the method (RdpoSettings.loss_type)
    return RdpoSettings(task=args.task, template_file=args.template_file, prompts=args.prompts,
                        num_prompts=args.num_prompts, teacher=args.teacher, student=args.student, method=args.method,
                        scorer=args.scorer, judge_model=args.judge_model, judge_mode=args.judge_mode,
                        judge_max_retries=args.judge_max_retries,
                        judge_max_new_tokens=args.judge_max_new_tokens, judge_prefill=args.judge_prefill,
                        rm_model=args.rm_model, rm_label_index=args.rm_label_index, scorer_policy=args.scorer_policy,
                        scorer_reference=args.scorer_reference, scorer_pairs=args.scorer_pairs, offline=args.offline,
                        score_range=tuple(args.score_range) if args.score_range else None,
                        score_temperature=args.score_temperature, score_batch_size=args.score_batch_size,
                        drop_truncated=args.drop_truncated, seed=args.seed, generation=_generation(args),
                        train=train, scorer_train=scorer_train)


def run_rdpo_cmd(args) -> int:
    from .rdpo_chain import run_rdpo

    run_rdpo(rdpo_settings(args), args.output_dir, overwrite=args.overwrite, final_eval=_final_eval(args))
    return 0


# ---------------------------------------------------------------------------------------- dice
def add_dice_arguments(p):
    from .dice import DiceSettings

    d = DiceSettings()
    _rounds_flags(p, d, what="the DPO model to bootstrap")
    p.add_argument("--prompts", default=None, help="prompt file (default: the shipped task prompts)")
    p.add_argument("--gamma", type=float, default=d.gamma,
                   help=f"share of offline pairs in each round's mix (default {d.gamma})")
    p.add_argument("--eval-data", default=None, help="held-out pairs (default: the shipped held-out split)")
    p.add_argument("--eval-pairs", type=int, default=d.eval_pairs, help="first N held-out pairs (0: no evaluation)")
    _generation_flags(p, d.generation)
    _train_flags(p, d.train)
    _final_eval_flags(p, "general, the AlpacaEval kind")
    _common(p)
    presets.install(p, "dice")


def dice_settings(args):
    from .dice import DiceSettings

    return DiceSettings(**_round_settings(args), prompts=args.prompts, eval_data=args.eval_data,
                        eval_pairs=args.eval_pairs, gamma=args.gamma)


def run_dice_cmd(args) -> int:
    from .dice import run_dice

    run_dice(dice_settings(args), args.output_dir, overwrite=args.overwrite, final_eval=_final_eval(args))
    return 0


# ---------------------------------------------------------------------------------------- crosslingual
def add_crosslingual_arguments(p):
    from .crosslingual import CrossLingualSettings

    d = CrossLingualSettings()
    _rounds_flags(p, d, what="the English DPO model")
    p.add_argument("--parallel", default=None, help="parallel prompt JSONL, {'id', 'en': ..., '<lang>': ...} per line "
                                                    "(default: the shipped set: en, es, fr, de, it)")
    p.add_argument("--languages", default=",".join(d.languages),
                   help="language codes; English ('en') is scored under its own instruction, the others under the "
                        f"prefixed English one (default {','.join(d.languages)})")
    p.add_argument("--eval-prompts", type=int, default=d.eval_prompts,
                   help=f"held-out parallel prompts per language, the file's last rows "
                        f"(default {d.eval_prompts}; 0: none)")
    _generation_flags(p, d.generation)
    _train_flags(p, d.train)
    _final_eval_flags(p, "multilingual, in the run's languages")
    _common(p)
    presets.install(p, "crosslingual")


def crosslingual_settings(args):
    from .crosslingual import CrossLingualSettings

    langs = tuple(c.strip() for c in args.languages.split(",") if c.strip())
    return CrossLingualSettings(**_round_settings(args), parallel=args.parallel, languages=langs,
                                eval_prompts=args.eval_prompts)


def run_crosslingual_cmd(args) -> int:
    from .crosslingual import run_crosslingual

    run_crosslingual(crosslingual_settings(args), args.output_dir, overwrite=args.overwrite,
                     final_eval=_final_eval(args))
    return 0


SUBCOMMANDS = [
    ("synth", "rDPO: synthesise preference pairs by self-critique (answer -> critique -> revision)",
     add_synth_arguments, run_synth_cmd),
    ("score", "score pairs with an LLM judge, a reward model or an implicit reward; write soft labels",
     add_score_arguments, run_score_cmd),
    ("rdpo", "rDPO in one resumable run: synth -> score -> select -> train (or the SFT/dSC/DPO baselines)",
     add_rdpo_arguments, run_rdpo_cmd),
    ("dice", "DICE: bootstrap a DPO model with its own implicit rewards, in rounds", add_dice_arguments, run_dice_cmd),
    ("crosslingual", "transfer English preferences to other languages by implicit cross-lingual rewarding",
     add_crosslingual_arguments, run_crosslingual_cmd),
]


def build_parser() -> argparse.ArgumentParser:
    """A parser of the pipeline subcommands alone (the same arguments as under `rdpo-fast`)."""
    parser = argparse.ArgumentParser(prog="rdpo-fast", description="rdpo_fast pipelines.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, add_arguments, run in SUBCOMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(func=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The command line's one error path (rdpo_fast/errors.py), as under `rdpo-fast`.
    return run_command(args.command, lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
