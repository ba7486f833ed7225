"""The pipelines' subcommands of `rdpo-fast`: synth, score, dice, crosslingual.

SUBCOMMANDS lists them (name, help, add arguments, run), and rdpo_fast.cli registers them beside
train and plot; `main(argv)` is the same CLI (tests, `python -m rdpo_fast.pipelines.cli`).
Bad input raises ValueError subclasses with a clear message, which the CLI prints as one line.
"""
from __future__ import annotations

import os
import sys

from .chat import BRIEF_SYSTEM
from .generation import GenerationSettings

DEFAULT_MODEL = "smollm2-135m"


# ---------------------------------------------------------------------------------------- shared flags
def _generation_flags(p, *, max_new_tokens=64, temperature=0.8):
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help=f"tokens per answer (default {max_new_tokens})")
    g.add_argument("--temperature", type=float, default=temperature, help=f"sampling temperature, 0 = greedy (default {temperature})")
    g.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default 0.95)")
    g.add_argument("--gen-batch-size", type=int, default=16, help="sequences per generate call (default 16)")
    g.add_argument("--seed", type=int, default=0, help="seed of sampling, replay draws and training (default 0)")


def _generation(args) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              batch_size=args.gen_batch_size, seed=args.seed, progress=args.progress).validate()


def _train_flags(p, *, nll_alpha=0.0):
    from .rounds import TrainSettings

    d = TrainSettings()
    t = p.add_argument_group("training of each round (rdpo_fast.train; --train-config sets any other option)")
    t.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr})")
    t.add_argument("--beta", type=float, default=d.beta, help=f"DPO beta (default {d.beta})")
    t.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs per round (default {d.epochs})")
    t.add_argument("--max-steps", type=int, default=None, help="optimizer steps per round (overrides epochs)")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help=f"pairs per step (default {d.batch_size})")
    t.add_argument("--train-last-layers", type=int, default=d.train_last_layers,
                   help=f"train only the last N decoder layers, 0 = all (default {d.train_last_layers})")
    t.add_argument("--max-length", type=int, default=d.max_length, help=f"max prompt+answer tokens (default {d.max_length})")
    t.add_argument("--warmup-steps", type=int, default=0, help="linear warmup steps (default 0)")
    t.add_argument("--nll-alpha", type=float, default=nll_alpha, help=f"weight of NLL on chosen (default {nll_alpha})")
    t.add_argument("--train-config", default=None, help="JSON/YAML file of further rdpo-fast train options")


def _train(args):
    from .rounds import TrainSettings

    return TrainSettings(lr=args.lr, beta=args.beta, epochs=args.epochs, max_steps=args.max_steps,
                         batch_size=args.batch_size, train_last_layers=args.train_last_layers,
                         max_length=args.max_length, warmup_steps=args.warmup_steps, nll_alpha=args.nll_alpha,
                         seed=args.seed, progress=args.progress, config_file=args.train_config)


def _common(p):
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _rounds_flags(p, *, what: str, k=4, rounds=2, per_round=16):
    p.add_argument("--policy", default=DEFAULT_MODEL,
                   help=f"{what} (local HF directory, .gguf file or {DEFAULT_MODEL!r}; default {DEFAULT_MODEL})")
    p.add_argument("--reference", default=None,
                   help="the policy's DPO reference; without it round 0 first trains a DPO model from the policy "
                        "on offline pairs (the policy would otherwise be its own reference: every reward 0)")
    p.add_argument("--output-dir", required=True, help="run directory; a rerun skips finished stages")
    p.add_argument("--overwrite", action="store_true", help="start the run directory over")
    p.add_argument("--rounds", type=int, default=rounds, help=f"rounds (default {rounds})")
    p.add_argument("-k", "--k", type=int, default=k, help=f"samples per prompt, >= 2 (default {k})")
    p.add_argument("--prompts-per-round", type=int, default=per_round,
                   help=f"prompts sampled per round (default {per_round})")
    p.add_argument("--offline", default=None, help="offline preference JSONL (default: the shipped training pairs)")
    p.add_argument("--init-pairs", type=int, default=64, help="offline pairs of the round-0 DPO (default 64)")
    p.add_argument("--system", default=BRIEF_SYSTEM, help=f"system message of the prompts (default {BRIEF_SYSTEM!r}; '' = none)")
    p.add_argument("--keep-truncated", action="store_true", help="keep samples cut off by --max-new-tokens")
    p.add_argument("--score-batch-size", type=int, default=8, help="sequences per implicit-reward forward (default 8)")


# ---------------------------------------------------------------------------------------- synth
def add_synth_arguments(p):
    p.add_argument("--task", default="safety", help="task template: safety, roleplay, sycophancy, or one of --template-file")
    p.add_argument("--template-file", default=None, help="YAML/JSON file of task templates (same format as the shipped "
                                                         "rdpo_fast/pipelines/prompt_files/tasks.yaml)")
    p.add_argument("--list-tasks", action="store_true", help="print the task templates and exit")
    p.add_argument("--prompts", default=None, help="prompt file: JSONL with 'prompt', or .txt one per line "
                                                   "(default: the task's shipped prompts)")
    p.add_argument("--num-prompts", type=int, default=None, help="use the first N prompts")
    p.add_argument("--teacher", default=DEFAULT_MODEL, help=f"teacher model (default {DEFAULT_MODEL})")
    p.add_argument("--output", "-o", default=None, help="output JSONL (required unless --list-tasks)")
    p.add_argument("--drop-truncated", action="store_true", help="drop pairs whose answer or revision was cut off")
    _generation_flags(p, max_new_tokens=96)
    _common(p)


def run_synth_cmd(args) -> int:
    from .synth import SynthSettings, run_synth
    from .templates import get_template, load_templates

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
    from .judge import JudgeSettings

    d = JudgeSettings()
    p.add_argument("--input", "-i", required=True, help="preference JSONL (prompt, chosen, rejected)")
    p.add_argument("--output", "-o", required=True, help="scored JSONL; pairs that could not be scored go to "
                                                         "OUTPUT with .failed.jsonl, with the reasons")
    p.add_argument("--scorer", choices=("judge", "rm", "implicit"), required=True,
                   help="judge: an LLM judge with a rubric; rm: a sequence-classification reward model; "
                        "implicit: log pi - log pi_ref of a DPO model and its reference")
    p.add_argument("--score-temperature", type=float, default=1.0,
                   help="T of soft_label = sigmoid((chosen_score - rejected_score) / T) (default 1)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward or generate call (default 8)")
    p.add_argument("--seed", type=int, default=0)
    j = p.add_argument_group("judge")
    j.add_argument("--judge-model", default=None, help="judge model (local HF directory, .gguf or 'smollm2-135m')")
    j.add_argument("--judge-mode", choices=("pairwise", "pointwise", "generate"), default="pairwise",
                   help="pairwise (default): soft label = the judge's P(chosen better) from its label probabilities "
                        "in both orders; pointwise: expected rubric scores from its score-token probabilities; "
                        "generate: the judge writes a marked score [[N]], parsed strictly (rdpo_fast.evaluation)")
    j.add_argument("--task", default=None, help="take the rubric of this task template (default: the records' "
                                                "'task' field when they share one, else a generic rubric)")
    j.add_argument("--template-file", default=None, help="extra task templates")
    j.add_argument("--rubric", default=None, help="rubric text (overrides --task)")
    j.add_argument("--score-range", type=int, nargs=2, default=(d.lo, d.hi), metavar=("LO", "HI"),
                   help=f"integer score range (default {d.lo} {d.hi})")
    j.add_argument("--max-retries", type=int, default=d.max_retries, help=f"retries of an unparsable answer (default {d.max_retries})")
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
    from .judge import DEFAULT_RUBRIC
    from .templates import get_template

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


def run_score_cmd(args) -> int:
    from rdpo_fast.data import read_jsonl
    from rdpo_fast.run_dir import check_file_writable

    from .scorers import ImplicitScorer, JudgeScorer, RewardModelScorer, score_records, summary_table
    from .stages import write_jsonl

    if args.score_temperature <= 0:
        raise ValueError(f"--score-temperature must be > 0, got {args.score_temperature}")
    lines = read_jsonl(args.input)  # validated before any model loads
    check_file_writable(args.output)
    records = [r for _, r in lines]
    if args.scorer == "judge" and args.judge_mode != "generate":
        if not args.judge_model:
            raise ValueError("--scorer judge needs --judge-model")
        return _score_with_probability_judge(args, lines, records)
    if args.scorer == "judge":
        from .judge import JudgeSettings

        if not args.judge_model:
            raise ValueError("--scorer judge needs --judge-model")
        rubric, origin = _pick_rubric(args, records)
        settings = JudgeSettings(rubric=rubric, lo=args.score_range[0], hi=args.score_range[1],
                                 max_retries=args.max_retries, max_new_tokens=args.judge_max_new_tokens,
                                 batch_size=args.batch_size, seed=args.seed, progress=args.progress,
                                 prefill=args.judge_prefill).validate()
        print(f"judge rubric: {origin}")
        scorer = JudgeScorer(args.judge_model, settings)
    elif args.scorer == "rm":
        if not args.rm_model:
            raise ValueError("--scorer rm needs --rm-model DIR")
        scorer = RewardModelScorer(args.rm_model, batch_size=args.batch_size, max_length=args.rm_max_length,
                                   label_index=args.rm_label_index)
    else:
        if not (args.policy and args.reference):
            raise ValueError("--scorer implicit needs --policy (the DPO model) and --reference")
        scorer = ImplicitScorer(args.policy, args.reference, batch_size=args.batch_size)
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
    from rdpo_fast.evaluation import scoring
    from rdpo_fast.evaluation.judge import ProbabilityJudge
    from rdpo_fast.evaluation.rubrics import scale

    from .stages import write_jsonl

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


# ---------------------------------------------------------------------------------------- dice
def add_dice_arguments(p):
    _rounds_flags(p, what="the DPO model to bootstrap")
    p.add_argument("--prompts", default=None, help="prompt file (default: the shipped task prompts)")
    p.add_argument("--gamma", type=float, default=0.5, help="share of offline pairs in each round's mix (default 0.5)")
    p.add_argument("--eval-data", default=None, help="held-out pairs (default: the shipped held-out split)")
    p.add_argument("--eval-pairs", type=int, default=None, help="first N held-out pairs (0: no evaluation)")
    _generation_flags(p)
    _train_flags(p)
    _common(p)


def run_dice_cmd(args) -> int:
    from .dice import DiceSettings, run_dice

    s = DiceSettings(policy=args.policy, reference=args.reference, prompts=args.prompts, offline=args.offline,
                     eval_data=args.eval_data, eval_pairs=args.eval_pairs, rounds=args.rounds, k=args.k,
                     prompts_per_round=args.prompts_per_round, gamma=args.gamma, init_pairs=args.init_pairs,
                     system=args.system or None, keep_truncated=args.keep_truncated,
                     score_batch_size=args.score_batch_size, seed=args.seed, generation=_generation(args),
                     train=_train(args))
    run_dice(s, args.output_dir, overwrite=args.overwrite)
    return 0


# ---------------------------------------------------------------------------------------- crosslingual
def add_crosslingual_arguments(p):
    _rounds_flags(p, what="the English DPO model", per_round=8)
    p.add_argument("--parallel", default=None, help="parallel prompt JSONL, {'id', 'en': ..., '<lang>': ...} per line "
                                                    "(default: the shipped set: en, es, fr, de, it)")
    p.add_argument("--languages", default="es,fr,de,it", help="target language codes (default es,fr,de,it)")
    p.add_argument("--eval-prompts", type=int, default=4,
                   help="held-out parallel prompts per language, the file's last rows (default 4; 0: none)")
    p.add_argument("--scorer", choices=("iterate", "fixed"), default="iterate",
                   help="iterate: round r scores with (pi_{r-1}, its reference); fixed: always the English pair")
    _generation_flags(p)
    _train_flags(p, nll_alpha=1.0)
    _common(p)


def run_crosslingual_cmd(args) -> int:
    from .crosslingual import CrossLingualSettings, run_crosslingual

    langs = tuple(c.strip() for c in args.languages.split(",") if c.strip())
    s = CrossLingualSettings(policy=args.policy, reference=args.reference, parallel=args.parallel, languages=langs,
                             offline=args.offline, init_pairs=args.init_pairs, rounds=args.rounds, k=args.k,
                             prompts_per_round=args.prompts_per_round, eval_prompts=args.eval_prompts,
                             scorer=args.scorer, system=args.system or None, keep_truncated=args.keep_truncated,
                             score_batch_size=args.score_batch_size, seed=args.seed, generation=_generation(args),
                             train=_train(args))
    run_crosslingual(s, args.output_dir, overwrite=args.overwrite)
    return 0


SUBCOMMANDS = [
    ("synth", "rDPO: synthesise preference pairs by self-critique (answer -> critique -> revision)",
     add_synth_arguments, run_synth_cmd),
    ("score", "score pairs with an LLM judge, a reward model or an implicit reward; write soft labels",
     add_score_arguments, run_score_cmd),
    ("dice", "DICE: bootstrap a DPO model with its own implicit rewards, in rounds", add_dice_arguments, run_dice_cmd),
    ("crosslingual", "transfer English preferences to other languages by implicit cross-lingual rewarding",
     add_crosslingual_arguments, run_crosslingual_cmd),
]


def main(argv: list[str] | None = None) -> int:
    """The same as `rdpo-fast`: these subcommands are registered on the main CLI (rdpo_fast.cli)."""
    from ..cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
