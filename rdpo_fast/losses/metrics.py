"""TRL's preference metric names and how each comes from the fused loss's aux outputs, without logits
(SPEC section 4): the one table that `preference_metrics`, the training loop and the TRL integration read."""
from __future__ import annotations

from collections.abc import Sequence

import torch

# Means over pairs, in TRL's order: each averages one value per pair (pair_values).
PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected")
# Means over completion tokens: the loss returns them already averaged over its batch (token_means).
TOKEN_METRICS = ("logits/chosen", "logits/rejected")
METRIC_NAMES = PAIR_METRICS + TOKEN_METRICS
# The NLL term's value; TRL logs it only when that term is on.
NLL_METRIC = "nll_loss"


def pair_values(aux: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """{name: [B] per-pair values} of the PAIR_METRICS, in the dtype and on the device of `aux` (callers
    cast first: the loop sums in float64, TRL gathers as they are). aux = (chosen_logps, rejected_logps,
    chosen_logits_mean, rejected_logits_mean, nll_loss, chosen_rewards, rejected_rewards), the layout
    FusedLinearPreferenceLoss (and Liger's loss) returns."""
    chosen_logps, rejected_logps, _, _, _, chosen_rew, rejected_rew = aux
    values = (chosen_rew, rejected_rew, (chosen_rew > rejected_rew).to(chosen_rew.dtype), chosen_rew - rejected_rew,
              chosen_logps, rejected_logps)
    return dict(zip(PAIR_METRICS, values))


def token_means(aux: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """{name: scalar} of the TOKEN_METRICS: the batch's mean logit over chosen and over rejected completion
    tokens (the fused loss emits them without materialising logits)."""
    return dict(zip(TOKEN_METRICS, (aux[2], aux[3])))


def nll_value(aux: Sequence[torch.Tensor]) -> torch.Tensor:
    """The NLL term of the batch (zero when it is off)."""
    return aux[4]


def preference_metrics(aux: Sequence[torch.Tensor], prefix: str = "") -> dict[str, float]:
    """Floats under TRL's names (METRIC_NAMES and nll_loss) for one batch's aux, as
    FusedLinearPreferenceLoss returns it. prefix="eval_" names evaluation metrics."""
    with torch.no_grad():
        aux = [t.float() for t in aux]
        values = {**{k: v.mean() for k, v in pair_values(aux).items()}, **token_means(aux),
                  NLL_METRIC: nll_value(aux)}
        # One host transfer for all of them.
        stacked = torch.stack([v.reshape(()) for v in values.values()]).tolist()
    return {prefix + k: v for k, v in zip(values, stacked)}
