"""Reference per-token log-probs and per-sequence sums, written plainly with full logits.

Computes in whatever dtype it is given (tests pass float64). The logit transform is, in this order:
softcap (z = c * tanh(z / c)), then temperature (z = z / T); the same order the kernels use.
"""
from __future__ import annotations

import torch


def transform_logits(logits: torch.Tensor, temperature: float = 1.0, softcap: float | None = None):
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    if temperature != 1.0:
        logits = logits / temperature
    return logits


def logits_from_hidden(hidden, weight, bias=None):
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    return logits


def ref_logprobs(logits, labels, *, ignore_index=-100, temperature=1.0, softcap=None):
    """log p(label) per position; 0 where labels == ignore_index. Output keeps the logits' dtype."""
    z = transform_logits(logits, temperature, softcap)
    mask = labels != ignore_index
    safe = torch.where(mask, labels, torch.zeros_like(labels))
    logp = torch.log_softmax(z, dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, logp, torch.zeros_like(logp))


def ref_linear_logprobs(hidden, weight, labels, *, bias=None, ignore_index=-100, temperature=1.0,
                        softcap=None):
    return ref_logprobs(logits_from_hidden(hidden, weight, bias), labels, ignore_index=ignore_index,
                        temperature=temperature, softcap=softcap)


def _sequence_ids(labels, segment_ids):
    if segment_ids is None:
        # Padded batch [B, T]: a sequence per row.
        b = labels.shape[0] if labels.dim() > 1 else 1
        ids = torch.arange(b, device=labels.device).unsqueeze(-1).expand(b, labels.shape[-1])
        return ids.reshape(-1), b
    ids = segment_ids.reshape(-1).long()
    return ids, int(ids.max().item()) + 1 if ids.numel() else 0


def ref_sequence_sums(token_values, labels, *, ignore_index=-100, segment_ids=None):
    """Sum token_values over each sequence's non-ignored positions: (sums [B], counts [B] int64)."""
    ids, b = _sequence_ids(labels, segment_ids)
    mask = (labels.reshape(-1) != ignore_index)
    vals = torch.where(mask, token_values.reshape(-1), torch.zeros_like(token_values.reshape(-1)))
    sums = torch.zeros(b, dtype=vals.dtype, device=vals.device).index_add(0, ids, vals)
    counts = torch.zeros(b, dtype=torch.int64, device=vals.device).index_add(0, ids, mask.long())
    return sums, counts


def ref_sequence_logprobs(hidden, weight, labels, *, bias=None, ignore_index=-100, segment_ids=None,
                          temperature=1.0, softcap=None):
    logp = ref_linear_logprobs(hidden, weight, labels, bias=bias, ignore_index=ignore_index,
                               temperature=temperature, softcap=softcap)
    return ref_sequence_sums(logp, labels, ignore_index=ignore_index, segment_ids=segment_ids)


def ref_sequence_logit_sums(hidden, weight, labels, *, bias=None, ignore_index=-100, segment_ids=None,
                            temperature=1.0, softcap=None):
    """Per-sequence sum, over completion tokens, of the sum of all V (transformed) logits of the token.
    TRL's logits/* metric is this divided by V * token count."""
    z = transform_logits(logits_from_hidden(hidden, weight, bias), temperature, softcap)
    return ref_sequence_sums(z.sum(-1), labels, ignore_index=ignore_index, segment_ids=segment_ids)[0]


def ref_log_sum_sq_probs(logits, labels=None, *, ignore_index=-100, temperature=1.0, softcap=None):
    """log sum_v p_v^2 of each position's next-token distribution (TRL's WPO statistic), 0 where labels
    (if given) == ignore_index."""
    z = transform_logits(logits, temperature, softcap)
    out = torch.logsumexp(2 * z, dim=-1) - 2 * torch.logsumexp(z, dim=-1)
    if labels is not None:
        out = torch.where(labels != ignore_index, out, torch.zeros_like(out))
    return out
