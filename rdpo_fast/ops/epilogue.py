"""The two per-chunk epilogue steps on a block of logits, each with its Triton kernel and its torch
twin, chosen by rdpo_fast.ops.backend: compiled Triton on CUDA, the same kernels interpreted on CPU under
TRITON_INTERPRET=1, torch otherwise, on the same chunk, so the fallback keeps the bounded workspace.

    forward_epilogue: logsumexp, log p(label), and (added into accumulators) per-sequence sums of
                      log-probs and of logits; optionally log sum_v p_v^2 per row and per sequence
                      (TRL's WPO statistic).
    grad_epilogue:    dZ = g * (onehot(label) - softmax) * d transform, in place by default.
    onepass_epilogue: forward_epilogue, then S = (onehot(label) - softmax) * d transform (dZ with g = 1)
                      over the logits in place, in one kernel: the one-pass schedule's epilogue, after which
                      the gradient pass applies g as a row scale and never reads the logits again.
    unscaled_grad_epilogue: that S alone, its logsumexp known (chunks whose statistics could not carry it:
                      recomputed logits, a vocabulary slice, TRL's token statistics read first).
    token_stats:      per-row entropy and is-the-label-the-argmax (TRL's entropy / token accuracy).
    vocab_partials:   on one rank's vocabulary slice, the per-row statistics that combine exactly across
                      slices (the vocabulary-parallel forward, ops/parallel.py).
"""
from __future__ import annotations

import torch

from rdpo_fast.kernels.logprob_backward import logprob_backward
from rdpo_fast.kernels.logprob_forward import logprob_forward
from rdpo_fast.kernels.logprob_onepass import logprob_onepass
from rdpo_fast.kernels.token_stats import token_stats as _token_stats_kernel
from rdpo_fast.oracle.logprobs import transform_logits

from .backend import backend


def torch_workspace_factor(t: torch.Tensor) -> int:
    """Bytes per logit the chosen backend holds at once: the torch twin keeps up to two fp32
    temporaries of the chunk beside the workspace; the interpreter copies each tensor argument."""
    extra = {"triton": 0, "interpret": t.element_size(), "torch": 8}[backend(t)]
    return t.element_size() + extra


def forward_epilogue(z: torch.Tensor, labels: torch.Tensor, *, row_idx: torch.Tensor | None = None,
                     seq_ids: torch.Tensor | None = None, seq_logp: torch.Tensor | None = None,
                     seq_logit: torch.Tensor | None = None, temperature: float = 1.0, softcap: float | None = None,
                     log_sum_sq: torch.Tensor | None = None, seq_sq: torch.Tensor | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """log_sum_sq: optional [M] fp32 output of log sum_v p_v^2; seq_sq: optional [S] accumulator of it
    (needs seq_ids). Both on compacted rows only (row_idx=None)."""
    mode = backend(z)
    if mode != "torch":
        return logprob_forward(z, labels, row_idx=row_idx, seq_ids=seq_ids, seq_logp=seq_logp,
                               seq_logit=seq_logit, temperature=temperature, softcap=softcap,
                               interpreted=mode == "interpret", log_sum_sq=log_sum_sq, seq_sq=seq_sq)
    want_sq = log_sum_sq is not None or seq_sq is not None
    if want_sq and row_idx is not None:
        raise ValueError("log_sum_sq / seq_sq are computed on compacted rows only (row_idx=None)")
    rows = z[: labels.numel()] if row_idx is None else z[row_idx]
    zt = transform_logits(rows.float(), temperature, softcap)
    lse = torch.logsumexp(zt, dim=-1)
    logp = zt.gather(1, labels.view(-1, 1)).squeeze(1) - lse
    # log sum p^2 in one temporary of the chunk: exp(2 (z - lse)) in place, summed.
    sq = (zt - lse[:, None]).mul_(2.0).exp_().sum(-1).log_() if want_sq else None
    store_row_stats(logp, None if seq_ids is None else zt.sum(-1), sq, seq_ids=seq_ids, seq_logp=seq_logp,
                    seq_logit=seq_logit, log_sum_sq=log_sum_sq, seq_sq=seq_sq)
    return lse, logp


def store_row_stats(logp: torch.Tensor, logit: torch.Tensor | None, sq: torch.Tensor | None, *,
                    seq_ids: torch.Tensor | None, seq_logp: torch.Tensor | None, seq_logit: torch.Tensor | None,
                    log_sum_sq: torch.Tensor | None, seq_sq: torch.Tensor | None) -> None:
    """Where forward_epilogue's per-row results go, as its kernel stores them: log sum p^2 (sq) into
    log_sum_sq, and per sequence (seq_ids) the sums of sq, log-probs and logits (logit: each row's sum)
    added into their accumulators."""
    if sq is not None:
        if log_sum_sq is not None:
            log_sum_sq.copy_(sq)
        if seq_sq is not None:
            seq_sq.index_add_(0, seq_ids, sq)
    if seq_ids is not None:
        seq_logp.index_add_(0, seq_ids, logp)
        seq_logit.index_add_(0, seq_ids, logit)


# Rows of vocab_partials' output.
PART_LSE, PART_TARGET, PART_LOGIT, PART_LSE2 = range(4)


def vocab_partials(z: torch.Tensor, labels: torch.Tensor, *, v_offset: int, temperature: float = 1.0,
                   softcap: float | None = None, with_sq: bool = False) -> torch.Tensor:
    """The first M = labels.numel() rows of z, a vocabulary slice whose column j is token v_offset + j:
    a fresh contiguous fp32 [k, M] tensor (k = 4 with_sq, else 3), rows PART_LSE (the slice's logsumexp),
    PART_TARGET (the label's logit where the slice holds it, else 0), PART_LOGIT (the slice's logit sum)
    and PART_LSE2 (the slice's logsumexp of 2z, for log sum p^2), all of the transformed logits."""
    M, V = labels.numel(), z.shape[1]
    out = torch.empty(4 if with_sq else 3, M, device=z.device, dtype=torch.float32)
    if V == 0:  # a rank whose slice is empty (V < ranks): it adds nothing to any row
        out[PART_LSE].fill_(float("-inf"))
        out[PART_TARGET].zero_()
        out[PART_LOGIT].zero_()
        if with_sq:
            out[PART_LSE2].fill_(float("-inf"))
        return out
    mode = backend(z)
    if mode != "torch":
        logprob_forward(z, labels, temperature=temperature, softcap=softcap, interpreted=mode == "interpret",
                        partials=out, v_offset=v_offset)
        return out
    zt = transform_logits(z[:M].float(), temperature, softcap)
    torch.logsumexp(zt, dim=-1, out=out[PART_LSE])
    local = labels - v_offset
    owned = (local >= 0) & (local < V)
    target = zt.gather(1, local.clamp(0, V - 1).view(-1, 1)).squeeze(1)
    torch.where(owned, target, torch.zeros_like(target), out=out[PART_TARGET])
    torch.sum(zt, dim=-1, out=out[PART_LOGIT])
    if with_sq:
        # Not in place: zt is the workspace itself for fp32 logits without a transform, read again by dZ.
        torch.logsumexp(zt * 2.0, dim=-1, out=out[PART_LSE2])
    return out


def grad_epilogue(z: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor, g: torch.Tensor, *,
                  out: torch.Tensor | None = None, row_idx: torch.Tensor | None = None, v_offset: int = 0,
                  temperature: float = 1.0, softcap: float | None = None) -> torch.Tensor:
    if z.shape[1] == 0:  # an empty vocabulary slice (a rank past the end when V < ranks): no dZ to write
        return z if out is None else out
    mode = backend(z)
    if mode != "torch":
        return logprob_backward(z, labels, lse, g, out=out, row_idx=row_idx, v_offset=v_offset,
                                temperature=temperature, softcap=softcap, interpreted=mode == "interpret")
    out = z if out is None else out
    n = labels.numel()
    # In place on an fp32 workspace without softcap (the common CPU case): no temporary of the chunk.
    in_place = row_idx is None and out is z and z.dtype == torch.float32 and softcap is None
    rows = z[:n] if row_idx is None else z[row_idx]
    raw = rows if in_place else rows.float()
    # temperature == 1 (the usual case) skips both x(1/T) passes over the chunk: each is a full
    # read and write of the logits block on the torch twin.
    if in_place:
        dz = (raw if temperature == 1.0 else raw.mul_(1.0 / temperature)).sub_(lse[:, None]).exp_()
    else:
        # softmax in a fresh buffer: raw may alias the workspace and is still needed for softcap
        dz = (transform_logits(raw, temperature, softcap) - lse[:, None]).exp_()
    dz.mul_(-g[:, None])
    local = labels - v_offset
    inside = (local >= 0) & (local < dz.shape[1])
    dz.scatter_add_(1, local.clamp(0, dz.shape[1] - 1).view(-1, 1), (g * inside).view(-1, 1))
    if softcap is not None:
        dz.mul_(1.0 - torch.tanh(raw / softcap).square_())
    if temperature != 1.0:
        dz.mul_(1.0 / temperature)
    if in_place:
        return out
    if row_idx is None:
        out[:n].copy_(dz)
    else:
        out[row_idx] = dz.to(out.dtype)
    return out


def onepass_epilogue(z: torch.Tensor, labels: torch.Tensor, *, seq_ids: torch.Tensor, seq_logp: torch.Tensor,
                     seq_logit: torch.Tensor, temperature: float = 1.0, softcap: float | None = None,
                     log_sum_sq: torch.Tensor | None = None, seq_sq: torch.Tensor | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """forward_epilogue's outputs and accumulations for the first M = labels.numel() rows of z (compacted
    rows, with per-sequence sums), then those rows overwritten in place with S = (onehot(label) - softmax)
    * d transform: one kernel, whose second sweep finds the rows in L2 (kernels/logprob_onepass.py). The
    torch twin runs the same two steps one after the other."""
    mode = backend(z)
    if mode != "torch":
        return logprob_onepass(z, labels, seq_ids=seq_ids, seq_logp=seq_logp, seq_logit=seq_logit,
                               temperature=temperature, softcap=softcap, interpreted=mode == "interpret",
                               log_sum_sq=log_sum_sq, seq_sq=seq_sq)
    lse, logp = forward_epilogue(z, labels, seq_ids=seq_ids, seq_logp=seq_logp, seq_logit=seq_logit,
                                 temperature=temperature, softcap=softcap, log_sum_sq=log_sum_sq, seq_sq=seq_sq)
    unscaled_grad_epilogue(z, labels, lse, temperature=temperature, softcap=softcap)
    return lse, logp


def unscaled_grad_epilogue(z: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor, *, v_offset: int = 0,
                           temperature: float = 1.0, softcap: float | None = None) -> torch.Tensor:
    """onepass_epilogue's S over the first labels.numel() rows of z in place, their logsumexp (over the
    whole vocabulary) known: grad_epilogue with g = 1, for the chunks whose forward epilogue could not write
    it (see fused_pass.ChunkPass). z may be a vocabulary slice starting at token v_offset."""
    return grad_epilogue(z, labels, lse, torch.ones_like(lse), v_offset=v_offset, temperature=temperature,
                         softcap=softcap)


def token_stats(z: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor, *, temperature: float = 1.0,
                softcap: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(entropy [M], top1 [M] in {0., 1.}) of the first M = labels.numel() rows of z, lse known."""
    mode = backend(z)
    if mode != "torch":
        return _token_stats_kernel(z, labels, lse, temperature=temperature, softcap=softcap,
                                   interpreted=mode == "interpret")
    zt = transform_logits(z[: labels.numel()].float(), temperature, softcap)
    top1 = (zt.argmax(-1) == labels).float()  # argmax takes the first of tied maxima
    p = (zt - lse[:, None]).exp_()
    entropy = lse - p.mul_(zt).sum(-1)
    return entropy, top1
