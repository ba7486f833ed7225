"""`--preset paper` and `--preset cpu-demo` for each pipeline command (rdpo, dice, crosslingual).

A preset is a set of flag values applied as the command's defaults before its flags are parsed, so
any flag given explicitly still wins (`--preset paper --rounds 1` runs one paper round). The values
are in PRESETS, by command and by the flag's destination name; the README's tables "setting: paper
value / our default / cpu-demo / flag" are rendered from them (`markdown_table`), and a test keeps the
two identical.

- paper: the settings of the upstream code (sail-sg/dice scripts, ZNLP/Implicit-Cross-Lingual-Rewarding
  scripts, vicgalle/refined-dpo notebooks). Only settings the released code fixes are set; the rest
  stay ours (PAPER_NOTES says where a value is inferred or not released). The papers' models, prompt
  sets and judges are not shipped: pass --policy/--reference/--prompts/--parallel/--judge-model.
- cpu-demo: the small counts and short, brief answers that make a run finish in minutes on a 2-core
  CPU with the embedded SmolLM2-135M (the README's measured commands).
"""
from __future__ import annotations

from rdpo_fast.lm.chat import BRIEF_SYSTEM

PRESET_NAMES = ("paper", "cpu-demo")

PRESETS: dict[str, dict[str, dict]] = {
    "dice": {
        "paper": {
            "rounds": 2, "k": 16, "min_valid": 8, "prompt_pool": "same", "prompts_per_round": 0,
            "alpha_rule": "early-stop", "alpha_grid": [0.0, 1.0, 0.001], "gamma": 0.5, "reward_pair": "previous",
            "system": None, "temperature": 0.9, "top_p": 1.0, "max_new_tokens": 2048, "keep_truncated": False,
            "loss_type": "sigmoid", "beta": 0.1, "lr": 5e-7, "scheduler": "constant", "warmup_steps": 50,
            "max_steps": 300, "batch_size": 4, "grad_accum": 8, "max_length": 4096, "train_last_layers": 0,
        },
        "cpu-demo": {
            "rounds": 2, "k": 4, "prompts_per_round": 8, "init_pairs": 16, "eval_pairs": 16, "system": BRIEF_SYSTEM,
            "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 64, "keep_truncated": False, "batch_size": 8,
            "lr": 1e-4, "train_last_layers": 4, "max_length": 384, "final_eval_num_prompts": 16,
            "final_eval_max_new_tokens": 64,
        },
    },
    "crosslingual": {
        "paper": {
            "languages": "en,es,ru,de,fr", "rounds": 2, "k": 10, "min_valid": 2, "prompt_pool": "same",
            "prompts_per_round": 0, "alpha_rule": "argmin", "alpha_grid": [0.0, 1.0, 0.001],
            "reward_pair": "previous-vs-initial", "system": None, "temperature": 0.9, "top_p": 1.0,
            "max_new_tokens": 2400, "keep_truncated": True, "loss_type": "sigmoid",
        },
        "cpu-demo": {
            "languages": "en,es,fr,de", "rounds": 2, "k": 3, "prompts_per_round": 3, "eval_prompts": 2,
            "init_pairs": 16, "system": BRIEF_SYSTEM, "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 64,
            "keep_truncated": False, "batch_size": 8, "lr": 1e-4, "train_last_layers": 4, "max_length": 384,
            "final_eval_num_prompts": 4, "final_eval_max_new_tokens": 64,
        },
    },
    "rdpo": {
        "paper": {"method": "rdpo", "scorer": "judge", "judge_mode": "generate", "max_new_tokens": 256},
        "cpu-demo": {
            "task": "safety", "num_prompts": 8, "method": "rdpo", "scorer": "implicit", "max_new_tokens": 48,
            "temperature": 0.8, "top_p": 0.95, "scorer_max_steps": 2, "scorer_lr": 1e-4, "scorer_batch_size": 8,
            "lr": 1e-4, "batch_size": 4, "train_last_layers": 4, "max_length": 384, "final_eval_num_prompts": 16,
            "final_eval_max_new_tokens": 64,
        },
    },
}

# The external evaluation that ends every run (final_eval.py), a row group of each table.
FINAL_EVAL_ROWS = [("external judge of the final evaluation", "judge", "--judge"),
                   ("final-evaluation prompts per set (per language)", "final_eval_num_prompts",
                    "--final-eval-num-prompts"),
                   ("final-evaluation answer tokens", "final_eval_max_new_tokens", "--final-eval-max-new-tokens")]

# Rows of each README table: (setting, flag destination, flag as typed).
ROWS: dict[str, list[tuple[str, str, str]]] = {
    "dice": [
        ("rounds", "rounds", "--rounds"), ("samples per prompt K", "k", "-k"),
        ("valid samples a prompt needs", "min_valid", "--min-valid"),
        ("prompts each round", "prompt_pool", "--prompt-pool"),
        ("prompts per round (0: all)", "prompts_per_round", "--prompts-per-round"),
        ("alpha search", "alpha_rule", "--alpha-rule"), ("alpha grid start stop step", "alpha_grid", "--alpha-grid"),
        ("offline replay share gamma", "gamma", "--gamma"), ("reward pair of round r", "reward_pair", "--reward-pair"),
        ("system prompt", "system", "--system"), ("temperature", "temperature", "--temperature"),
        ("top-p", "top_p", "--top-p"), ("max new tokens", "max_new_tokens", "--max-new-tokens"),
        ("keep truncated samples", "keep_truncated", "--keep-truncated"), ("loss", "loss_type", "--loss-type"),
        ("beta", "beta", "--beta"), ("learning rate", "lr", "--lr"), ("schedule", "scheduler", "--scheduler"),
        ("warmup steps", "warmup_steps", "--warmup-steps"), ("steps per round", "max_steps", "--max-steps"),
        ("pairs per micro-batch", "batch_size", "--batch-size"),
        ("micro-batches per step", "grad_accum", "--grad-accum"), ("max tokens", "max_length", "--max-length"),
        ("trained layers (0: all)", "train_last_layers", "--train-last-layers"),
        ("offline pairs of round 0", "init_pairs", "--init-pairs"), ("held-out pairs", "eval_pairs", "--eval-pairs"),
        *FINAL_EVAL_ROWS,
    ],
    "crosslingual": [
        ("languages", "languages", "--languages"), ("rounds", "rounds", "--rounds"),
        ("samples per prompt N", "k", "-k"), ("valid samples a prompt needs", "min_valid", "--min-valid"),
        ("prompts each round", "prompt_pool", "--prompt-pool"),
        ("prompts per round and language (0: all)", "prompts_per_round", "--prompts-per-round"),
        ("alpha search (per language)", "alpha_rule", "--alpha-rule"),
        ("alpha grid start stop step", "alpha_grid", "--alpha-grid"),
        ("reward pair of round r >= 2", "reward_pair", "--reward-pair"), ("system prompt", "system", "--system"),
        ("temperature", "temperature", "--temperature"), ("top-p", "top_p", "--top-p"),
        ("max new tokens", "max_new_tokens", "--max-new-tokens"),
        ("keep truncated samples", "keep_truncated", "--keep-truncated"), ("loss", "loss_type", "--loss-type"),
        ("NLL weight on chosen", "nll_alpha", "--nll-alpha"), ("learning rate", "lr", "--lr"),
        ("pairs per micro-batch", "batch_size", "--batch-size"), ("max tokens", "max_length", "--max-length"),
        ("trained layers (0: all)", "train_last_layers", "--train-last-layers"),
        ("offline pairs of round 0", "init_pairs", "--init-pairs"),
        ("held-out prompts per language", "eval_prompts", "--eval-prompts"),
        *FINAL_EVAL_ROWS,
    ],
    "rdpo": [
        ("task", "task", "--task"), ("prompts (first N)", "num_prompts", "--num-prompts"),
        ("method", "method", "--method"), ("scorer", "scorer", "--scorer"),
        ("judge reads", "judge_mode", "--judge-mode"),
        ("teacher max new tokens", "max_new_tokens", "--max-new-tokens"),
        ("temperature", "temperature", "--temperature"),
        ("top-p", "top_p", "--top-p"), ("judge retries", "judge_max_retries", "--judge-max-retries"),
        ("scorer DPO steps (implicit, no --scorer-policy)", "scorer_max_steps", "--scorer-max-steps"),
        ("student learning rate", "lr", "--lr"), ("student beta", "beta", "--beta"),
        ("pairs per micro-batch", "batch_size", "--batch-size"), ("max tokens", "max_length", "--max-length"),
        ("trained layers (0: all)", "train_last_layers", "--train-last-layers"),
        *FINAL_EVAL_ROWS,
    ],
}

# Where the paper column needs a word: inferred values, and values the released code does not fix.
PAPER_NOTES: dict[str, dict[str, str]] = {
    "dice": {"prompts_per_round": "0 (all of UF-10k, each round)",
             "alpha_grid": "0.0 1.0 0.001 (1.0 itself left out upstream)", "system": "none (chat template only)",
             "batch_size": "4 (x 8 = 32 pairs per step; 1 x 4 x 8 GPUs upstream)",
             "train_last_layers": "0 (full fine-tuning)", "init_pairs": "n/a (starts from a DPO model)",
             "eval_pairs": "n/a (AlpacaEval 2)", "judge": "GPT-4 Turbo (AlpacaEval 2)",
             "final_eval_num_prompts": "805 (AlpacaEval 2)", "final_eval_max_new_tokens": "2048"},
    "crosslingual": {"reward_pair": "previous-vs-initial (inferred from the released checkpoints: the "
                                    "t-1-reference variant is an ablation)",
                     "prompt_pool": "same (inferred: one prompt set per run)", "min_valid": "2 (no filter)",
                     "keep_truncated": "yes (no filter)", "nll_alpha": "not in the released code",
                     "lr": "not in the released code", "batch_size": "not in the released code",
                     "max_length": "not in the released code", "train_last_layers": "not in the released code",
                     "alpha_grid": "0.0 1.0 0.001 (1.0 itself left out upstream)",
                     "init_pairs": "n/a (starts from a DPO model)", "eval_prompts": "n/a (X-AlpacaEval)",
                     "judge": "GPT-4 (X-AlpacaEval)", "final_eval_num_prompts": "805 per language (X-AlpacaEval)",
                     "final_eval_max_new_tokens": "2400"},
    "rdpo": {"task": "safety, roleplay, sycophancy", "num_prompts": "not in the released code",
             "max_new_tokens": "256 (teacher API calls)", "temperature": "API default (not set)",
             "top_p": "API default (not set)", "judge_max_retries": "none (no retry; role-play and "
                                                                    "sycophancy read the first integer of the prose; "
                                                                    "we parse one [[N]] strictly)",
             "scorer": "judge (GPT-3.5/GPT-4)", "judge_mode": "generate (the judge writes its score)",
             "lr": "not in the released code", "beta": "not in the released code",
             "batch_size": "not in the released code", "max_length": "not in the released code",
             "train_last_layers": "not in the released code", "scorer_max_steps": "n/a",
             "judge": "GPT-4 (the notebooks' rating prompts)", "final_eval_num_prompts": "not in the released code",
             "final_eval_max_new_tokens": "not in the released code"},
}


# Where "our default" is not a plain value.
DEFAULT_NOTES = {"min_valid": "K/2 (at least 2)", "max_steps": "none (epochs)", "num_prompts": "all",
                 "eval_pairs": "all", "final_eval_num_prompts": "all"}


def values(command: str, preset: str) -> dict:
    if command not in PRESETS:
        raise ValueError(f"no presets for {command!r}; presets exist for {', '.join(PRESETS)}")
    if preset not in PRESETS[command]:
        raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESET_NAMES)}")
    return dict(PRESETS[command][preset])


def _find_preset(arg_strings) -> str | None:
    name = None
    for i, a in enumerate(arg_strings):
        if a == "--preset" and i + 1 < len(arg_strings):
            name = arg_strings[i + 1]
        elif a.startswith("--preset="):
            name = a.split("=", 1)[1]
    return name


def install(parser, command: str) -> None:
    """Adds --preset to `parser` (a subcommand's parser) and makes the preset's values its defaults
    for the parse, so explicit flags override them. Unknown preset names are refused by argparse."""
    listing = "; ".join(f"{name}: " + ", ".join(f"{k}={v!r}" for k, v in PRESETS[command][name].items())
                        for name in PRESET_NAMES)
    parser.add_argument("--preset", choices=PRESET_NAMES, default=None,
                        help="settings of the paper's code, or of the 2-core CPU demo; flags given explicitly "
                             f"override it ({listing})")
    known = {a.dest for a in parser._actions}
    for name in PRESET_NAMES:
        missing = sorted(set(PRESETS[command][name]) - known)
        if missing:
            raise RuntimeError(f"preset {command}/{name} sets {missing}, which are not flags of the command")
    original = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        name = _find_preset(list(args or []))
        if name not in PRESET_NAMES:  # absent, or a bad name that argparse itself will refuse
            return original(args, namespace)
        saved = {a.dest: a.default for a in parser._actions}
        saved_defaults = dict(parser._defaults)
        parser.set_defaults(**PRESETS[command][name])
        try:
            return original(args, namespace)
        finally:
            for a in parser._actions:
                a.default = saved[a.dest]
            parser._defaults.clear()
            parser._defaults.update(saved_defaults)

    parser.parse_known_args = parse_known_args


def _cell(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return " ".join(_cell(x) for x in v)
    if isinstance(v, str) and len(v) > 40:
        return f"'{v[:37]}...'"
    return str(v)


def markdown_table(command: str, parser) -> str:
    """The README table of a command: setting | paper | our default | cpu-demo | flag."""
    defaults = {a.dest: a.default for a in parser._actions}
    lines = ["| setting | paper | our default | cpu-demo | flag |", "| --- | --- | --- | --- | --- |"]
    for label, dest, flag in ROWS[command]:
        paper = PRESETS[command]["paper"]
        if dest in PAPER_NOTES.get(command, {}):
            p = PAPER_NOTES[command][dest]
        elif dest in paper:
            p = _cell(paper[dest])
        else:
            p = "not in the released code"
        demo = PRESETS[command]["cpu-demo"]
        d = _cell(demo[dest]) if dest in demo else "(default)"
        ours = DEFAULT_NOTES[dest] if defaults[dest] is None and dest in DEFAULT_NOTES else _cell(defaults[dest])
        lines.append(f"| {label} | {p} | {ours} | {d} | `{flag}` |")
    return "\n".join(lines)
