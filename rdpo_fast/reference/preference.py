"""Reference per-pair preference losses (SPEC section 4), written plainly from the table's formulas.

Computes in whatever dtype it is given (tests pass float64) and is differentiable by autograd, so it is
both the oracle of the tests and the maths of the CPU fallback. Every log-sigmoid is
torch.nn.functional.logsigmoid, and exp(-z) * sigmoid(z / tau) is exp(-z + logsigmoid(z / tau)), so a
large |beta * d| gives finite values and gradients instead of inf * 0.
No validation here: rdpo_fast.preference.validate_preference_args does that for the public op.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ls = F.logsigmoid
s = torch.sigmoid


def ref_preference_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                        *, loss_type="sigmoid", beta=0.1, label_smoothing=0.0, soft_labels=None,
                        chosen_lengths=None, rejected_lengths=None, gamma=0.0, tau=0.05):
    """Per-pair (losses [P], chosen_rewards [P], rejected_rewards [P]).

    soft_labels p is used by rdpo (None means p = 1) and, when given, by sigmoid in place of
    1 - label_smoothing. ref_*_logps may be None for simpo, which does not read them.
    """
    c, r = policy_chosen_logps, policy_rejected_logps
    eps, b = label_smoothing, beta
    if loss_type == "simpo":
        x = c / chosen_lengths - r / rejected_lengths
        z = b * x - gamma
        losses = -(1 - eps) * ls(z) - eps * ls(-z)
        return losses, b * c / chosen_lengths, b * r / rejected_lengths

    rho_w = c - ref_chosen_logps
    rho_l = r - ref_rejected_logps
    d = rho_w - rho_l
    z = b * d
    if loss_type in ("sigmoid", "rdpo"):
        if soft_labels is not None:
            p = soft_labels
        else:
            p = 1.0 - eps if loss_type == "sigmoid" else 1.0
        losses = -p * ls(z) - (1 - p) * ls(-z)
    elif loss_type == "robust":
        losses = (-(1 - eps) * ls(z) + eps * ls(-z)) / (1 - 2 * eps)
    elif loss_type == "hinge":
        losses = torch.relu(1 - z)
    elif loss_type == "ipo":
        losses = (rho_w / chosen_lengths - rho_l / rejected_lengths - 1 / (2 * b)) ** 2
    elif loss_type == "exo_pair":
        losses = s(z) * (ls(z) - math.log(1 - eps)) + s(-z) * (ls(-z) - math.log(eps))
    elif loss_type == "nca_pair":
        losses = -ls(b * rho_w) - 0.5 * ls(-b * rho_w) - 0.5 * ls(-b * rho_l)
    elif loss_type == "bco_pair":
        losses = -ls(b * rho_w) - ls(-b * rho_l)
    elif loss_type == "sppo_hard":
        losses = (rho_w - 1 / (2 * b)) ** 2 + (rho_l + 1 / (2 * b)) ** 2
    elif loss_type == "apo_zero":
        losses = (1 - s(b * rho_w)) + s(b * rho_l)
    elif loss_type == "apo_down":
        losses = s(b * rho_w) + (1 - s(z))
    elif loss_type == "discopop":
        m = s(z / tau)
        losses = -ls(z) * (1 - m) + torch.exp(-z + ls(z / tau))
    elif loss_type == "sigmoid_norm":
        losses = -ls(b * (rho_w / chosen_lengths - rho_l / rejected_lengths))
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    return losses, b * rho_w, b * rho_l
