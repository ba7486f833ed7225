"""`rdpo-fast plot RUN_DIR`: a PNG of loss, reward accuracy and reward margins over steps, training and
held-out, from the run's metrics.jsonl."""
from __future__ import annotations

import os

from rdpo_fast import io as textfile


def read_metrics(run_dir: str) -> tuple[list[dict], list[dict]]:
    """(training rows, evaluation rows) of a run's metrics.jsonl."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl; is it a run directory of `rdpo-fast train`?")
    train, held_out = [], []
    for _, row in textfile.read_jsonl(path):
        (held_out if "eval_loss" in row else train).append(row)
    if not train and not held_out:
        raise ValueError(f"{path} holds no metrics yet")
    return train, held_out


def plot_run(run_dir: str, out: str | None = None) -> str:
    """Writes the figure (default RUN_DIR/metrics.png) and returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    train, held_out = read_metrics(run_dir)
    out = out or os.path.join(run_dir, "metrics.png")
    panels = (("loss", "loss"), ("rewards/accuracies", "reward accuracy"), ("rewards/margins", "reward margin"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (key, title) in zip(axes, panels):
        if train:
            ax.plot([r["step"] for r in train], [r[key] for r in train], lw=1.2, label="train")
        if held_out:
            ax.plot([r["step"] for r in held_out], [r["eval_" + key] for r in held_out], "o-", ms=4,
                    label="held-out")
        if key == "rewards/margins" and train:
            ax.plot([r["step"] for r in train], [r["rewards/chosen"] for r in train], lw=0.8, alpha=0.7,
                    label="chosen reward")
            ax.plot([r["step"] for r in train], [r["rewards/rejected"] for r in train], lw=0.8, alpha=0.7,
                    label="rejected reward")
        if key == "rewards/accuracies":
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(os.path.basename(os.path.abspath(run_dir)))
    fig.tight_layout()
    tmp = out + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)
    return out
