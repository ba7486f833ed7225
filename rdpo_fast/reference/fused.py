"""Unfused reference of FusedLinearPreferenceLoss: full logits, log_softmax, gather, per-sequence sums,
the reference preference head, NLL and TRL's logits/* means, written plainly (tests run it in float64)."""
from __future__ import annotations

import torch

from .logprobs import logits_from_hidden, ref_logprobs, transform_logits
from .preference import ref_preference_loss


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


def ref_fused_preference_loss(weight, _input, target, bias=None, *, ref_input=None, ref_weight=None,
                              ref_bias=None, ref_chosen_logps=None, ref_rejected_logps=None,
                              soft_labels=None, ignore_index=-100, beta=0.1, alpha=1.0,
                              compute_nll_loss=False, use_ref_model=True, average_log_prob=False,
                              loss_type="sigmoid", label_smoothing=0.0, tau=0.05, gamma=0.0, ld_alpha=None,
                              num_pairs=None, num_chosen_tokens=None, logit_scale=1.0, softcap=None,
                              temperature=1.0):
    transform = dict(logit_scale=logit_scale, softcap=softcap, temperature=temperature)
    P = _input.shape[0] // 2
    keep = target != ignore_index
    counts = keep.sum(1)
    seq = ref_sequence_logps(_input, weight, target, bias, ignore_index, average_log_prob, ld_alpha, transform)
    c, r = seq[:P], seq[P:]
    if not use_ref_model:
        cref = rref = None if loss_type == "simpo" else torch.zeros_like(c)
    elif ref_chosen_logps is not None:
        cref, rref = ref_chosen_logps.to(c.dtype), ref_rejected_logps.to(c.dtype)
    else:
        with torch.no_grad():
            ref = ref_sequence_logps(ref_input, ref_weight, target, ref_bias, ignore_index, average_log_prob,
                                     ld_alpha, transform)
        cref, rref = ref[:P], ref[P:]
    uses_len = loss_type in ("ipo", "sigmoid_norm", "simpo")
    losses, rew_c, rew_r = ref_preference_loss(
        c, r, cref, rref, loss_type=loss_type, beta=beta, label_smoothing=label_smoothing,
        soft_labels=None if soft_labels is None else soft_labels.to(c.dtype),
        chosen_lengths=counts[:P].to(c.dtype) if uses_len else None,
        rejected_lengths=counts[P:].to(c.dtype) if uses_len else None, gamma=gamma, tau=tau)
    n_pairs = P if num_pairs is None else num_pairs
    n_tok = int(counts[:P].sum()) if num_chosen_tokens is None else num_chosen_tokens
    raw = ref_token_logps(_input, weight, target, bias, ignore_index, transform)
    nll = -raw[:P].sum() / n_tok if compute_nll_loss else torch.zeros((), dtype=c.dtype)
    loss = losses.sum() / n_pairs + (alpha * nll if compute_nll_loss else 0.0)
    with torch.no_grad():
        z = ref_model_logits(_input, weight, bias, **transform)
        logit_rows = z.sum(-1) * keep
        V = weight.shape[0]
        chosen_mean = logit_rows[:P].sum() / (counts[:P].sum() * V)
        rejected_mean = logit_rows[P:].sum() / (counts[P:].sum() * V)
    return loss, (c, r, chosen_mean, rejected_mean, nll, rew_c, rew_r)


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
