"""Training data of the rDPO paper's baselines, from the same synthesised (and scored) pairs.

- SFT: supervised fine-tuning on every teacher revision (chosen), the original answer unused.
- dSC, distilled self-critique: SFT on only the revisions the scorer rates above the original answer
  (chosen_score > rejected_score; for a pairwise judge, which gives one preference per pair,
  soft_label > 0.5); a revision that scored the same or worse, or a pair without a score, is left out
  and counted.
Both train with loss_type "sft" (NLL on chosen only), which reads no soft label: `without_labels` strips
the scores from the training records (scored.jsonl keeps them). The records keep prompt/chosen/rejected,
so the same file also trains DPO for comparison.
"""
from __future__ import annotations

LABEL_FIELDS = ("soft_label", "chosen_score", "rejected_score")


def without_labels(records: list[dict]) -> list[dict]:
    """The records without soft labels or scores (a loss that reads none refuses them)."""
    return [{k: v for k, v in r.items() if k not in LABEL_FIELDS} for r in records]


def sft_records(records: list[dict]) -> tuple[list[dict], dict]:
    """Every pair (the SFT baseline)."""
    return list(records), {"records": len(records), "kept": len(records)}


def distill_self_critique(records: list[dict]) -> tuple[list[dict], dict]:
    """The pairs whose revision the scorer rates higher than the original answer (the dSC baseline)."""
    kept, not_higher, unscored = [], 0, 0
    for r in records:
        c, o, p = r.get("chosen_score"), r.get("rejected_score"), r.get("soft_label")
        if c is not None and o is not None:
            higher = c > o
        elif p is not None:
            higher = p > 0.5
        else:
            unscored += 1
            continue
        if higher:
            kept.append(r)
        else:
            not_higher += 1
    return kept, {"records": len(records), "kept": len(kept), "dropped_not_higher": not_higher,
                  "dropped_unscored": unscored}
