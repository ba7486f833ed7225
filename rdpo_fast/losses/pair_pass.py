"""The pair pass: FusedLinearPreferenceLoss's autograd op (FusedPreferenceFn) on the chunk pass of
fused_pass.py. The kept rows of a batch are grouped pair by pair (_PairRows), chunks of whole pairs are
cut within the workspace budget (_pair_chunks), and after each chunk's forward statistics the generalized
DPO head runs on the chunk's pairs (_PairHead), giving each sequence's gradient; the loss and Liger's aux
outputs come from the accumulated statistics (_outputs). KTO's op is the same pass over single sequences
(kto.py)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rdpo_fast.ops import parallel
from rdpo_fast.ops.schedule import chunk_rows, chunks_of_pairs, workspace_bytes

from .fused_pass import (
    ChunkPass,
    DwRing,
    Grads,
    GradsMadeInForward,
    PassOptions,
    PassParallel,
    SeqStats,
    aligned_chunks,
    gradient_order,
    grouped_rows,
    ld_tail,
    packed_ld_tail,
)
from .head import preference_head


@dataclass
class _PairRows:
    """The kept rows of a [2B, T] batch grouped pair by pair (chosen rows, then the matching rejected
    rows): flat row indices, labels, sequence index, accumulator slot (with LD-DPO, tail tokens use slot
    2B + s), and each sequence's token count (device)."""
    rows: torch.Tensor
    labels: torch.Tensor
    seq: torch.Tensor
    slots: torch.Tensor
    n_slots: int
    counts: torch.Tensor

    @classmethod
    def of(cls, target, ignore_index, ld_alpha, n_kept, segment_ids=None, n_seq=None):
        """n_kept: the number of kept rows, known on the host, so the rows come from one sort of unique
        keys instead of nonzero (a host sync). segment_ids, n_seq: a packed row's (see PassOptions)."""
        if segment_ids is not None:
            return cls._packed(target, segment_ids, n_seq, ignore_index, ld_alpha, n_kept)
        n_seq, T = target.shape
        P = n_seq // 2
        dev = target.device
        keep = target != ignore_index
        s = torch.arange(n_seq, device=dev)[:, None]
        # Sort key (pair, chosen/rejected, position); ignored rows after every kept one.
        key = (s % P) * (2 * T) + torch.div(s, P, rounding_mode="floor") * T + torch.arange(T, device=dev)
        key = torch.where(keep, key, key + n_seq * T)
        rows = torch.sort(key.reshape(-1)).indices[:n_kept]
        seq = torch.div(rows, T, rounding_mode="floor")
        labels = target.reshape(-1).index_select(0, rows)
        slots, n_slots = seq, n_seq
        if ld_alpha is not None:
            tail = ld_tail(target, ignore_index).reshape(-1).index_select(0, rows)
            slots, n_slots = seq + tail.long() * n_seq, 2 * n_seq
        return cls(rows, labels, seq, slots, n_slots, keep.sum(1))

    @classmethod
    def _packed(cls, target, segment_ids, n_seq, ignore_index, ld_alpha, n_kept):
        """The same grouping for a packed row: the sort key is (pair, chosen/rejected, place in the row),
        so the kept rows come out in exactly the padded layout's order (and make the same chunks)."""
        lab = target.reshape(-1)
        P, s = n_seq // 2, segment_ids
        keep = lab != ignore_index
        pair_side = torch.remainder(s, P) * 2 + torch.div(s, P, rounding_mode="floor")
        rows = grouped_rows(lab, pair_side, n_seq, ignore_index, n_kept)
        seq = s.index_select(0, rows)
        labels = lab.index_select(0, rows)
        slots, n_slots = seq, n_seq
        if ld_alpha is not None:
            tail = packed_ld_tail(lab, s, n_seq, ignore_index, n_kept).index_select(0, rows)
            slots, n_slots = seq + tail.long() * n_seq, 2 * n_seq
        counts = torch.zeros(n_seq, device=lab.device, dtype=torch.int64).index_add_(0, s, keep.long())
        return cls(rows, labels, seq, slots, n_slots, counts)


def _ld_weighted(sums, sc, sr, n_seq, ld_alpha):
    """Chosen and rejected sequence sums, LD-DPO's tail slots added with weight ld_alpha."""
    c, r = sums[sc], sums[sr]
    if ld_alpha is not None:
        c = c + ld_alpha * sums[sc + n_seq]
        r = r + ld_alpha * sums[sr + n_seq]
    return c, r


class _PairHead:
    """The preference head over a range of pairs, from the accumulated sequence statistics (and, for WPO,
    the pairs' weights from them): writes the pairs' losses, rewards and log-probs, and each sequence's
    gradient into g_seq, from which token_grads gives each row's."""

    def __init__(self, cfg, stats, pairs, ref_c, ref_r, soft, P, num_pairs, num_chosen_tokens):
        dev = pairs.counts.device
        self.cfg, self.stats, self.lens, self.P, self.num_pairs = cfg, stats, pairs.counts.float(), P, num_pairs
        self.pairs, self.ref_c, self.ref_r, self.soft = pairs, ref_c, ref_r, soft
        self.losses = torch.zeros(P, device=dev, dtype=torch.float32)
        self.rew_c = torch.empty_like(self.losses)
        self.rew_r = torch.empty_like(self.losses)
        self.seq_logps = torch.empty(2 * P, device=dev, dtype=torch.float32)
        self.g_seq = torch.zeros(2 * P, device=dev, dtype=torch.float32)
        # The chosen-token NLL's per-token gradient: alpha (compute_nll_loss) plus sft's loss weight, over
        # the chosen tokens.
        self.nll_weight = (cfg.alpha if cfg.compute_nll_loss else 0.0) + cfg.sft_weight
        self.nll_coef = self.nll_weight / max(num_chosen_tokens, 1)

    def run(self, p0, p1):
        cfg, P, lens = self.cfg, self.P, self.lens
        sc = torch.arange(p0, p1, device=lens.device)  # the chosen sequences; rejected are P + sc
        sr = sc + P
        c_sum, r_sum = _ld_weighted(self.stats.logp, sc, sr, 2 * P, cfg.ld_alpha)
        scale_c = 1.0 / lens[sc] if cfg.average_log_prob else torch.ones_like(c_sum)
        scale_r = 1.0 / lens[sr] if cfg.average_log_prob else torch.ones_like(r_sum)
        c, r = c_sum * scale_c, r_sum * scale_r
        self.seq_logps[sc], self.seq_logps[sr] = c, r
        refc = None if self.ref_c is None else self.ref_c[p0:p1].float()
        refr = None if self.ref_r is None else self.ref_r[p0:p1].float()
        weights = None
        if cfg.use_weighting:
            # TRL's WPO weight of a sequence: exp(mean over its tokens of log p(label) - log sum p^2),
            # from the raw (not LD-weighted) per-token values; constants, no gradient. Pair: the product.
            st, n = self.stats, 2 * P
            aligned = st.folded(st.logp, n) - st.folded(st.sq, n)
            weights = torch.exp(aligned[sc] / lens[sc]) * torch.exp(aligned[sr] / lens[sr])
        if not cfg.head_members:  # sft alone: only its NLL term (added by the caller) and the rewards
            self.rew_c[p0:p1] = cfg.beta * (c if refc is None else c - refc)
            self.rew_r[p0:p1] = cfg.beta * (r if refr is None else r - refr)
            return
        opts = cfg.head_options(None if self.soft is None else self.soft[p0:p1].float(), lens[sc], lens[sr],
                                weights)
        losses, rc, rr, (dc, dr, _, _) = preference_head(c, r, refc, refr, **opts)
        self.losses[p0:p1], self.rew_c[p0:p1], self.rew_r[p0:p1] = losses, rc, rr
        self.g_seq[sc] = dc * scale_c / self.num_pairs
        self.g_seq[sr] = dr * scale_r / self.num_pairs

    def token_grads(self, r0, r1):
        """Upstream gradient of rows r0:r1: their sequence's (LD tail tokens weigh ld_alpha), minus the
        NLL term's on chosen tokens."""
        cfg, P = self.cfg, self.P
        seq, slot = self.pairs.seq[r0:r1], self.pairs.slots[r0:r1]
        g_tok = self.g_seq.index_select(0, seq)
        if cfg.ld_alpha is not None:
            g_tok = torch.where(slot >= 2 * P, g_tok * cfg.ld_alpha, g_tok)
        if self.nll_coef:
            g_tok = g_tok - (seq < P).float() * self.nll_coef
        return g_tok


class FusedPreferenceFn(GradsMadeInForward):
    """FusedLinearPreferenceLoss's autograd op: (loss, chosen_logps, rejected_logps, chosen_logits_mean,
    rejected_logits_mean, nll_loss, chosen_rewards, rejected_rewards, token sums) from checked inputs,
    the loss's validated config (cfg) and the call's PassOptions."""

    @staticmethod
    def forward(ctx, _input, weight, bias, target, ref_c, ref_r, soft, cfg, opts: PassOptions):
        # [2B, T, H] padded, or one packed row [1, N, H] / [N, H] with opts.segment_ids.
        n_seq, H = len(opts.host_counts), _input.shape[-1]
        P = n_seq // 2
        x2 = _input.reshape(-1, H)
        w_c, b_c = _in_compute_dtype(weight, bias, _input.dtype if opts.compute_dtype is None else opts.compute_dtype)
        pairs = _PairRows.of(target, cfg.ignore_index, cfg.ld_alpha, sum(opts.host_counts), opts.segment_ids, n_seq)
        par = opts.parallel or PassParallel()
        counts = par.counts(opts.host_counts)  # whole sequences' counts, under sequence parallelism too
        if par.sequence is not None:
            pairs.counts = torch.tensor(counts, device=target.device)
        num_pairs = P if opts.num_pairs is None else opts.num_pairs
        num_chosen_tokens = sum(counts[:P]) if opts.num_chosen_tokens is None else opts.num_chosen_tokens

        chunk_pass = _pair_chunks(x2, weight, w_c, b_c, pairs, cfg, opts)
        head = _PairHead(cfg, chunk_pass.stats, pairs, ref_c, ref_r, soft, P, num_pairs, num_chosen_tokens)
        chunk_pass.run(head)
        chunk_pass.grads.finish(pairs.rows)

        V = weight.shape[0] if par.vocab is None else par.vocab.vocab_size
        loss, aux = _outputs(cfg, chunk_pass.stats, head, pairs.counts, n_seq, V, num_pairs, num_chosen_tokens)
        GradsMadeInForward.keep_grads(ctx, chunk_pass.grads, _input.shape, weight, bias, opts.sync_free)
        token_sums = chunk_pass.token_sums
        if token_sums is not None and par.sequence is not None:
            token_sums = parallel.group_sum(token_sums, par.sequence)
        if token_sums is None:
            token_sums = torch.zeros(0, device=_input.device)
        ctx.mark_non_differentiable(*aux, token_sums)
        return (loss, *aux, token_sums)


def _in_compute_dtype(weight, bias, compute_dtype):
    """The weight and bias in the GEMMs' dtype: the inputs' own, or an enclosing autocast's
    (autocast="follow"). Cast once; dW is still accumulated in fp32 and handed back in the weight's own
    dtype."""
    w_c = weight if weight.dtype == compute_dtype else weight.to(compute_dtype)
    b_c = bias if bias is None or bias.dtype == compute_dtype else bias.to(compute_dtype)
    return w_c, b_c


def _pair_chunks(x2, weight, w_c, b_c, pairs, cfg, opts):
    """The chunk pass over the pairs: chunks of whole pairs within the workspace budget (a single pair
    longer than that gets its own chunk), the dW ring when asked for, the gradient buffers."""
    V, H = weight.shape
    host_counts = opts.host_counts
    P = len(host_counts) // 2
    par = opts.parallel or PassParallel()

    def pair_rows(c):
        return [a + b for a, b in zip(c[: len(c) // 2], c[len(c) // 2:])]

    per_pair = pair_rows(host_counts)
    if par.vocab is None and par.sequence is None:
        chunks = chunks_of_pairs(per_pair, chunk_rows(pairs.rows.numel(), V, w_c, cfg.workspace_budget))
    else:
        # Every rank of a group must cut the same chunks: plan from what all of them know alike.
        plan = par.plan_units(host_counts, pair_rows)
        V_plan = V if par.vocab is None else par.vocab.plan_size
        chunks = aligned_chunks(per_pair, plan, chunk_rows(sum(plan), V_plan, w_c, cfg.workspace_budget))
    ring = None
    if cfg.dw_accumulation == "ring" and opts.need_grad[1]:
        budget = cfg.dw_ring_budget
        if budget is None:
            budget = (workspace_bytes() if cfg.workspace_budget is None else cfg.workspace_budget) + 4 * V * H
        # Slots in the order the gradient pass fills them.
        sizes = [chunks[k][3] - chunks[k][2] for k in gradient_order(len(chunks), cfg.batch_level)]
        ring = DwRing(sizes, V, H, w_c.dtype, weight.dtype, budget, x2.device)
    grads = Grads(x2, weight, opts.need_grad, cfg.dw_accumulation, None if ring is None else ring.w_dtype,
                  vocab=par.vocab, n_rows=pairs.rows.numel())
    stats = SeqStats(pairs.n_slots, x2.device, with_sq=cfg.use_weighting)
    # TRL's entropy and token-accuracy metrics, from the same logits: sums over tokens (accuracy over
    # the chosen ones).
    top1_rows = pairs.seq < P if opts.token_stats else None
    def pair_slots(p0, p1):  # chosen, rejected (and LD-DPO's tail) slots of pairs p0:p1
        first = torch.arange(p0, p1, device=x2.device)
        return torch.cat([first + k * P for k in range(pairs.n_slots // P)])

    return ChunkPass(x2, w_c, b_c, pairs.rows, pairs.labels, pairs.slots, chunks, stats, grads,
                     transform=cfg.transform, two_phase=cfg.batch_level, ring=ring, top1_rows=top1_rows,
                     vocab=par.vocab, sync=par.sync(stats, pair_slots), epilogue=cfg.epilogue)


def _outputs(cfg, stats, head, counts, n_seq, V, num_pairs, num_chosen_tokens):
    """The loss and Liger's aux outputs from the statistics and the head's results."""
    P = n_seq // 2
    dev = counts.device
    raw = stats.folded(stats.logp, n_seq)
    lsum = stats.folded(stats.logit, n_seq)
    nll_on = cfg.compute_nll_loss or cfg.sft_weight != 0
    nll = -raw[:P].sum() / max(num_chosen_tokens, 1) if nll_on else torch.zeros((), device=dev)
    chosen_tokens = counts[:P].sum().clamp_min(1)
    rejected_tokens = counts[P:].sum().clamp_min(1)
    chosen_logits_mean = lsum[:P].sum() / (chosen_tokens * V)
    rejected_logits_mean = lsum[P:].sum() / (rejected_tokens * V)
    loss = head.losses.sum() / num_pairs + head.nll_weight * nll
    aux = (head.seq_logps[:P].clone(), head.seq_logps[P:].clone(), chosen_logits_mean, rejected_logits_mean,
           nll.detach(), head.rew_c, head.rew_r)
    return loss, aux
