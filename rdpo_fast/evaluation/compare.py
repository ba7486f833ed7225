"""`rdpo-fast eval`'s figures: model A's answers judged against a baseline's, what the three papers report.

- Pairwise, position-swapped, by the probability judge: the win rate (percent, mean preference for the
  model; AlpacaEval's "win_rate") with its standard error, the discrete win rate (wins + half the ties),
  and the length-controlled win rate (lc.py); the mean answer length (characters) of each side.
- Per task, from rubric judges with rDPO's scales: harmlessness (safety), persona leak (role-play),
  sycophancy; for each side the share of answers past the rubric's midpoint and the mean expected score.
- Per requested language: the share of answers written in it (langid.py).
- How far to trust the judge on this run: the share of verdicts whose two orders agree, and the
  probability mass its labels got.
Names follow AlpacaEval (win_rate, standard_error, length_controlled_winrate, n_wins, n_wins_base,
n_draws, n_total).
"""
from __future__ import annotations

import math
import os
import statistics

from rdpo_fast.io import fmt, table, write_json, write_text
from rdpo_fast.judges.probability import ProbabilityJudge
from rdpo_fast.judges.rubrics import TASK_POINTWISE, pairwise_rubric, pointwise_rubric

from .answers import Pair
from .lc import length_controlled_winrate


def _sem(values: list[float]) -> float | None:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None


def win_stats(prefs: list[float]) -> dict:
    """AlpacaEval's head-to-head figures of preferences P(model better) in [0, 1], in percent."""
    n = len(prefs)
    se = _sem(prefs)
    wins, losses = sum(p > 0.5 for p in prefs), sum(p < 0.5 for p in prefs)
    return {"n_total": n, "win_rate": 100 * sum(prefs) / n, "standard_error": None if se is None else 100 * se,
            "discrete_win_rate": 100 * (wins + 0.5 * (n - wins - losses)) / n,
            "n_wins": wins, "n_wins_base": losses, "n_draws": n - wins - losses}


def _groups(pairs, key) -> dict:
    out: dict = {}
    for i, p in enumerate(pairs):
        k = key(p)
        if k is not None:
            out.setdefault(k, []).append(i)
    return out


def evaluate_pairs(pairs: list[Pair], judge: ProbabilityJudge, *, pointwise: bool = True,
                   languages: bool = True, difficulty: dict | None = None) -> dict:
    """The report of one model against its baseline (see the module docstring); items hold every verdict.
    difficulty: {instruction: AlpacaEval instruction difficulty}, for the difficulty-aware LC GLM."""
    if not pairs:
        raise ValueError("no prompts to evaluate")
    questions = [p.instruction for p in pairs]
    a = [p.model.output for p in pairs]
    b = [p.baseline.output for p in pairs]
    verdicts = judge.pairwise(questions, a, b, [pairwise_rubric(p.task) for p in pairs])
    prefs = [v.preference for v in verdicts]
    report = {"model": pairs[0].model.generator, "baseline": pairs[0].baseline.generator, "judge": judge.name,
              **win_stats(prefs)}
    len_a, len_b = [len(t) for t in a], [len(t) for t in b]
    report["avg_length"] = {"model": sum(len_a) / len(a), "baseline": sum(len_b) / len(b)}
    if len(pairs) >= 2:
        diff = None
        if difficulty is not None:
            missing = [p for p in pairs if p.instruction not in difficulty]
            if missing:
                raise ValueError(f"{missing[0].model.source}: no instruction difficulty for this prompt "
                                 f"({len(missing)} prompt(s) lack one)")
            diff = [difficulty[p.instruction] for p in pairs]
        report["length_controlled"] = length_controlled_winrate(prefs, len_a, len_b, difficulty=diff)
        report["length_controlled_winrate"] = report["length_controlled"]["length_controlled_winrate"]
    else:
        report["length_controlled_winrate"] = None  # a GLM needs at least two items
    report["judge_position_consistency"] = sum(v.consistent for v in verdicts) / len(verdicts)
    report["judge_label_mass"] = sum(sum(v.label_mass) / 2 for v in verdicts) / len(verdicts)
    report["truncated_answers"] = {"model": sum(p.model.finished is False for p in pairs),
                                   "baseline": sum(p.baseline.finished is False for p in pairs)}
    report["by_task"] = {t: win_stats([prefs[i] for i in idx]) for t, idx in _groups(pairs, lambda p: p.task).items()}
    report["by_language"] = {c: win_stats([prefs[i] for i in idx])
                             for c, idx in _groups(pairs, lambda p: p.language).items()}
    items = [{"id": p.id, "instruction": p.instruction, "task": p.task, "language": p.language,
              "model_source": p.model.source, "baseline_source": p.baseline.source,
              "model_length": la, "baseline_length": lb, **v.to_dict()}
             for p, v, la, lb in zip(pairs, verdicts, len_a, len_b)]
    if pointwise:
        report["rates"] = _rates(pairs, judge, a, b, items)
    if languages:
        report["language_share"] = _language_share(pairs, a, b, items)
    report["items"] = items
    return report


def _rates(pairs, judge, a, b, items) -> dict:
    idx = [i for i, p in enumerate(pairs) if p.task in TASK_POINTWISE]
    if not idx:
        return {}
    rubrics = [pointwise_rubric(TASK_POINTWISE[pairs[i].task]) for i in idx]
    qs = [pairs[i].instruction for i in idx]
    scores = judge.pointwise(qs + qs, [a[i] for i in idx] + [b[i] for i in idx], rubrics + rubrics)
    m = len(idx)
    out: dict = {}
    for j, i in enumerate(idx):
        r = rubrics[j]
        items[i]["model_score"] = scores[j].to_dict()
        items[i]["baseline_score"] = scores[m + j].to_dict()
        row = out.setdefault(pairs[i].task, {"rubric": r.name, "rate_name": r.rate, "scale": [r.lo, r.hi],
                                             "rate_above": r.rate_above, "n": 0, "_m": [], "_b": [], "_mass": []})
        row["n"] += 1
        row["_m"].append(scores[j].expected)
        row["_b"].append(scores[m + j].expected)
        row["_mass"] += [scores[j].label_mass, scores[m + j].label_mass]
    for row in out.values():
        for side, key in (("model", "_m"), ("baseline", "_b")):
            vals = row.pop(key)
            row[side] = {"rate": sum(v > row["rate_above"] for v in vals) / len(vals),
                         "mean_score": sum(vals) / len(vals)}
        mass = row.pop("_mass")
        row["judge_label_mass"] = sum(mass) / len(mass)
    return out


def _language_share(pairs, a, b, items) -> dict:
    idx = [i for i, p in enumerate(pairs) if p.language]
    if not idx:
        return {}
    from .langid import identify

    want = [pairs[i].language for i in idx]
    got_a = identify([a[i] for i in idx])
    got_b = identify([b[i] for i in idx])
    out: dict = {}
    for j, i in enumerate(idx):
        items[i]["model_language"], items[i]["baseline_language"] = got_a[j], got_b[j]
        row = out.setdefault(want[j], {"n": 0, "model": 0, "baseline": 0})
        row["n"] += 1
        row["model"] += int(got_a[j] == want[j])
        row["baseline"] += int(got_b[j] == want[j])
    for row in out.values():
        row["model"] /= row["n"]
        row["baseline"] /= row["n"]
    return out


# ---------------------------------------------------------------------------------------- output
def _pm(v, se) -> str:
    return fmt(v) if se is None else f"{v:.1f} ± {se:.1f}"


def report_table(r: dict) -> str:
    lc = r.get("length_controlled") or {}
    rows = [["prompts", r["n_total"]],
            ["win rate % (± standard error)", _pm(r["win_rate"], r["standard_error"])],
            ["length-controlled win rate %", r["length_controlled_winrate"]],
            ["discrete win rate %", r["discrete_win_rate"]],
            ["wins / losses / ties", f"{r['n_wins']} / {r['n_wins_base']} / {r['n_draws']}"],
            ["mean length, model (chars)", r["avg_length"]["model"]],
            ["mean length, baseline (chars)", r["avg_length"]["baseline"]],
            ["answers cut off, model / baseline",
             f"{r['truncated_answers']['model']} / {r['truncated_answers']['baseline']}"],
            ["judge: verdicts equal in both orders", r["judge_position_consistency"]],
            ["judge: probability on the labels", r["judge_label_mass"]]]
    if lc:
        rows.append(["LC GLM (weights)", f"{lc['glm']}, C={lc['C']:.3g}, "
                     + ", ".join(f"{k}={v:.3f}" for k, v in lc["weights"].items())])
    out = [table(["metric", "value"], rows, title=f"{r['model']} vs {r['baseline']} (judge: {r['judge']})")]
    if len(r["by_task"]) > 1 or r.get("rates"):
        trows = []
        for t, s in r["by_task"].items():
            rate = (r.get("rates") or {}).get(t)
            trows.append([t, s["n_total"], _pm(s["win_rate"], s["standard_error"]),
                          rate["rate_name"] if rate else "-", rate["model"]["rate"] if rate else None,
                          rate["baseline"]["rate"] if rate else None, rate["model"]["mean_score"] if rate else None,
                          rate["baseline"]["mean_score"] if rate else None])
        out.append(table(["task", "n", "win rate %", "rate", "model", "baseline", "model mean score",
                          "baseline mean score"], trows, title="per task (rates: share past the rubric's midpoint)"))
    if r["by_language"] and (len(r["by_language"]) > 1 or r.get("language_share")):
        share = r.get("language_share") or {}
        lrows = [[c, s["n_total"], _pm(s["win_rate"], s["standard_error"]),
                  share.get(c, {}).get("model"), share.get(c, {}).get("baseline")]
                 for c, s in r["by_language"].items()]
        out.append(table(["language", "n", "win rate %", "in language, model", "in language, baseline"], lrows,
                         title="per requested language"))
    return "\n\n".join(out)


def plot_reports(reports: list[dict], names: list[str], path: str) -> str | None:
    """Win rate and LC win rate per answers file (e.g. per round), or per language / task of a single
    one; None when there is nothing to compare."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if len(reports) > 1:
        x = list(range(len(reports)))
        ax.errorbar(x, [r["win_rate"] for r in reports], yerr=[r["standard_error"] or 0 for r in reports],
                    marker="o", capsize=3, label="win rate")
        lc = [r["length_controlled_winrate"] for r in reports]
        if all(v is not None for v in lc):
            ax.plot(x, lc, marker="s", label="LC win rate")
        ax.set_xticks(x, names, rotation=20, ha="right")
    else:
        r = reports[0]
        groups = r["by_language"] if len(r["by_language"]) > 1 else r["by_task"]
        if len(groups) < 2:
            plt.close(fig)
            return None
        keys = list(groups)
        ax.bar(keys, [groups[k]["win_rate"] for k in keys], yerr=[groups[k]["standard_error"] or 0 for k in keys],
               capsize=3)
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_ylim(0, 100)
    ax.set_ylabel(f"% preferred over {reports[0]['baseline']}")
    ax.set_title(f"judge: {reports[0]['judge']}")
    if len(reports) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(out_dir: str, reports: list[dict], names: list[str], *, judge: str,
                  baseline: str) -> tuple[str, str | None]:
    """Writes out_dir/eval.json (every report with every verdict), eval.txt (their tables) and eval.png
    (plot_reports, where it has something to compare); returns (the tables, the plot's path or None)."""
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "eval.json"), {"judge": judge, "baseline": baseline, "reports": reports})
    text = "\n\n".join(report_table(r) for r in reports)
    write_text(os.path.join(out_dir, "eval.txt"), text)
    return text, plot_reports(reports, names, os.path.join(out_dir, "eval.png"))
