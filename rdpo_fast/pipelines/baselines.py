"""Training data of the rDPO paper's baselines, from the same synthesised (and scored) pairs.

- SFT: supervised fine-tuning on every teacher revision (chosen), the original answer unused.
- dSC, distilled self-critique: SFT on only the revisions the scorer rates above the original answer
  (chosen_score > rejected_score); a revision that scored the same or worse, or a pair the scorer
  could not score, is left out and counted.
Both train with loss_type "sft" (NLL on chosen only); the records keep prompt/chosen/rejected, so the
same file also trains DPO for comparison.
"""
from __future__ import annotations


def sft_records(records: list[dict]) -> tuple[list[dict], dict]:
    """Every pair (the SFT baseline)."""
    return list(records), {"records": len(records), "kept": len(records)}


def distill_self_critique(records: list[dict]) -> tuple[list[dict], dict]:
    """The pairs whose revision the scorer rates higher than the original answer (the dSC baseline)."""
    kept, not_higher, unscored = [], 0, 0
    for r in records:
        c, o = r.get("chosen_score"), r.get("rejected_score")
        if c is None or o is None:
            unscored += 1
        elif c > o:
            kept.append(r)
        else:
            not_higher += 1
    return kept, {"records": len(records), "kept": len(kept), "dropped_not_higher": not_higher,
                  "dropped_unscored": unscored}
