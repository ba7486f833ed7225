"""`rdpo-fast train`'s flags: the options of rdpo_fast.training.config.TrainConfig in groups, each default printed
once, two examples, and TRL / TrainingArguments names (rdpo_fast.training.trl_names) accepted as hidden flags
(`--learning_rate 1e-6`, `--per_device_train_batch_size 8`, `--bf16`, `--max_length 1024`), or refused by
name (`--use_liger_kernel`: "not supported: ...")."""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable

from . import config as config_mod
from . import trl_names, typed

GROUPS = {
    "model": ("model", "dtype", "gradient_checkpointing", "disable_dropout", "train_last_layers", "lora_r",
              "lora_alpha", "lora_dropout", "lora_targets"),
    "data": ("data", "eval_data", "dataset_split", "eval_dataset_split", "prompt_key", "chosen_key", "rejected_key",
             "max_length", "max_prompt_length", "packed", "score_temperature"),
    "loss": ("loss_type", "beta", "label_smoothing", "nll_alpha", "gamma", "tau", "ld_alpha", "average_log_prob",
             "workspace_mb"),
    "optimisation": ("epochs", "max_steps", "batch_size", "grad_accum", "eval_batch_size", "lr", "optim",
                     "weight_decay", "scheduler", "warmup_steps", "warmup_ratio", "max_grad_norm",
                     "max_nonfinite_steps", "seed", "bf16"),
    "reference": ("reference", "cache_dir"),
    "checkpoints": ("output_dir", "overwrite", "save_steps", "save_total_limit", "stop_after_steps", "resume",
                    "export"),
    "logging": ("logging_steps", "eval_steps", "progress", "report_to", "logging_dir", "run_name"),
    "scale-out": ("distributed", "tp", "cp"),
}

EPILOG = """examples:
  # a Hub model and dataset, bf16 weights, gradient checkpointing, TensorBoard
  rdpo-fast train --model HuggingFaceTB/SmolLM2-360M-Instruct \\
      --data HuggingFaceH4/ultrafeedback_binarized --dataset-split train_prefs \\
      --eval-dataset-split test_prefs --dtype bf16 --gradient-checkpointing --report-to tensorboard

  # an existing TRL DPO config (TRL / TrainingArguments names are accepted, in the file and as flags)
  rdpo-fast train --config dpo.yaml --learning_rate 5e-7 --output_dir runs/dpo

TRL names: model_name_or_path, learning_rate, per_device_train_batch_size, gradient_accumulation_steps,
num_train_epochs, lr_scheduler_type, torch_dtype, bf16, fp16, dataset_name, ... map onto the options above;
a TRL setting rdpo_fast cannot honour is refused by name.

exit status: 0 done; 2 an error (one line); 3 diverged (--max-nonfinite-steps); 143 stopped by SIGTERM or
SIGUSR1 after a checkpoint at the last finished step (rdpo-fast train --resume OUTPUT_DIR goes on)."""


def _kind(f: dataclasses.Field) -> type:
    base = f.type.split("|")[0].strip() if isinstance(f.type, str) else f.type.__name__
    return {"int": int, "float": float, "str": str, "bool": bool}[base]


def _help(f: dataclasses.Field, default) -> str:
    text = f.metadata["help"]
    if "default" in text or default is None:  # the text already says it, or there is nothing to say
        return text
    return f"{text} (default: {default})"


def add_config_flags(group: argparse._ActionsContainer, names: Iterable[str], *, defaults: object = None,
                     prefix: str = "") -> None:
    """A flag per TrainConfig option in `names` (--batch-size for batch_size; --PREFIX-batch-size, into
    PREFIX_batch_size, with a prefix), typed, checked and explained as the dataclass declares the option.

    Without `defaults` (`rdpo-fast train`) a flag's default is SUPPRESS: only flags actually typed end up
    in the namespace, so the layering (defaults < checkpoint < config file < flags) can tell them apart.
    With `defaults` (an object holding those names, e.g. a pipeline's TrainSettings) each flag defaults
    to its value there, and its help says so."""
    fields = {f.name: f for f in config_mod.fields()}
    for name in names:
        f = fields[name]
        dest = f"{prefix}_{name}" if prefix else name
        flag = "--" + dest.replace("_", "-")
        default = argparse.SUPPRESS if defaults is None else getattr(defaults, name)
        shown = f.default if defaults is None else default
        kind = _kind(f)
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=_help(f, shown))
            continue
        choices = f.metadata.get("choices")
        if defaults is not None and kind is str:
            kind = None  # argparse hands strings over as they are; the pipelines' flags never declared a type
        metavar = "{" + ",".join(choices) + "}" if choices else None
        group.add_argument(flag, type=kind, choices=choices, default=default, metavar=metavar, help=_help(f, shown))


def add_grouped_flags(p: argparse.ArgumentParser) -> None:
    """Every TrainConfig option as a flag, in the --help groups above, and TRL's names as hidden aliases."""
    fields = {f.name: f for f in config_mod.fields()}
    placed = [n for names in GROUPS.values() for n in names]
    missing = sorted(set(fields) - set(placed))
    if missing:  # a new option must be put in a group (tests/training/test_train_io.py checks this too)
        raise RuntimeError(f"train options without a --help group: {missing}")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.usage = "%(prog)s [--config FILE] [OPTIONS]"
    p.epilog = EPILOG
    for title, names in GROUPS.items():
        add_config_flags(p.add_argument_group(title), names)
    _add_aliases(p, fields)


class _Alias(argparse.Action):
    """A TRL-style flag: its value(s) go through rdpo_fast.training.trl_names.translate into our options,
    typed as TrainConfig declares them."""

    def __init__(self, option_strings, dest, fields=None, **kw):
        self.fields = fields
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        key = option_string.lstrip("-").replace("-", "_")
        value = True if values == [] else (values[0] if len(values) == 1 else values)
        try:
            out = trl_names.translate(key, value, set(self.fields))
            for k, v in typed.check_values(config_mod.TrainConfig, out).items():
                setattr(namespace, k, v)
        except (ValueError, KeyError) as e:  # trl_names.Unsupported, a value of the wrong type, an unknown name
            raise argparse.ArgumentError(self, str(e)) from None


def _add_aliases(p, fields):
    taken = set(p._option_string_actions)
    names = ({n for n in fields if "_" in n} | set(trl_names.RENAMED) | set(trl_names.TRANSLATED)
             | set(trl_names.INERT) | trl_names.known_elsewhere())
    for key in sorted(names):
        flag = "--" + key
        if flag in taken or key in ("help", "config", "debug"):
            continue
        # nargs="*": a bare TRL boolean flag (--bf16), one value, or a list (--report_to tensorboard wandb).
        p.add_argument(flag, action=_Alias, nargs="*", fields=fields, dest=argparse.SUPPRESS,
                       default=argparse.SUPPRESS, help=argparse.SUPPRESS)
