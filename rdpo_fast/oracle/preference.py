"""Reference per-pair preference losses (SPEC section 4), written plainly from the table's formulas.

Computes in whatever dtype it is given (tests pass float64) and is differentiable by autograd, so it is
both the oracle of the tests and the maths of the CPU fallback. Batch-level losses follow TRL 1.16's
definitions: aot / aot_unpaired sort the batch's log-ratios (losses[k] is then the loss of sorted
position k), sft gives every pair the batch's chosen-token NLL. Every log-sigmoid is
torch.nn.functional.logsigmoid, and exp(-z) * sigmoid(z / tau) is exp(-z + logsigmoid(z / tau)), so a
large |beta * d| gives finite values and gradients instead of inf * 0.
No validation here: rdpo_fast.losses.head.validate_preference_args does that for the public op.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ls = F.logsigmoid
s = torch.sigmoid


def _scores(rho, f_divergence_type, alpha):
    """TRL's f-DPO scores of log-ratios (dpo_trainer._compute_loss), in the given dtype."""
    if f_divergence_type == "reverse_kl" or (f_divergence_type == "alpha_divergence" and abs(alpha - 1) < 1e-6):
        return rho
    if f_divergence_type == "forward_kl":
        return 1 - torch.exp(-rho)
    if f_divergence_type == "js_divergence":
        return math.log(2) + ls(rho)
    if f_divergence_type == "alpha_divergence":
        # TRL clamps t at 80 for fp32 log-probs (what every rdpo_fast path computes in).
        t = torch.clamp((alpha - 1) * rho, max=80.0)
        return (torch.exp(t) - 1) / (alpha - 1)
    raise ValueError(f"unknown f_divergence_type {f_divergence_type!r}")


def _cdpo(z, eps):
    return -(1 - eps) * ls(z) - eps * ls(-z)


def _one(loss_type, c, r, cref, rref, *, beta, eps, soft_labels, chosen_lengths, rejected_lengths, gamma, tau,
         f_divergence_type, f_alpha_divergence_coef):
    b = beta
    if loss_type == "simpo":
        x = c / chosen_lengths - r / rejected_lengths
        return _cdpo(b * x - gamma, eps), b * c / chosen_lengths, b * r / rejected_lengths
    if loss_type == "orpo":
        a, bb = c / chosen_lengths, r / rejected_lengths
        log_odds = (a - bb) - (torch.log(-torch.expm1(a)) - torch.log(-torch.expm1(bb)))
        return -b * ls(log_odds), b * a, b * bb
    if loss_type == "cpo":
        return _cdpo(b * (c - r), eps), b * c, b * r
    if loss_type == "sft":
        zeros = torch.zeros_like(c)
        cref = zeros if cref is None else cref
        rref = zeros if rref is None else rref
        nll = -c.sum() / chosen_lengths.sum()
        return nll.expand(c.shape[0]), b * (c - cref), b * (r - rref)

    rho_w = c - cref
    rho_l = r - rref
    rewards = (b * rho_w, b * rho_l)
    # Stable sorts: tied log-ratios (a kink of the loss) then take the same subgradient as the kernel's.
    if loss_type == "aot":
        delta = torch.sort(c - r, stable=True).values - torch.sort(cref - rref, stable=True).values
        return _cdpo(b * delta, eps), *rewards
    if loss_type == "aot_unpaired":
        delta = torch.sort(rho_w, stable=True).values - torch.sort(rho_l, stable=True).values
        return _cdpo(b * delta, eps), *rewards

    sw = _scores(rho_w, f_divergence_type, f_alpha_divergence_coef)
    sl = _scores(rho_l, f_divergence_type, f_alpha_divergence_coef)
    d = sw - sl
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
        losses = (sw / chosen_lengths - sl / rejected_lengths - 1 / (2 * b)) ** 2
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
        losses = s(b * rho_w) + (1 - s(b * (rho_w - rho_l)))
    elif loss_type == "discopop":
        m = s(z / tau)
        losses = -ls(z) * (1 - m) + torch.exp(-z + ls(z / tau))
    elif loss_type == "sigmoid_norm":
        losses = -ls(b * (sw / chosen_lengths - sl / rejected_lengths))
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    return (losses, *rewards)


def ref_preference_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                        *, loss_type="sigmoid", beta=0.1, label_smoothing=0.0, soft_labels=None,
                        chosen_lengths=None, rejected_lengths=None, gamma=0.0, tau=0.05, loss_weights=None,
                        weights=None, f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5):
    """Per-pair (losses [P], chosen_rewards [P], rejected_rewards [P]).

    loss_type may be a list (TRL's loss combination): losses = sum_k loss_weights[k] * losses_k, the
    rewards of the first. weights: per-pair WPO weights multiplying every member's losses.
    soft_labels p is used by rdpo (None means p = 1) and, when given, by sigmoid in place of
    1 - label_smoothing. ref_*_logps may be None for the reference-free losses (simpo, orpo, cpo) and sft.
    """
    names = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    mws = [1.0] * len(names) if loss_weights is None else list(loss_weights)
    total, rewards = None, None
    for name, mw in zip(names, mws):
        losses, rew_c, rew_r = _one(
            name, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta,
            eps=label_smoothing, soft_labels=soft_labels, chosen_lengths=chosen_lengths,
            rejected_lengths=rejected_lengths, gamma=gamma, tau=tau, f_divergence_type=f_divergence_type,
            f_alpha_divergence_coef=f_alpha_divergence_coef)
        if weights is not None:
            losses = losses * weights
        total = mw * losses if total is None else total + mw * losses
        if rewards is None:
            rewards = (rew_c, rew_r)
    return total, *rewards


def ref_kto_loss(logps, ref_logps, desirable, *, beta=0.1, kl=None):
    """KTO as Liger's LigerFusedLinearKTOLoss computes it, per sequence: 1 - sigmoid(beta (rho - kl) m),
    m = +1 for desirable, -1 for undesirable, rho = logp - ref_logp (logp alone without a reference).
    Returns (losses [B], rewards beta * rho [B])."""
    rho = logps if ref_logps is None else logps - ref_logps
    m = torch.where(desirable, 1.0, -1.0).to(rho.dtype)
    x = beta * (rho if kl is None else rho - kl) * m
    return 1 - s(x), beta * rho
