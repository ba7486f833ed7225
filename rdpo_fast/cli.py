"""The `rdpo-fast` command line. Each subcommand is a Command (name, help, how to add its arguments, what
to run); a new one (synth, score, dice, crosslingual) is one more entry in COMMANDS.

`rdpo-fast train`: every option of rdpo_fast.training.config.TrainConfig is a flag; `--config FILE` (JSON or YAML)
supplies any of them, and flags given on the command line win. With `--resume`, the checkpoint's saved
settings are the starting point, so `rdpo-fast train --resume RUN_DIR` alone continues a run, writing into
the run directory that holds the checkpoint (rdpo_fast/training/run_dir.py). Every failure goes through one error
path (rdpo_fast/errors.py): an expected one is a single line and exit status 2; SIGTERM or SIGUSR1 ends a
command with one line and 143 (after a checkpoint, in training: rdpo_fast/preemption.py), a diverged run
with one line and 3.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from .errors import DEBUG_ENV, run_command
from .training import config as config_mod


@dataclass
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# ---------------------------------------------------------------------------------------- train
def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from rdpo_fast.training.flags import add_grouped_flags

    p.add_argument("--config", help="JSON or YAML file of options, ours or TRL's names (flags given here override it)")
    add_grouped_flags(p)  # the options in groups, TRL names as hidden aliases


def train_config_from_args(args: argparse.Namespace) -> config_mod.TrainConfig:
    given = {k: v for k, v in vars(args).items() if k not in ("command", "config", "func", "debug")}
    values = {}
    resume = given.get("resume")
    if args.config:
        values.update(config_mod.read_config_file(args.config))
        resume = given.get("resume", values.get("resume"))
    values.update(given)
    if resume:
        from rdpo_fast.training.run_dir import resume_settings

        # The resumed run writes into the run directory holding the checkpoint (or an explicit
        # --output-dir), never into the output path its saved config names.
        values = {**resume_settings(resume, output_dir=values.get("output_dir")),
                  **{k: v for k, v in values.items() if k != "resume"}}

    from rdpo_fast.training.trl_names import finish

    values = finish(values)  # TRL settings that only mean something together (use_peft, constant)
    known = {f.name for f in config_mod.fields()}
    return config_mod.TrainConfig(**{k: v for k, v in values.items() if k in known}).validate()


def run_train(args: argparse.Namespace) -> int:
    from rdpo_fast import preemption
    from rdpo_fast.training.loop import train

    train(train_config_from_args(args))
    if preemption.requested():  # it came during the last step or the final export: the run is whole
        print(f"note: {preemption.requested()} arrived after the last step began; the run finished first",
              file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------- plot
def add_plot_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory of `rdpo-fast train` (holds metrics.jsonl)")
    p.add_argument("-o", "--output", help="PNG path (default RUN_DIR/metrics.png)")


def run_plot(args: argparse.Namespace) -> int:
    from rdpo_fast.training.plot import plot_run

    print(plot_run(args.run_dir, args.output))
    return 0


COMMANDS = [
    Command("train", "preference-train a causal LM with the fused loss", add_train_arguments, run_train),
    Command("plot", "PNG of loss, reward accuracy and margins of a run", add_plot_arguments, run_plot),
]


def pipeline_commands() -> list[Command]:
    """synth, score, dice, crosslingual: the pipelines register themselves (rdpo_fast.pipelines.cli)."""
    from rdpo_fast.pipelines.cli import SUBCOMMANDS

    return [Command(*entry) for entry in SUBCOMMANDS]


def evaluation_commands() -> list[Command]:
    """generate, eval: the evaluation registers itself (rdpo_fast.evaluation.cli)."""
    from rdpo_fast.evaluation.cli import SUBCOMMANDS

    return [Command(*entry) for entry in SUBCOMMANDS]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rdpo-fast", description="Fast DPO-family preference training.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in COMMANDS + pipeline_commands() + evaluation_commands():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.add_argument("--debug", action="store_true", default=False,
                       help=f"show the traceback of an error (or set {DEBUG_ENV}=1)")
        p.set_defaults(func=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Expected failures (bad input, I/O, corrupt files, missing packages): one line, exit 2 (errors.py).
    return run_command(args.command, lambda: args.func(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
