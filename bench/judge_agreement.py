"""What a probability judge can tell: its agreement with the known labels of the shipped held-out
preference pairs (chosen = the safe / polite / honest answer), and with itself under position swap.

    python bench/judge_agreement.py --judge smollm2-135m --pairs 54 --out bench/results/judge-agreement-smollm2.json

Pairwise: the share of pairs where the combined preference P(chosen better) > 0.5, the mean preference,
the share whose two presentation orders agree on the winner, and how often each order alone picks the
first-shown answer (a judge that always picks the first one is pure position bias: the swap combination
then cancels it to ~0.5). Pointwise (the task rubrics of rdpo_fast.judges.rubrics): the share of pairs
whose chosen answer gets the better expected score. Timed; the machine is named in the output.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

from rdpo_fast.data.shipped import default_path
from rdpo_fast.io import write_json
from rdpo_fast.judges.probability import ProbabilityJudge
from rdpo_fast.judges.rubrics import POINTWISE, TASK_POINTWISE, pairwise_rubric
from rdpo_fast.lm.chat import as_text, last_user_text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--judge", default="smollm2-135m")
    ap.add_argument("--pairs", type=int, default=54, help="the first N held-out pairs (default all 54)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--no-pointwise", dest="pointwise", action="store_false")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    with open(default_path("eval"), encoding="utf-8") as f:
        recs = [json.loads(line) for line in f][: a.pairs]
    q = [last_user_text(r["prompt"]) for r in recs]
    chosen, rejected = [as_text(r["chosen"]) for r in recs], [as_text(r["rejected"]) for r in recs]
    t0 = time.time()
    judge = ProbabilityJudge.load(a.judge, batch_size=a.batch_size, progress=True)
    out = {"judge": a.judge, "pairs": len(recs), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
           "load_seconds": round(time.time() - t0, 1)}
    t = time.time()
    v = judge.pairwise(q, chosen, rejected, [pairwise_rubric(r.get("task")) for r in recs])
    n = len(v)
    out["pairwise"] = {
        "agreement_with_labels": sum(x.preference > 0.5 for x in v) / n,
        "mean_preference_for_chosen": sum(x.preference for x in v) / n,
        "position_consistency": sum(x.consistent for x in v) / n,
        "first_shown_picked": (sum(x.first_order > 0.5 for x in v) + sum(x.second_order < 0.5 for x in v)) / (2 * n),
        "label_mass": sum(sum(x.label_mass) / 2 for x in v) / n,
        "by_task": {t: sum(x.preference > 0.5 for x, r in zip(v, recs) if r["task"] == t)
                    / sum(r["task"] == t for r in recs) for t in sorted({r["task"] for r in recs})},
        "seconds": round(time.time() - t, 1)}
    if a.pointwise:
        t = time.time()
        rub = [POINTWISE[TASK_POINTWISE[r["task"]]] for r in recs]
        s = judge.pointwise(q + q, chosen + rejected, rub + rub)
        # harmlessness is "higher is better"; persona leak and sycophancy are "lower is better"
        better = [(s[i].expected > s[n + i].expected) if rub[i].name == "harmlessness"
                  else (s[i].expected < s[n + i].expected) for i in range(n)]
        out["pointwise"] = {"chosen_rated_better": sum(better) / n,
                            "label_mass": sum(x.label_mass for x in s) / (2 * n),
                            "by_task": {t: sum(b for b, r in zip(better, recs) if r["task"] == t)
                                        / sum(r["task"] == t for r in recs) for t in sorted({r["task"] for r in recs})},
                            "seconds": round(time.time() - t, 1)}
    write_json(a.out, out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
