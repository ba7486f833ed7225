"""The evaluation's subcommands of `rdpo-fast`: generate and eval. SUBCOMMANDS lists them (name, help,
add arguments, run); rdpo_fast.cli registers them beside the others."""
from __future__ import annotations

import argparse
import os

from rdpo_fast import run_lock
from rdpo_fast.lm.chat import DEFAULT_SYSTEM
from rdpo_fast.lm.generation import GenerationSettings
from rdpo_fast.models.sources import DEFAULT_MODEL

from .tasks import ENGLISH_TASKS, TASKS

DEFAULT_JUDGE = DEFAULT_MODEL


# ---------------------------------------------------------------------------------------- generate
def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"the model that answers (local Hugging Face directory, .gguf or {DEFAULT_MODEL!r}; "
                        "default it)")
    p.add_argument("--prompts", default="all",
                   help=f"shipped held-out sets ({', '.join(TASKS)}, comma-separated; 'all' = "
                        f"{','.join(ENGLISH_TASKS)}), or a prompt file: JSONL ('prompt' or 'instruction' per line) "
                        "or AlpacaEval's JSON list (default: all)")
    p.add_argument("--languages", default=None, help="languages of the multilingual set, e.g. es,fr "
                                                     "(default: es,fr,de,it); for a file: the language its answers "
                                                     "must be in")
    p.add_argument("--task", default=None, help="the task of a file's records that name none (gives them a rubric "
                                                "in eval)")
    p.add_argument("--num-prompts", type=int, default=None,
                   help="the first N prompts of each set (per language for multilingual), or of the file")
    p.add_argument("--generator", default=None, help="the name written as 'generator' (default: from --model)")
    p.add_argument("--system", default=DEFAULT_SYSTEM, help=f"system message (default {DEFAULT_SYSTEM!r}; '' = none)")
    p.add_argument("--output", "-o", required=True, help="answers file: .json (AlpacaEval's list) or .jsonl")
    g = p.add_argument_group("sampling (recorded in every answer's 'generation' field)")
    g.add_argument("--max-new-tokens", type=int, default=256, help="tokens per answer (default 256)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default 0)")
    g.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling when temperature > 0 (default 0.95)")
    g.add_argument("--batch-size", type=int, default=16, help="sequences per generate call (default 16)")
    g.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="model dtype (auto: bfloat16 on a GPU, float32 on CPU)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _languages(spec):
    return [c.strip() for c in spec.split(",") if c.strip()] if spec else None


def run_generate(args: argparse.Namespace) -> int:
    from .generate import load_and_generate
    from .records import write_records
    from .tasks import load_prompts

    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_p=args.top_p, batch_size=args.batch_size, seed=args.seed,
                                  progress=args.progress).validate()
    prompts = load_prompts(args.prompts, languages=_languages(args.languages), task=args.task,
                           num_prompts=args.num_prompts)  # bad input fails before the model loads
    with run_lock.lock_file(args.output, "answers file"):  # one writer at a time
        recs = load_and_generate(args.model, prompts, settings, dtype=args.dtype, generator=args.generator,
                                 system=args.system or None)
        write_records(args.output, recs)
    cut = sum(not r["finished"] for r in recs)
    print(f"wrote {len(recs)} answers of {recs[0]['generator']} to {args.output}"
          + (f" ({cut} cut off at --max-new-tokens {args.max_new_tokens})" if cut else ""))
    return 0


# ---------------------------------------------------------------------------------------- eval
def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--answers", "-a", nargs="+", required=True,
                   help="answers file(s) of the model(s) to evaluate (rdpo-fast generate output, or AlpacaEval "
                        "model outputs); several files (e.g. one per round) are each judged against the baseline")
    p.add_argument("--baseline", "-b", required=True,
                   help="the baseline's answers to the same prompts (another model's, or a reference outputs file)")
    p.add_argument("--judge", default=DEFAULT_JUDGE,
                   help=f"judge model: a local Hugging Face directory, a .gguf file or {DEFAULT_JUDGE!r} (default)")
    p.add_argument("--output-dir", "-o", required=True, help="writes eval.json, eval.txt and eval.png there")
    p.add_argument("--task", default=None, help="the task of records that name none (its rubric rates them)")
    p.add_argument("--no-pointwise", dest="pointwise", action="store_false",
                   help="skip the per-task rubric rates (harmlessness, persona leak, sycophancy)")
    p.add_argument("--language-share", choices=("auto", "on", "off"), default="auto",
                   help="share of answers in the requested language (py3langid); auto: when a record requests "
                        "a language other than English (default auto)")
    p.add_argument("--instruction-difficulty", default=None,
                   help="per-prompt difficulties for the LC GLM's difficulty term (AlpacaEval's instruction_difficulty"
                        ".csv: first column the 0-based position in the answers file, or the instruction; second "
                        "the difficulty); without it the minimal LC GLM is fitted")
    p.add_argument("--judge-batch-size", type=int, default=8, help="prompts per judge forward (default 8)")
    p.add_argument("--judge-dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="judge dtype (auto: bfloat16 on a GPU, float32 on CPU); label probabilities are "
                        "computed in float32 whatever it is")
    p.add_argument("--max-answer-tokens", type=int, default=512,
                   help="answers longer than this are cut for the judge (counted in the report; default 512)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _read_difficulty(path: str, answers) -> dict:
    import csv

    from .records import RecordError

    if not os.path.isfile(path):
        raise RecordError(f"instruction difficulty file not found: {path}")
    out = {}
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    for lineno, row in enumerate(rows[1:], 2):  # the first row is the header
        if not row:
            continue
        if len(row) < 2:
            raise RecordError(f"{path}:{lineno}: expected two columns (position or instruction, difficulty)")
        key, value = row[0], row[1]
        try:
            d = float(value)
        except ValueError:
            raise RecordError(f"{path}:{lineno}: difficulty {value!r} is not a number") from None
        if key.strip().lstrip("-").isdigit():
            pos = int(key)
            if not 0 <= pos < len(answers):
                continue  # AlpacaEval's file covers its 805 prompts; a subset file uses the first ones
            key = answers[pos].instruction
        out[key] = d
    return out


def run_eval(args: argparse.Namespace) -> int:
    from .answers import pair_answers, read_answers
    from .tasks import TaskError

    if args.task is not None and args.task not in TASKS:
        raise TaskError(f"unknown task {args.task!r}; known: {', '.join(TASKS)}")
    baseline = read_answers(args.baseline, task=args.task)
    runs = []
    for path in args.answers:  # every file is checked before the judge loads
        answers = read_answers(path, task=args.task)
        pairs = pair_answers(answers, baseline, path, args.baseline)
        diff = _read_difficulty(args.instruction_difficulty, answers) if args.instruction_difficulty else None
        runs.append((path, pairs, diff))
    if args.language_share == "auto":
        share = any(p.language and p.language != "en" for _, pairs, _ in runs for p in pairs)
    else:
        share = args.language_share == "on"
    if share:
        from .langid import identifier

        identifier()  # a missing py3langid is reported before the judge loads
    with run_lock.lock_dir(args.output_dir, "output directory"):  # one writer; the answers are only read
        return _judge_and_report(args, runs, share)


def _judge_and_report(args: argparse.Namespace, runs: list, share: bool) -> int:
    from rdpo_fast.judges.probability import ProbabilityJudge

    from .compare import evaluate_pairs, write_reports

    judge = ProbabilityJudge.load(args.judge, dtype=args.judge_dtype, batch_size=args.judge_batch_size,
                                  max_answer_tokens=args.max_answer_tokens, progress=args.progress)
    reports = []
    for path, pairs, diff in runs:
        r = evaluate_pairs(pairs, judge, pointwise=args.pointwise, languages=share, difficulty=diff)
        r["answers_file"] = path
        reports.append(r)
    names = [os.path.splitext(os.path.basename(r["answers_file"]))[0] for r in reports]
    text, plot = write_reports(args.output_dir, reports, names, judge=args.judge, baseline=args.baseline)
    print(text)
    print(f"wrote {os.path.join(args.output_dir, 'eval.json')}" + (f" and {plot}" if plot else ""))
    return 0


SUBCOMMANDS = [
    ("generate", "a model's answers to held-out prompts (shipped task sets, JSONL or AlpacaEval JSON), batched",
     add_generate_arguments, run_generate),
    ("eval", "judge answers against a baseline: win rate, LC win rate, task rates, language share",
     add_eval_arguments, run_eval),
]
