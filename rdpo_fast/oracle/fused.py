"""Unfused reference of FusedLinearPreferenceLoss: full logits, log_softmax, gather, per-sequence sums,
the reference preference head, NLL and TRL's logits/* means, written plainly (tests run it in float64).
TRL's options as TRL 1.16 computes them: a loss list with loss_weights, sft as the chosen-token NLL,
WPO weights exp(mean(log p - log sum p^2)) per sequence, without gradient, their product per pair."""
from __future__ import annotations

import torch

from .logprobs import logits_from_hidden, ref_log_sum_sq_probs, ref_logprobs, transform_logits
from .preference import ref_kto_loss, ref_preference_loss


def ref_ld_tail(target, ignore_index):
    """True for completion tokens past the pair's shorter completion (LD-DPO's verbose tail)."""
    P = target.shape[0] // 2
    keep = target != ignore_index
    counts = keep.sum(1)
    public = torch.minimum(counts[:P], counts[P:]).repeat(2)
    rank = keep.long().cumsum(1) - 1
    return keep & (rank >= public[:, None])


def ref_model_logits(hidden, weight, bias=None, logit_scale=1.0, softcap=None, temperature=1.0):
    """The logits the softmax sees, in SPEC order: raw * logit_scale, then softcap, then temperature."""
    return transform_logits(logits_from_hidden(hidden, weight, bias) * logit_scale, temperature, softcap)


def ref_token_logps(hidden, weight, target, bias, ignore_index, transform):
    return ref_logprobs(ref_model_logits(hidden, weight, bias, **transform), target, ignore_index=ignore_index)


def ref_sequence_logps(hidden, weight, target, bias, ignore_index, average_log_prob, ld_alpha, transform=None):
    logp = ref_token_logps(hidden, weight, target, bias, ignore_index, transform or {})
    if ld_alpha is not None:
        logp = torch.where(ref_ld_tail(target, ignore_index), ld_alpha * logp, logp)
    seq = logp.sum(1)
    if average_log_prob:
        seq = seq / (target != ignore_index).sum(1)
    return seq


def ref_wpo_weights(hidden, weight, target, bias, ignore_index, transform=None):
    """TRL's per-pair WPO weights (no gradient): per sequence exp(mean over completion tokens of
    log p(label) - log sum_v p_v^2), chosen times rejected."""
    with torch.no_grad():
        logits = ref_model_logits(hidden, weight, bias, **(transform or {}))
        keep = target != ignore_index
        logp = ref_logprobs(logits, target, ignore_index=ignore_index)
        aligned = (logp - ref_log_sum_sq_probs(logits, target, ignore_index=ignore_index)) * keep
        w = torch.exp(aligned.sum(1) / keep.sum(1))
        P = target.shape[0] // 2
        return w[:P] * w[P:]


def ref_fused_preference_loss(weight, _input, target, bias=None, *, ref_input=None, ref_weight=None,
                              ref_bias=None, ref_chosen_logps=None, ref_rejected_logps=None,
                              soft_labels=None, ignore_index=-100, beta=0.1, alpha=1.0,
                              compute_nll_loss=False, use_ref_model=True, average_log_prob=False,
                              loss_type="sigmoid", label_smoothing=0.0, tau=0.05, gamma=0.0, ld_alpha=None,
                              num_pairs=None, num_chosen_tokens=None, loss_weights=None, use_weighting=False,
                              f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5, logit_scale=1.0,
                              softcap=None, temperature=1.0):
    transform = dict(logit_scale=logit_scale, softcap=softcap, temperature=temperature)
    P = _input.shape[0] // 2
    keep = target != ignore_index
    counts = keep.sum(1)
    names = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    mws = [1.0] * len(names) if loss_weights is None else list(loss_weights)
    head = [(n, w) for n, w in zip(names, mws) if n != "sft"]
    sft_weight = sum(w for n, w in zip(names, mws) if n == "sft")
    free = {"simpo", "orpo", "cpo"}
    seq = ref_sequence_logps(_input, weight, target, bias, ignore_index, average_log_prob, ld_alpha, transform)
    c, r = seq[:P], seq[P:]
    if not use_ref_model:
        cref = rref = None if set(names) <= free | {"sft"} else torch.zeros_like(c)
    elif ref_chosen_logps is not None:
        cref, rref = ref_chosen_logps.to(c.dtype), ref_rejected_logps.to(c.dtype)
    else:
        with torch.no_grad():
            ref = ref_sequence_logps(ref_input, ref_weight, target, ref_bias, ignore_index, average_log_prob,
                                     ld_alpha, transform)
        cref, rref = ref[:P], ref[P:]
    weights = ref_wpo_weights(_input, weight, target, bias, ignore_index, transform) if use_weighting else None
    n_pairs = P if num_pairs is None else num_pairs
    n_tok = int(counts[:P].sum()) if num_chosen_tokens is None else num_chosen_tokens
    raw = ref_token_logps(_input, weight, target, bias, ignore_index, transform)
    nll_on = compute_nll_loss or sft_weight != 0
    nll = -raw[:P].sum() / n_tok if nll_on else torch.zeros((), dtype=c.dtype)
    loss = (alpha * nll if compute_nll_loss else 0.0)
    if sft_weight:
        loss = loss + sft_weight * nll
    if head:
        lens = {"chosen_lengths": counts[:P].to(c.dtype), "rejected_lengths": counts[P:].to(c.dtype)}
        losses, rew_c, rew_r = ref_preference_loss(
            c, r, cref, rref, loss_type=[n for n, _ in head], loss_weights=[w for _, w in head], beta=beta,
            label_smoothing=label_smoothing, soft_labels=None if soft_labels is None else soft_labels.to(c.dtype),
            gamma=gamma, tau=tau, weights=weights, f_divergence_type=f_divergence_type,
            f_alpha_divergence_coef=f_alpha_divergence_coef, **lens)
        loss = loss + losses.sum() / n_pairs
    else:
        rew_c = beta * (c if cref is None else c - cref)
        rew_r = beta * (r if rref is None else r - rref)
    with torch.no_grad():
        z = ref_model_logits(_input, weight, bias, **transform)
        logit_rows = z.sum(-1) * keep
        V = weight.shape[0]
        chosen_mean = logit_rows[:P].sum() / (counts[:P].sum() * V)
        rejected_mean = logit_rows[P:].sum() / (counts[P:].sum() * V)
    return loss, (c, r, chosen_mean, rejected_mean, nll, rew_c.detach(), rew_r.detach())


def ref_fused_kto_loss(_input, weight, target, bias=None, preference_labels=None, *, ref_input=None,
                       ref_weight=None, ref_bias=None, ref_logps=None, kl=None, ignore_index=-100, beta=0.1,
                       use_ref_model=False, average_log_prob=False, num_sequences=None):
    """Unfused FusedLinearKTOLoss: (loss, (chosen_logps_sum, rejected_logps_sum, chosen_logits_sum,
    rejected_logits_sum, chosen_rewards_sum, rejected_rewards_sum)), logits summed over completion tokens."""
    keep = target != ignore_index
    seq = ref_sequence_logps(_input, weight, target, bias, ignore_index, average_log_prob, None)
    ref = None
    if use_ref_model:
        if ref_logps is not None:
            ref = ref_logps.to(seq.dtype)
        else:
            with torch.no_grad():
                ref = ref_sequence_logps(ref_input, ref_weight, target, ref_bias, ignore_index, average_log_prob, None)
    losses, rewards = ref_kto_loss(seq, ref, preference_labels, beta=beta, kl=kl)
    n = _input.shape[0] if num_sequences is None else num_sequences
    d = preference_labels.to(seq.dtype)
    with torch.no_grad():
        logits = (logits_from_hidden(_input, weight, bias).sum(-1) * keep).sum(1)
    return losses.sum() / n, ((seq * d).sum(), (seq * (1 - d)).sum(), (logits * d).sum(), (logits * (1 - d)).sum(),
                              (rewards * d).sum().detach(), (rewards * (1 - d)).sum().detach())


def ref_token_stats(_input, weight, target, bias=None, *, ignore_index=-100, logit_scale=1.0, softcap=None,
                    temperature=1.0):
    """TRL's token metrics as sums: the entropy over all completion tokens, and the number of chosen
    tokens whose label is the argmax (ties: the lowest id, as torch.argmax)."""
    P = _input.shape[0] // 2
    keep = target != ignore_index
    z = ref_model_logits(_input, weight, bias, logit_scale=logit_scale, softcap=softcap, temperature=temperature)
    logp_all = torch.log_softmax(z, -1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    top1 = (z.argmax(-1) == target) & keep
    return {"entropy_sum": (entropy * keep).sum(), "chosen_top1": top1[:P].sum()}
