"""Autograd ops for per-token log-probs (SPEC section 3): linear_logprobs, sequence_logprobs, logprobs.

Schedule of the linear ops: drop ignored rows first (they cost nothing after). Forward walks the kept
rows in chunks whose logits fit a workspace budget: per chunk one logits GEMM into the workspace, then
the fused epilogue (logsumexp, label log-prob, per-sequence sums). Only the logsumexp is kept, because
the upstream gradient of a per-token op is unknown in forward. Backward walks vocabulary slices of the
same budget instead: with the logsumexp known, each slice's logits are recomputed, turned into dZ in
place, and yield their own rows of dW in one GEMM, so the [V, H] gradient is written once rather than
re-accumulated per chunk (8NHV in all; only d hidden, O(N), is accumulated in fp32). Under no_grad
nothing is saved.

Parallel (ops/parallel.py): with a vocabulary-sharded weight (a Shard(0) DTensor, or process_group= and
vocab_start=) every chunk's epilogue combines the ranks' partial statistics with one all-gather, so the
logsumexp and log-probs are the whole vocabulary's; backward walks only the local slice and sums d
hidden over the group once at the end. With sequence_parallel_group= (sequence_logprobs) the
per-sequence sums and counts are summed over that group; backward gives each rank's tokens the gradient
of the summed value (the loss computed from it counts once).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from . import checks as _checks
from . import parallel
from .epilogue import forward_epilogue, grad_epilogue
from .schedule import accumulate_mm, chunk_rows, compact, kept_rows, logits_into, vocab_slice_cols, workspace_bytes

if TYPE_CHECKING:  # annotations only: a torch build without distributed support has no ProcessGroup
    from torch.distributed import ProcessGroup


class _Opts:
    """Non-tensor settings carried from forward to backward."""

    def __init__(self, ignore_index, temperature, softcap, budget, shard=None, sequence_group=None):
        self.ignore_index = ignore_index
        self.temperature = float(temperature)
        self.softcap = None if softcap is None else float(softcap)
        self.budget = budget
        self.shard = shard  # parallel.VocabShard of a vocabulary-sharded weight, else None
        self.sequence_group = sequence_group  # the sequence-parallel group of the per-sequence sums, else None

    def sum_sequences(self, seq_logp, seq_logit):
        """The per-sequence sums over the sequence-parallel group (as they are without one)."""
        if self.sequence_group is None:
            return seq_logp, seq_logit
        both = parallel.group_sum(torch.stack([seq_logp, seq_logit]), self.sequence_group)
        return both[0], both[1]


def _forward_chunks(hc, weight, bias, labels_c, seq_c, num_seqs, opts, keep_lse):
    """Chunked forward over compacted rows. Returns (logp [M], lse [M] or None, seq_logp, seq_logit)."""
    M = hc.shape[0]
    V = weight.shape[0]
    dev = hc.device
    logp = torch.empty(M, device=dev, dtype=torch.float32)
    lse = torch.empty(M, device=dev, dtype=torch.float32) if keep_lse else None
    seq_logp = torch.zeros(num_seqs, device=dev, dtype=torch.float32)
    seq_logit = torch.zeros(num_seqs, device=dev, dtype=torch.float32)
    if M == 0:
        return logp, lse, seq_logp, seq_logit
    shard = opts.shard
    # A vocabulary shard plans with the largest rank's slice: every rank cuts the same chunks.
    C = chunk_rows(M, V if shard is None else shard.plan_size, hc, opts.budget)
    epilogue = forward_epilogue if shard is None else shard.forward_epilogue
    ws = torch.empty(C, V, device=dev, dtype=hc.dtype)
    for s in range(0, M, C):
        e = min(M, s + C)
        z = logits_into(ws[: e - s], hc[s:e], weight, bias)
        chunk_lse, chunk_logp = epilogue(z, labels_c[s:e], seq_ids=None if seq_c is None else seq_c[s:e],
                                                 seq_logp=seq_logp, seq_logit=seq_logit,
                                                 temperature=opts.temperature, softcap=opts.softcap)
        logp[s:e] = chunk_logp
        if keep_lse:
            lse[s:e] = chunk_lse
    return logp, lse, seq_logp, seq_logit


def _backward_slices(hc, weight, bias, labels_c, lse, g, opts, need):
    """Backward over vocabulary slices, all kept rows at once: the logsumexp is known, so each slice's
    logits are recomputed, turned into dZ in place, and give their own rows of dW and d bias in one
    GEMM each (accumulated in fp32 inside the GEMM, never across slices); only d hidden [M, H], O(N),
    is accumulated across slices, in fp32. need = (hidden, weight, bias) booleans. A vocabulary shard's
    slices are its own (token v_offset + j for column j); its d hidden is summed over the group at the end.
    Returns (d hc [M, H] fp32 or None, dW in weight's dtype or None, d bias or None)."""
    M, H = hc.shape
    V = weight.shape[0]
    dev = hc.device
    dh = torch.empty(M, H, device=dev, dtype=torch.float32) if need[0] else None
    dW = torch.empty_like(weight) if need[1] else None
    db = torch.empty_like(bias) if need[2] else None
    if M == 0:
        for t in (dh, dW, db):
            if t is not None:
                t.zero_()
        return dh, dW, db
    shard = opts.shard
    offset = 0 if shard is None else shard.vocab_start
    if V == 0 and dh is not None:  # an empty vocabulary slice adds nothing to d hidden
        dh.zero_()
    cols = vocab_slice_cols(M, V, hc, opts.budget)
    ws = torch.empty(M * cols, device=dev, dtype=hc.dtype)
    for v0 in range(0, V, cols):
        v1 = min(V, v0 + cols)
        z = logits_into(ws[: M * (v1 - v0)].view(M, v1 - v0), hc, weight[v0:v1],
                         None if bias is None else bias[v0:v1])
        dz = grad_epilogue(z, labels_c, lse, g, v_offset=offset + v0, temperature=opts.temperature,
                           softcap=opts.softcap)
        if dh is not None:
            accumulate_mm(dh, dz, weight[v0:v1], first=v0 == 0)
        if dW is not None:
            torch.mm(dz.t(), hc, out=dW[v0:v1])
        if db is not None:
            db[v0:v1] = dz.sum(0, dtype=torch.float32)
    if shard is not None and dh is not None:
        shard.sum_(dh)  # d hidden = sum over ranks of dZ_r W_r: one all-reduce, in fp32
    return dh, dW, db


class _LinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, seq_ids, num_seqs, opts):
        h2, rows, hc, labels_c = compact(hidden, labels, opts.ignore_index)
        seq_c = None if seq_ids is None else seq_ids.index_select(0, rows)
        logp_c, lse, seq_logp, seq_logit = _forward_chunks(hc, weight, bias, labels_c, seq_c, num_seqs,
                                                           opts, keep_lse=True)
        # Backward passes the summed sequences' gradient to this rank's own tokens as it is.
        seq_logp, seq_logit = opts.sum_sequences(seq_logp, seq_logit)
        logp = torch.zeros(h2.shape[0], device=hidden.device, dtype=torch.float32)
        logp.index_copy_(0, rows, logp_c)
        ctx.save_for_backward(hidden, weight, bias, rows, labels_c, seq_c, lse)
        ctx.opts = opts
        ctx.mark_non_differentiable(seq_logit)
        return logp.view(labels.shape), seq_logp, seq_logit

    @staticmethod
    def backward(ctx, g_logp, g_seq, _g_logit):
        hidden, weight, bias, rows, labels_c, seq_c, lse = ctx.saved_tensors
        need = ctx.needs_input_grad[:3]
        g = torch.zeros(rows.numel(), device=hidden.device, dtype=torch.float32)
        if g_logp is not None:
            g += g_logp.reshape(-1).float().index_select(0, rows)
        if g_seq is not None and seq_c is not None:
            g += g_seq.float().index_select(0, seq_c)
        h2 = hidden.reshape(-1, hidden.shape[-1])
        hc = h2.index_select(0, rows)
        dhc, dW, db = _backward_slices(hc, weight, bias, labels_c, lse, g, ctx.opts, need)
        d_hidden = None
        if dhc is not None:
            d_hidden = torch.zeros_like(h2).index_copy_(0, rows, dhc.to(h2.dtype)).view(hidden.shape)
        return d_hidden, dW, db, None, None, None, None


def _needs_grad(*ts):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def linear_stats(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, bias: torch.Tensor | None,
                 seq_ids: torch.Tensor | None, num_seqs: int, ignore_index: int, temperature: float,
                 softcap: float | None, workspace_budget: int | None, n_kept: int | None = None, *,
                 vocab_shard: parallel.VocabShard | None = None,
                 sequence_parallel_group: ProcessGroup | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-token logp with labels' shape, per-sequence logp sums [num_seqs], per-sequence logit sums
    [num_seqs]), all float32, from inputs the caller has checked. seq_ids: each flattened row's sequence
    (None: no per-sequence sums). Differentiable (w.r.t. hidden, weight, bias, through the logp and its
    sums) when grad mode is on and one of them requires grad; otherwise forward-only, keeping nothing
    for backward (reference models, implicit-reward scoring). n_kept: the kept-row count if the caller
    knows it on the host (the forward-only path then makes no host sync). vocab_shard: weight (and bias)
    are this rank's slice (parallel.vocab_shard); sequence_parallel_group: the per-sequence sums are
    summed over it (see the module docstring)."""
    opts = _Opts(ignore_index, temperature, softcap, workspace_budget, vocab_shard, sequence_parallel_group)
    # The GEMMs run in the inputs' own dtype: an enclosing autocast must not recast the workspace.
    with torch.autocast(hidden.device.type, enabled=False):
        return _linear_stats_impl(hidden, weight, labels, bias, seq_ids, num_seqs, ignore_index, opts, n_kept)


def _linear_stats_impl(hidden, weight, labels, bias, seq_ids, num_seqs, ignore_index, opts, n_kept=None):
    if _needs_grad(hidden, weight, bias):
        return _LinearLogprobs.apply(hidden, weight, bias, labels, seq_ids, num_seqs, opts)
    # Forward only (reference models, implicit-reward scoring): keep no logsumexp, save nothing.
    h2, rows, hc, labels_c = compact(hidden, labels, ignore_index, n_kept)
    seq_c = None if seq_ids is None else seq_ids.index_select(0, rows)
    logp_c, _, seq_logp, seq_logit = _forward_chunks(hc, weight, bias, labels_c, seq_c, num_seqs, opts,
                                                     keep_lse=False)
    seq_logp, seq_logit = opts.sum_sequences(seq_logp, seq_logit)
    logp = torch.zeros(h2.shape[0], device=hidden.device, dtype=torch.float32).index_copy_(0, rows, logp_c)
    return logp.view(labels.shape), seq_logp, seq_logit


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                    bias: torch.Tensor | None = None, ignore_index: int = -100, temperature: float = 1.0,
                    softcap: float | None = None, workspace_budget: int | None = None,
                    check_finite: bool | None = None, process_group: ProcessGroup | None = None,
                    vocab_start: int | None = None) -> torch.Tensor:
    """Per-token log p(label) from hidden [..., H] and the lm_head weight [V, H], never holding more than
    a workspace of logits. Returns float32 with labels' shape, 0.0 where labels == ignore_index.
    Differentiable w.r.t. hidden, weight and bias for any upstream gradient. check_finite (default:
    RDPO_FAST_CHECK_FINITE): raise on NaN/inf in hidden's kept rows, weight, bias or the result.
    Vocabulary-parallel: weight (and bias) a DTensor sharded Shard(0) over one mesh dimension, or this
    rank's plain slice with process_group= and vocab_start= (its first token id); hidden and labels the
    same on every rank of the group (plain, or Replicate DTensors); labels in [0, whole V). Every rank
    of the group must call it (and backward) alike. The log-probs are the whole vocabulary's on every
    rank; weight's gradient is the local slice's (a Shard(0) DTensor for a DTensor weight), hidden's
    the whole one."""
    hidden, weight, labels, bias, shard = _parallel_inputs(hidden, weight, labels, bias, process_group, vocab_start)
    _checks.check_linear_inputs(hidden, weight, labels, bias, ignore_index, temperature, softcap,
                                vocab_size=None if shard is None else shard.vocab_size)
    finite = _finite_inputs("linear_logprobs", check_finite, hidden, weight, bias, labels, ignore_index)
    out = linear_stats(hidden, weight, labels, bias, None, 0, ignore_index, temperature, softcap,
                       workspace_budget, vocab_shard=shard)[0]
    if finite:
        _checks.check_finite("linear_logprobs", ("result", out), result=True)
    return out


def _parallel_inputs(hidden, weight, labels, bias, process_group, vocab_start):
    """The local tensors of possibly distributed inputs, and the weight's VocabShard (None: whole)."""
    hidden = parallel.local_replica(hidden, "hidden")
    labels = parallel.local_replica(labels, "labels")
    weight, bias, shard = parallel.vocab_shard(weight, bias, process_group=process_group, vocab_start=vocab_start,
                                               labels=labels)
    return hidden, weight, labels, bias, shard


def _finite_inputs(op, flag, hidden, weight, bias, labels, ignore_index) -> bool:
    """Checks the inputs when finiteness checks are on; returns whether they are."""
    on = _checks.check_finite_on(flag)
    if on:
        _checks.check_finite(op, ("hidden", hidden, labels != ignore_index), ("weight", weight), ("bias", bias))
    return on


def sequence_ids(labels: torch.Tensor, segment_ids: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """Flattened per-token sequence ids and the number of sequences: a row of a padded [B, T] batch is a
    sequence; packed rows name theirs with segment_ids."""
    if segment_ids is None:
        if labels.dim() < 2:
            b, t = 1, labels.numel()
        else:
            b, t = labels.shape[0], labels[0].numel()
        ids = torch.arange(b, device=labels.device).repeat_interleave(t)
        return ids, b
    _checks.check_segment_ids(segment_ids, labels)
    ids = segment_ids.reshape(-1).long()
    return ids, int(ids.max().item()) + 1


def sequence_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                      bias: torch.Tensor | None = None, ignore_index: int = -100,
                      segment_ids: torch.Tensor | None = None, temperature: float = 1.0,
                      softcap: float | None = None, workspace_budget: int | None = None,
                      check_finite: bool | None = None, process_group: ProcessGroup | None = None,
                      vocab_start: int | None = None, sequence_parallel_group: ProcessGroup | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sums of label log-probs and token counts: (sums [B] float32, counts [B] int64).
    Padded batches: hidden [B, T, H], labels [B, T]. Packed rows: segment_ids, one per token.
    check_finite: as linear_logprobs. process_group, vocab_start: a vocabulary-sharded weight, as
    linear_logprobs. sequence_parallel_group: each rank holds some tokens of every sequence (the same B
    sequences, or segment ids, on every rank); sums and counts are then the whole sequences', the same
    on every rank, and backward gives each rank's own tokens the gradient of those sums."""
    hidden, weight, labels, bias, shard = _parallel_inputs(hidden, weight, labels, bias, process_group, vocab_start)
    _checks.check_linear_inputs(hidden, weight, labels, bias, ignore_index, temperature, softcap,
                                vocab_size=None if shard is None else shard.vocab_size)
    finite = _finite_inputs("sequence_logprobs", check_finite, hidden, weight, bias, labels, ignore_index)
    ids, b = sequence_ids(labels, segment_ids)
    sp = parallel.sequence_group(sequence_parallel_group)
    if sp is not None:
        b = _agreed_sequences(b, segment_ids is None, sp, labels.device)
    _, sums, _ = linear_stats(hidden, weight, labels, bias, ids, b, ignore_index, temperature, softcap,
                              workspace_budget, vocab_shard=shard, sequence_parallel_group=sp)
    counts = torch.zeros(b, device=labels.device, dtype=torch.int64).index_add_(
        0, ids, (labels.reshape(-1) != ignore_index).long())
    if sp is not None:
        counts = parallel.group_sum(counts, sp)
    if finite:
        _checks.check_finite("sequence_logprobs", ("result", sums), result=True)
    return sums, counts


def _agreed_sequences(b: int, padded: bool, group, device: torch.device) -> int:
    """The number of sequences of a sequence-parallel call: the same padded batch on every rank, or the
    largest segment id of any rank + 1 (a rank may hold no token of the last segments)."""
    every = [r[0] for r in parallel.gather_ints([b], group, device)]
    if padded and len(set(every)) > 1:
        raise ValueError(f"sequence_parallel_group: the ranks hold {every} sequences; each must hold a slice of "
                         "every sequence of the same batch")
    return max(every)


class _Logprobs(torch.autograd.Function):
    """From ready logits: the kept rows are addressed in place through an index (no copy)."""

    @staticmethod
    def forward(ctx, logits, labels, opts):
        z = logits.reshape(-1, logits.shape[-1])
        if z.stride(-1) != 1:
            z = z.contiguous()
        rows = kept_rows(labels, opts.ignore_index)
        labels_c = labels.reshape(-1).index_select(0, rows)
        lse, logp_c = forward_epilogue(z, labels_c, row_idx=rows, temperature=opts.temperature,
                                       softcap=opts.softcap)
        logp = torch.zeros(z.shape[0], device=z.device, dtype=torch.float32).index_copy_(0, rows, logp_c)
        ctx.save_for_backward(z, rows, labels_c, lse)
        ctx.opts = opts
        ctx.logits_shape = logits.shape
        return logp.view(labels.shape)

    @staticmethod
    def backward(ctx, g_logp):
        z, rows, labels_c, lse = ctx.saved_tensors
        g = g_logp.reshape(-1).float().index_select(0, rows)
        dz = torch.zeros_like(z)
        grad_epilogue(z, labels_c, lse, g, out=dz, row_idx=rows, temperature=ctx.opts.temperature,
                      softcap=ctx.opts.softcap)
        return dz.view(ctx.logits_shape), None, None


def logprobs(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100, temperature: float = 1.0,
             softcap: float | None = None, check_finite: bool | None = None) -> torch.Tensor:
    """Per-token log p(label) from ready logits [..., V]: float32 with labels' shape, 0.0 where ignored.
    check_finite (default: RDPO_FAST_CHECK_FINITE): raise on NaN/inf in kept rows of logits or the result."""
    _checks.check_logits_inputs(logits, labels, ignore_index, temperature, softcap)
    finite = _checks.check_finite_on(check_finite)
    if finite:
        _checks.check_finite("logprobs", ("logits", logits, labels != ignore_index))
    with torch.autocast(logits.device.type, enabled=False):
        out = _Logprobs.apply(logits, labels, _Opts(ignore_index, temperature, softcap, None))
    if finite:
        _checks.check_finite("logprobs", ("result", out), result=True)
    return out


__all__ = ["linear_logprobs", "linear_stats", "logprobs", "sequence_logprobs", "workspace_bytes"]
