"""Where a run's metrics go: RUN/metrics.jsonl (always; one JSON row per line, appended as the run goes)
and, besides it, TensorBoard event files and Weights & Biases (offline, into the run's directory, when
no credentials are configured). Both are optional imports: asking for one that is not installed is a
clear error before training starts.

Rows are the training loop's metric dicts (TRL's names: loss, rewards/accuracies, eval_loss, ...); the
step is the row's "step". Train rows are logged under train/..., held-out rows (eval_*) under eval/...,
as the Hugging Face Trainer's integrations name them.

metrics.jsonl is strict JSON, one object per line: a non-finite value (a diverged step's NaN loss) is
written as null, and the row lists those keys under "nonfinite" (["loss", "grad_norm"]), so that jq,
JavaScript and json.loads with a strict parse_constant read every line.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os

from rdpo_fast import errors
from rdpo_fast import io as textio

REPORTERS = ("tensorboard", "wandb")


def parse_report_to(value: str | None) -> list[str]:
    names = [n.strip() for n in (value or "none").split(",") if n.strip()]
    return [] if names in ([], ["none"]) else names


def check_report_to(value: str | None) -> None:
    """Known names, and their packages importable: a missing one fails before anything runs."""
    names = parse_report_to(value)
    bad = [n for n in names if n not in REPORTERS]
    if bad or ("none" in names):
        raise ValueError(f"report_to must be none or a comma-separated list of {', '.join(REPORTERS)}, got {value!r}")
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise ValueError(f"report_to {name} needs the {name} package: pip install {name}")


def for_run(cfg, *, enabled: bool) -> Reporter:
    """The run's reporter: into --logging-dir (default RUN/runs), named --run-name (default the run
    directory's name)."""
    return Reporter(cfg.report_to, log_dir=cfg.logging_dir or os.path.join(cfg.output_dir, "runs"),
                    run_name=cfg.run_name or os.path.basename(os.path.normpath(cfg.output_dir)),
                    config=cfg.to_dict(), enabled=enabled)


def _tag(key: str) -> str:
    if key.startswith("eval_"):
        return "eval/" + key[len("eval_"):]
    return "train/" + key


class Reporter:
    """Fans each metrics row out to the configured backends; a no-op on non-main ranks or with none."""

    def __init__(self, report_to: str | None, *, log_dir: str, run_name: str, config: dict, enabled: bool = True):
        self.backends = []
        names = parse_report_to(report_to) if enabled else []
        check_report_to(report_to)
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=os.path.join(log_dir, run_name))
            self.backends.append(self._tensorboard)
        if "wandb" in names:
            import wandb

            offline = not (os.environ.get("WANDB_API_KEY") or _wandb_logged_in())
            mode = os.environ.get("WANDB_MODE") or ("offline" if offline else "online")
            os.makedirs(log_dir, exist_ok=True)
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "rdpo_fast"), name=run_name, dir=log_dir,
                                    config=config, mode=mode)
            self.backends.append(self._wandb)

    def _tensorboard(self, row, step):
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.tb.add_scalar(_tag(k), v, step)
        self.tb.flush()

    def _wandb(self, row, step):
        # numbers only: a diverged step's nulls and its "nonfinite" list are metrics.jsonl's business
        self.wandb.log({_tag(k): v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}, step=step)

    def log(self, row: dict) -> None:
        for backend in self.backends:
            backend(row, int(row.get("step", 0)))

    def close(self) -> None:
        if hasattr(self, "tb"):
            self.tb.close()
        if hasattr(self, "wandb"):
            self.wandb.finish()


def _wandb_logged_in() -> bool:
    netrc = os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        with open(netrc) as f:
            return "api.wandb.ai" in f.read()
    except OSError:
        return False


class MetricsLog:
    """A run's metrics rows: appended to RUN/metrics.jsonl and fanned out to the reporter's backends, by the
    main rank only. On resume, rows logged after the checkpoint's step are dropped first (the resumed
    run logs them again)."""

    def __init__(self, output_dir: str, reporter: Reporter, *, enabled: bool, resume_step: int):
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.reporter, self.enabled = reporter, enabled
        if enabled:
            _trim(self.path, resume_step)

    def append(self, row: dict) -> None:
        if not self.enabled:
            return
        row = strict_row(row)
        with errors.writing(self.path), open(self.path, "a") as f:
            f.write(textio.dumps(row) + "\n")
        self.reporter.log(row)

    def close(self) -> None:
        self.reporter.close()


def strict_row(row: dict) -> dict:
    """The row with its non-finite numbers as None and their keys listed under "nonfinite"."""
    bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
    if not bad:
        return row
    return {**{k: (None if k in bad else v) for k, v in row.items()}, "nonfinite": bad}


def _trim(path: str, step: int) -> None:
    if not os.path.isfile(path):
        return
    if step == 0:
        os.remove(path)
        return
    with open(path, encoding="utf-8") as f:
        rows = f.readlines()
    if rows and not rows[-1].endswith("\n"):
        rows.pop()  # an append cut short (killed, disk full): after the checkpoint, so dropped anyway
    keep = []
    for lineno, line in enumerate(rows, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno}); this run's metrics "
                             "log is damaged: repair or remove that line to resume") from None
        if row.get("step", 0) <= step:
            keep.append(line)
    with textio.atomic_open(path) as f:  # whole or not at all: a signal may end setup here
        f.writelines(keep)
