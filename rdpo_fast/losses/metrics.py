"""TRL's preference metrics from the fused loss's aux outputs, without logits (SPEC section 4)."""
from __future__ import annotations

import torch


def preference_metrics(aux, prefix: str = "") -> dict[str, float]:
    """aux = (chosen_logps, rejected_logps, chosen_logits_mean, rejected_logits_mean, nll_loss,
    chosen_rewards, rejected_rewards), as FusedLinearPreferenceLoss returns it. Returns floats under
    TRL's names: rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen,
    logps/rejected, logits/chosen, logits/rejected, nll_loss. prefix="eval_" names evaluation metrics."""
    chosen_logps, rejected_logps, chosen_logits, rejected_logits, nll, chosen_rew, rejected_rew = aux
    with torch.no_grad():
        values = {
            "rewards/chosen": chosen_rew.float().mean(),
            "rewards/rejected": rejected_rew.float().mean(),
            "rewards/accuracies": (chosen_rew > rejected_rew).float().mean(),
            "rewards/margins": (chosen_rew - rejected_rew).float().mean(),
            "logps/chosen": chosen_logps.float().mean(),
            "logps/rejected": rejected_logps.float().mean(),
            "logits/chosen": chosen_logits.float(),
            "logits/rejected": rejected_logits.float(),
            "nll_loss": nll.float(),
        }
        # One host transfer for all of them.
        stacked = torch.stack([v.reshape(()) for v in values.values()]).tolist()
    return {prefix + k: v for k, v in zip(values, stacked)}
