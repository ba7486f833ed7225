"""The drop-in fused preference loss: lm_head + log-probs + generalized DPO head in one autograd op,
never holding the N x V logits. Same constructor keywords, forward signature and return layout as
liger_kernel's LigerFusedLinearDPOLoss, plus precomputed reference log-probs and rDPO soft labels, and
TRL's loss options: a list of loss types with loss_weights, use_weighting (WPO), f_divergence_type.

Schedule (SPEC section 6): prompt and pad rows are dropped, the kept rows are grouped pair by pair and
cut into chunks of whole pairs that fit the logits workspace. Per chunk: one logits GEMM into the
workspace; the fused epilogue (logsumexp, label log-prob, per-sequence sums of log-probs and logits,
and for WPO of log sum p^2); the preference head on the chunk's pairs, which gives each sequence's
gradient; the in-place dZ kernel; then the dX GEMM (final for these rows) and the dW GEMM, accumulated
in fp32 across chunks (dw_accumulation="ring": the chunks' dZ stay in a ring and one dW GEMM per flush
covers all of them, see _DwRing). Gradients are made in forward and scaled by grad_output in backward:
6NHV FLOPs.

Batch-level losses (aot, aot_unpaired: they sort the whole batch's log-ratios) need every pair's
log-probs before any gradient, so they run in two phases: the forward statistics of every chunk (keeping each row's logsumexp), the head on the whole
batch, then each chunk's logits again for dZ, dX and dW. The last chunk's logits are still in the
workspace and are not recomputed: 6NHV + 2NHV (k-1)/k for k chunks, 8NHV at most; 6NHV when the batch
fits one chunk.

Normalisation, exact under gradient accumulation: the loss is
    sum over pairs of the per-pair loss / num_pairs
        + (alpha [compute_nll_loss] + w_sft [loss_type 'sft']) * (sum of chosen-token NLL) / num_chosen_tokens
where num_pairs and num_chosen_tokens default to this batch's own counts. To split a batch into k
micro-batches, pass the whole batch's counts to every call: the k losses (and gradients) then sum to
the whole batch's exactly (aot's sorting excepted: it ranks within each call).
"""
from __future__ import annotations

import math

import torch

from rdpo_fast.ops import checks as _checks
from . import table as lt
from rdpo_fast.ops.epilogue import forward_epilogue, grad_epilogue, token_stats
from rdpo_fast.ops.logprobs import linear_stats
from rdpo_fast.ops.schedule import accumulate_mm, chunk_rows, chunks_of_pairs, logits_into, workspace_bytes
from .head import check_head_options, preference_head

LIGER_KEYWORDS = ("ignore_index", "beta", "alpha", "compute_nll_loss", "compiled", "use_ref_model",
                  "average_log_prob", "chunk_size", "loss_type", "label_smoothing", "discopop_tau")
# "disable": the lm_head GEMMs run in the inputs' own dtype whatever an enclosing autocast says (exact,
# the default). "follow": under an enabled autocast they run in its dtype (TRL's and Liger's behaviour:
# fp32 master weights, bf16 GEMMs), dW still accumulated in fp32 and returned in the weight's dtype.
AUTOCAST_MODES = ("disable", "follow")
# How dW is summed over chunks (see _DwRing for "ring"). "fp32" stays the default until a GPU run has
# measured "ring" against it (issue 12).
DW_MODES = ("fp32", "weight", "ring")
# Loss types whose head divides the sequence log-probs by the completion lengths itself.
LENGTH_NORMALISED = tuple(n for n, info in lt.LOSSES.items() if n != "sft" and info.reads & lt.LENGTHS)


def _logit_transform(softcap, temperature, logit_scale):
    """(softcap, temperature) for the kernels, with a logit scale s > 0 folded in exactly (see
    rdpo_fast.models.loading.LogitTransform): the transform is scale, then softcap, then temperature."""
    _checks.check_transform(temperature, softcap)
    if not (isinstance(logit_scale, (int, float)) and math.isfinite(logit_scale) and logit_scale > 0):
        raise ValueError(f"logit_scale must be a finite number > 0, got {logit_scale!r}")
    s = float(logit_scale)
    return (None if softcap is None else float(softcap) / s), float(temperature) / s


class _Config:
    """Every setting of one loss, validated once at construction."""

    def __init__(self, *, ignore_index, beta, alpha, compute_nll_loss, use_ref_model, average_log_prob,
                 loss_type, label_smoothing, tau, gamma, ld_alpha, workspace_budget, dw_accumulation,
                 dw_ring_budget=None, loss_weights=None, use_weighting=False, f_divergence_type="reverse_kl",
                 f_alpha_divergence_coef=lt.DEFAULT_F_ALPHA, softcap=None, temperature=1.0, logit_scale=1.0,
                 autocast="disable"):
        self.ignore_index = int(ignore_index)
        self.beta = float(beta)
        self.alpha = float(alpha)
        self.compute_nll_loss = bool(compute_nll_loss)
        self.use_ref_model = bool(use_ref_model)
        self.average_log_prob = bool(average_log_prob)
        self.loss_type = loss_type if isinstance(loss_type, str) else tuple(loss_type)
        self.label_smoothing = float(label_smoothing)
        self.tau = float(tau)
        self.gamma = float(gamma)
        self.ld_alpha = None if ld_alpha is None else float(ld_alpha)
        self.workspace_budget = workspace_budget
        if dw_accumulation not in DW_MODES:
            raise ValueError(f"dw_accumulation must be one of {DW_MODES}, got {dw_accumulation!r}")
        self.dw_accumulation = dw_accumulation
        if dw_ring_budget is not None:
            if dw_accumulation != "ring":
                raise ValueError(f"dw_ring_budget sizes the ring of dw_accumulation='ring'; with "
                                 f"dw_accumulation={dw_accumulation!r} it would be ignored")
            if isinstance(dw_ring_budget, bool) or not isinstance(dw_ring_budget, int) or dw_ring_budget <= 0:
                raise ValueError(f"dw_ring_budget must be a positive int (bytes), got {dw_ring_budget!r}")
        self.dw_ring_budget = dw_ring_budget
        self.use_weighting = bool(use_weighting)
        self.f_divergence_type = f_divergence_type
        self.f_alpha_divergence_coef = float(f_alpha_divergence_coef)
        self.softcap, self.temperature = _logit_transform(softcap, temperature, logit_scale)
        if autocast not in AUTOCAST_MODES:
            raise ValueError(f"autocast must be one of {AUTOCAST_MODES}, got {autocast!r}")
        self.autocast = autocast
        # Validates the names, the weights and every scalar option against the list.
        spec = check_head_options(loss_type, beta=beta, label_smoothing=label_smoothing, gamma=gamma, tau=tau,
                                  loss_weights=loss_weights, f_divergence_type=f_divergence_type,
                                  f_alpha_divergence_coef=f_alpha_divergence_coef, weighting=self.use_weighting)
        self.members = spec.members
        self.reference = spec.reference
        name = lt.describe(spec.members)
        if self.ld_alpha is not None and not 0.0 <= self.ld_alpha <= 1.0:
            raise ValueError(f"ld_alpha must be in [0, 1] (LD-DPO weight of the verbose tail), got {ld_alpha}")
        if spec.reference == "free" and use_ref_model:
            raise ValueError(f"{name} is reference-free: pass use_ref_model=False (rdpo-fast train: --reference none)")
        lt.reward_kind(spec.members, has_reference=self.use_ref_model or spec.reference == "required")
        if alpha != 1.0 and not compute_nll_loss:
            raise ValueError("alpha weights the NLL term: set compute_nll_loss=True or leave alpha=1.0")
        normalising = [n for n, _ in spec.members if n != "sft" and lt.LOSSES[n].reads & lt.LENGTHS]
        if self.average_log_prob and normalising:
            raise ValueError(f"average_log_prob=True with loss_type {name!r}, which already divides the log-probs "
                             f"by the completion lengths ({', '.join(normalising)}): the lengths would count twice "
                             "(it would divide twice); leave it False")
        # sft is the chosen-token NLL: it rides the NLL term (raw token sums, num_chosen_tokens), so the
        # head sees only the other members.
        self.sft_weight = sum(w for n, w in spec.members if n == "sft")
        self.head_members = tuple((n, w) for n, w in spec.members if n != "sft")
        self.batch_level = any(lt.LOSSES[n].batch_level for n, _ in self.head_members)

    @property
    def reads_soft_labels(self):
        return bool(lt.readers(self.head_members, lt.SOFT_LABELS))

    @property
    def transform(self):
        """The epilogue kernels' logit-transform keywords."""
        return dict(temperature=self.temperature, softcap=self.softcap)

    def head_options(self, soft, len_c, len_r, weights):
        """preference_head's keywords for the members the head computes (all but sft)."""
        return dict(loss_type=[n for n, _ in self.head_members], loss_weights=[w for _, w in self.head_members],
                    beta=self.beta, label_smoothing=self.label_smoothing, soft_labels=soft, chosen_lengths=len_c,
                    rejected_lengths=len_r, gamma=self.gamma, tau=self.tau, weights=weights,
                    f_divergence_type=self.f_divergence_type, f_alpha_divergence_coef=self.f_alpha_divergence_coef)


def _pair_order(labels2d, ignore_index, n_kept):
    """Kept rows (flat indices), grouped pair by pair (chosen rows, then the matching rejected rows),
    with each row's sequence index and the per-sequence token counts. n_kept: the number of kept rows,
    known on the host, so the rows come from one sort of unique keys instead of nonzero (a host sync)."""
    n_seq, T = labels2d.shape
    P = n_seq // 2
    dev = labels2d.device
    keep = labels2d != ignore_index
    s = torch.arange(n_seq, device=dev)[:, None]
    # Sort key (pair, chosen/rejected, position); ignored rows after every kept one.
    key = (s % P) * (2 * T) + torch.div(s, P, rounding_mode="floor") * T + torch.arange(T, device=dev)
    key = torch.where(keep, key, key + n_seq * T)
    rows = torch.sort(key.reshape(-1)).indices[:n_kept]
    seq = torch.div(rows, T, rounding_mode="floor")
    return rows, seq, keep.sum(1)


def ld_tail(labels2d, ignore_index):
    """LD-DPO: [2B, T] bool, True for completion tokens past the pair's shorter completion (the verbose
    tail, weighted by ld_alpha). Those tokens are summed in sequence slot 2B + s instead of s."""
    P = labels2d.shape[0] // 2
    keep = (labels2d != ignore_index).long()
    counts = keep.sum(1)
    position = keep.cumsum(1) - 1  # rank of each kept token within its completion
    public = torch.minimum(counts[:P], counts[P:]).repeat(2)
    return position >= public[:, None]


class _SeqStats:
    """Per-sequence accumulators the forward epilogue adds into (one slot per sequence, two with LD-DPO):
    sums of label log-probs, of logits, and (WPO) of log sum p^2."""

    def __init__(self, n_slots, device, with_sq):
        self.logp = torch.zeros(n_slots, device=device, dtype=torch.float32)
        self.logit = torch.zeros(n_slots, device=device, dtype=torch.float32)
        self.sq = torch.zeros(n_slots, device=device, dtype=torch.float32) if with_sq else None

    def folded(self, t, n_seq):
        """Unweighted per-sequence totals (the LD tail slots folded back in)."""
        return t[:n_seq] + t[n_seq:] if t.numel() > n_seq else t


class _Grads:
    """The gradients made in forward: dX rows (final per chunk), dW (accumulated over chunks), d bias."""

    def __init__(self, x2, weight, need_grad, dw_accumulation, w_dtype=None):
        V, H = weight.shape
        dev = x2.device
        self.x = torch.zeros_like(x2) if need_grad[0] else None
        # dW sums one GEMM per chunk: in fp32 by default, or (dw_accumulation="weight") in the weight's
        # own dtype, which halves the traffic of re-reading and re-writing dW once per chunk. The ring
        # schedule picks its own dtype (w_dtype, see _DwRing).
        if w_dtype is None:
            w_dtype = torch.float32 if dw_accumulation == "fp32" else weight.dtype
        self.w = torch.empty(V, H, device=dev, dtype=w_dtype) if need_grad[1] else None
        self.b = torch.zeros(V, device=dev, dtype=torch.float32) if need_grad[2] else None
        self.any = any(need_grad)


class _DwRing:
    """dw_accumulation="ring": the chunks' dZ (in the GEMM dtype) and their gathered hidden rows stay in
    a ring; dW is one GEMM per flush over every row the ring holds, dW (+)= dZ_ring^T @ x_ring, so the
    GEMM itself sums the rows in fp32 and the [V, H] gradient is touched once per flush instead of once
    per chunk. The ring's logit rows are the chunks' logits workspace as well: each chunk's logits GEMM
    writes straight into its slot, the dZ kernel overwrites them in place, and the slot is kept.

    Memory (budget: dw_ring_budget bytes, default the workspace budget plus the 4 V H bytes of the fp32
    accumulator, which is what the fp32 schedule holds itself): a ring row costs (V + H) x the GEMM
    dtype's size. When every kept row of the batch fits, there is one flush, which writes dW directly in
    the weight's dtype (one rounding; no fp32 [V, H] buffer, no cast). Otherwise the fp32 accumulator is
    needed across flushes and is counted in the budget: the ring gets the rest, at least one chunk.
    Slots are whole chunks, filled in processing order; a chunk that does not fit flushes the ring first.

    The plan is made on the host from the chunk sizes (host ints): no device sync."""

    def __init__(self, sizes, V, H, gemm_dtype, weight_dtype, budget, dev):
        es = torch.empty((), dtype=gemm_dtype).element_size()
        row_bytes = (V + H) * es
        total = sum(sizes)
        if total * row_bytes <= budget:
            cap = total
        else:
            cap = max(max(sizes), (budget - 4 * V * H) // row_bytes)
        self.offsets, self.flush_after = [], []
        fill = 0
        for n in sizes:
            if fill + n > cap:
                self.flush_after[-1] = True
                fill = 0
            self.offsets.append(fill)
            self.flush_after.append(False)
            fill += n
        self.flush_after[-1] = True
        self.flushes = sum(self.flush_after)
        self.sizes = list(sizes)
        self.rows = max(o + n for o, n in zip(self.offsets, sizes))
        self.z = torch.empty(self.rows, V, device=dev, dtype=gemm_dtype)
        self.x = torch.empty(self.rows, H, device=dev, dtype=gemm_dtype)
        # One flush: dW in the weight's dtype straight from the GEMM (fp32 master weights under
        # autocast="follow" get the GEMM's fp32 result, not a rounded copy); several: fp32 accumulator.
        single_ok = weight_dtype in (gemm_dtype, torch.float32)
        self.w_dtype = weight_dtype if self.flushes == 1 and single_ok else torch.float32
        self._fill = 0
        self._first = True

    def slot(self, i, n):
        """(logit rows, hidden rows) of the i-th chunk in processing order, n rows."""
        o = self.offsets[i]
        return self.z[o: o + n], self.x[o: o + n]

    def done(self, i, n, grads):
        """The i-th chunk's dZ is in its slot: flush if the plan says so."""
        self._fill = self.offsets[i] + n
        if self.flush_after[i] and grads.w is not None:
            a, b = self.z[: self._fill].t(), self.x[: self._fill]
            if grads.w.dtype == a.dtype:
                grads.w.addmm_(a, b, beta=0.0 if self._first else 1.0)
            else:
                accumulate_mm(grads.w, a, b, first=self._first)
            self._first = False


def _chunk_logits(ws, x2, weight, bias, rows, xs=None):
    """The chunk's hidden rows (in the GEMM dtype, weight's) and its logits in the workspace. xs: where
    to gather the rows (a ring slot), else a fresh tensor."""
    if xs is not None:
        xc = xs[: rows.numel()]
        if x2.dtype == xs.dtype:
            torch.index_select(x2, 0, rows, out=xc)
        else:
            xc.copy_(x2.index_select(0, rows))
    else:
        xc = x2.index_select(0, rows)
        if xc.dtype != weight.dtype:  # autocast="follow": the GEMMs run in the autocast dtype
            xc = xc.to(weight.dtype)
    return xc, logits_into(ws[: rows.numel()], xc, weight, bias)


def _chunk_stats(ws, x2, weight, bias, rows, labels, slots, stats, *, temperature=1.0, softcap=None, xs=None):
    """One chunk's logits into the workspace and its forward epilogue, adding into stats.
    Returns (the chunk's hidden rows, its logits, its rows' logsumexp)."""
    xc, z = _chunk_logits(ws, x2, weight, bias, rows, xs)
    lse, _ = forward_epilogue(z, labels, seq_ids=slots, seq_logp=stats.logp, seq_logit=stats.logit,
                              seq_sq=stats.sq, temperature=temperature, softcap=softcap)
    return xc, z, lse


def _chunk_grads(z, xc, labels, lse, g_tok, rows, weight, grads, first, *, temperature=1.0, softcap=None,
                 dw=True):
    """dZ in place from the chunk's logits and per-token upstream gradients, then dX, dW, d bias.
    dw=False leaves dW to the ring's flush (_DwRing)."""
    dz = grad_epilogue(z, labels, lse, g_tok, temperature=temperature, softcap=softcap)
    if grads.x is not None:
        grads.x.index_copy_(0, rows, torch.mm(dz, weight).to(grads.x.dtype))
    if grads.w is not None and dw:  # the first chunk writes dW (beta=0): no zero-fill pass over [V, H]
        if grads.w.dtype == torch.float32:
            accumulate_mm(grads.w, dz.t(), xc, first=first)
        else:
            grads.w.addmm_(dz.t().to(grads.w.dtype), xc.to(grads.w.dtype), beta=0.0 if first else 1.0)
    if grads.b is not None:
        grads.b += dz.sum(0, dtype=torch.float32)


class _PairHead:
    """The preference head over a range of pairs, from the accumulated sequence statistics (and, for WPO,
    the pairs' weights from them): writes the pairs' losses, rewards and log-probs, and each sequence's
    gradient into g_seq."""

    def __init__(self, cfg, stats, lens, ref_c, ref_r, soft, P, num_pairs):
        dev = lens.device
        self.cfg, self.stats, self.lens, self.P, self.num_pairs = cfg, stats, lens, P, num_pairs
        self.ref_c, self.ref_r, self.soft = ref_c, ref_r, soft
        self.losses = torch.zeros(P, device=dev, dtype=torch.float32)
        self.rew_c = torch.empty_like(self.losses)
        self.rew_r = torch.empty_like(self.losses)
        self.seq_logps = torch.empty(2 * P, device=dev, dtype=torch.float32)
        self.g_seq = torch.zeros(2 * P, device=dev, dtype=torch.float32)

    def run(self, p0, p1):
        cfg, P, lens = self.cfg, self.P, self.lens
        sc = torch.arange(p0, p1, device=lens.device)  # the chosen sequences; rejected are P + sc
        sr = sc + P
        c_sum, r_sum = _combine(self.stats.logp, sc, sr, 2 * P, cfg.ld_alpha)
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
        l, rc, rr, (dc, dr, _, _) = preference_head(c, r, refc, refr, **opts)
        self.losses[p0:p1], self.rew_c[p0:p1], self.rew_r[p0:p1] = l, rc, rr
        self.g_seq[sc] = dc * scale_c / self.num_pairs
        self.g_seq[sr] = dr * scale_r / self.num_pairs

    def nll_weight(self):
        """The chosen-token NLL's coefficient: alpha (compute_nll_loss) plus sft's loss weight."""
        cfg = self.cfg
        return (cfg.alpha if cfg.compute_nll_loss else 0.0) + cfg.sft_weight


def _token_grads(head, seq, slot, nll_coef, cfg, P):
    """Per-token upstream gradient of the chunk's rows: their sequence's (LD tail tokens weigh ld_alpha),
    minus the NLL term's on chosen tokens."""
    g_tok = head.g_seq.index_select(0, seq)
    if cfg.ld_alpha is not None:
        g_tok = torch.where(slot >= 2 * P, g_tok * cfg.ld_alpha, g_tok)
    if nll_coef:
        g_tok = g_tok - (seq < P).float() * nll_coef
    return g_tok


class _FusedPreferenceFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, _input, weight, bias, target, ref_c, ref_r, soft, cfg, norms, need_grad, host_counts,
                compute_dtype, want_stats):
        n_seq, T, H = _input.shape
        P = n_seq // 2
        V = weight.shape[0]
        dev = _input.device
        x2 = _input.reshape(-1, H)
        # The GEMMs' dtype: the inputs' own, or an enclosing autocast's (autocast="follow"). The weight is
        # cast once; dW is still accumulated in fp32 and handed back in the weight's own dtype.
        cd = _input.dtype if compute_dtype is None else compute_dtype
        w_c = weight if weight.dtype == cd else weight.to(cd)
        b_c = bias if bias is None or bias.dtype == cd else bias.to(cd)
        tf = cfg.transform
        rows, seq, counts = _pair_order(target, cfg.ignore_index, sum(host_counts))
        labels = target.reshape(-1).index_select(0, rows)
        slot = seq
        if cfg.ld_alpha is not None:
            tail = ld_tail(target, cfg.ignore_index).reshape(-1).index_select(0, rows)
            slot = seq + tail.long() * n_seq
        n_slots = 2 * n_seq if cfg.ld_alpha is not None else n_seq
        num_pairs, num_chosen_tokens = norms
        num_pairs = P if num_pairs is None else num_pairs
        num_chosen_tokens = sum(host_counts[:P]) if num_chosen_tokens is None else num_chosen_tokens

        stats = _SeqStats(n_slots, dev, with_sq=cfg.use_weighting)
        head = _PairHead(cfg, stats, counts.float(), ref_c, ref_r, soft, P, num_pairs)
        # TRL's entropy and token-accuracy metrics, from the same logits (want_stats): sums over tokens.
        tok_stats = torch.zeros(2, device=dev, dtype=torch.float32) if want_stats else None

        # Chunks of whole pairs within the budget; a single pair longer than that gets its own chunk.
        per_pair = [a + b for a, b in zip(host_counts[:P], host_counts[P:])]
        cap = chunk_rows(rows.numel(), V, w_c, cfg.workspace_budget)
        chunks = chunks_of_pairs(per_pair, cap)
        sizes = [r1 - r0 for _, _, r0, r1 in chunks]
        # The order the gradient pass visits the chunks: batch-level losses start with the last chunk,
        # whose logits the statistics pass left in the workspace.
        last = len(chunks) - 1
        order = list(range(len(chunks))) if not cfg.batch_level else [last] + list(range(last))
        ring = None
        if cfg.dw_accumulation == "ring" and need_grad[1]:
            budget = cfg.dw_ring_budget
            if budget is None:
                budget = (workspace_bytes() if cfg.workspace_budget is None else cfg.workspace_budget) + 4 * V * H
            ring = _DwRing([sizes[k] for k in order], V, H, cd, weight.dtype, budget, dev)
            # The ring's first slot is the statistics pass's workspace: order[0] lands there.
            ws, xs = ring.z, ring.x
        else:
            ws, xs = torch.empty(max(sizes), V, device=dev, dtype=cd), None
        grads = _Grads(x2, weight, need_grad, cfg.dw_accumulation, None if ring is None else ring.w_dtype)

        def stats_of(k, z_out=ws, x_out=xs):
            _, _, r0, r1 = chunks[k]
            xc, z, lse = _chunk_stats(z_out, x2, w_c, b_c, rows[r0:r1], labels[r0:r1], slot[r0:r1], stats,
                                      xs=x_out, **tf)
            if tok_stats is not None:
                entropy, top1 = token_stats(z, labels[r0:r1], lse, **tf)
                tok_stats[0] += entropy.sum()
                tok_stats[1] += (top1 * (seq[r0:r1] < P)).sum()
            return xc, z, lse

        def grads_of(i, k, xc, z, lse, nll_coef):
            # i: the chunk's place in `order` (the first writes dW with beta=0), k: its index.
            _, _, r0, r1 = chunks[k]
            g_tok = _token_grads(head, seq[r0:r1], slot[r0:r1], nll_coef, cfg, P)
            _chunk_grads(z, xc, labels[r0:r1], lse, g_tok, rows[r0:r1], w_c, grads, i == 0, dw=ring is None,
                         **tf)
            if ring is not None:
                ring.done(i, r1 - r0, grads)

        nll_coef = head.nll_weight() / max(num_chosen_tokens, 1)
        if not cfg.batch_level:
            # One pass, 6NHV: each chunk's head needs only its own pairs.
            for k, (p0, p1, r0, r1) in enumerate(chunks):
                xc, z, lse = stats_of(k) if ring is None else stats_of(k, *ring.slot(k, r1 - r0))
                head.run(p0, p1)
                if grads.any:
                    grads_of(k, k, xc, z, lse, nll_coef)
        else:
            # Two phases: every chunk's statistics, the head on the whole batch, then the gradients. The
            # last chunk's logits are still in the workspace, so it goes first and is not recomputed.
            lses = []
            for k in range(len(chunks)):
                xc, z, lse = stats_of(k)
                lses.append(lse)
            head.run(0, P)
            if grads.any:
                for i, k in enumerate(order):
                    if i > 0:
                        _, _, r0, r1 = chunks[k]
                        z_out, x_out = (ws, None) if ring is None else ring.slot(i, r1 - r0)
                        xc, z = _chunk_logits(z_out, x2, w_c, b_c, rows[r0:r1], x_out)
                    grads_of(i, k, xc, z, lses[k], nll_coef)

        raw = stats.folded(stats.logp, n_seq)
        lsum = stats.folded(stats.logit, n_seq)
        nll_on = cfg.compute_nll_loss or cfg.sft_weight != 0
        nll = -raw[:P].sum() / max(num_chosen_tokens, 1) if nll_on else torch.zeros((), device=dev)
        chosen_tokens = counts[:P].sum().clamp_min(1)
        rejected_tokens = counts[P:].sum().clamp_min(1)
        chosen_logits_mean = lsum[:P].sum() / (chosen_tokens * V)
        rejected_logits_mean = lsum[P:].sum() / (rejected_tokens * V)
        loss = head.losses.sum() / num_pairs + head.nll_weight() * nll

        # Kept in the parameters' dtypes: the fp32 accumulators are freed before backward.
        ctx.save_for_backward(
            None if grads.x is None else grads.x.view(_input.shape),
            None if grads.w is None else grads.w.to(weight.dtype),
            None if grads.b is None else grads.b.to(bias.dtype))
        aux = (head.seq_logps[:P].clone(), head.seq_logps[P:].clone(), chosen_logits_mean, rejected_logits_mean,
               nll.detach(), head.rew_c, head.rew_r)
        if tok_stats is None:
            tok_stats = torch.zeros(0, device=dev)
        ctx.mark_non_differentiable(*aux, tok_stats)
        return (loss, *aux, tok_stats)

    @staticmethod
    def backward(ctx, grad_loss, *_aux_grads):
        gx, gw, gb = ctx.saved_tensors
        # The usual case, loss.backward() on this loss alone, skips a pass over the [V, H] gradient.
        unit = bool(grad_loss == 1)
        out = []
        for g, need in zip((gx, gw, gb), ctx.needs_input_grad[:3]):
            if not need or g is None:
                out.append(None)
            else:
                out.append(g if unit else g * grad_loss.to(g.dtype))
        return (*out, None, None, None, None, None, None, None, None, None, None)


_OUTPUT_NAMES = ("loss", "chosen_logps", "rejected_logps", "chosen_logits_mean", "rejected_logits_mean", "nll_loss",
                 "chosen_rewards", "rejected_rewards")


def _combine(sums, sc, sr, n_seq, ld_alpha):
    c, r = sums[sc], sums[sr]
    if ld_alpha is not None:
        c = c + ld_alpha * sums[sc + n_seq]
        r = r + ld_alpha * sums[sr + n_seq]
    return c, r


class FusedLinearPreferenceLoss(torch.nn.Module):
    """Drop-in for liger_kernel.chunked_loss.LigerFusedLinearDPOLoss (same keywords, forward and return),
    for every loss_type of SPEC section 4 and rdpo_fast.LOSS_TYPES. Extra keywords: gamma (simpo margin),
    tau (discopop; Liger's discopop_tau is accepted too), ld_alpha (LD-DPO verbose-tail weight),
    workspace_budget (bytes), dw_accumulation ("fp32", the default: one dW GEMM per chunk added into an
    fp32 [V, H] accumulator; "weight": sum the per-chunk dW in the weight's dtype, as Liger does, faster
    for bf16 weights at one rounding per chunk; "ring": keep the chunks' dZ and hidden rows in a ring of
    dw_ring_budget bytes and issue one dW GEMM per flush, see _DwRing), dw_ring_budget (bytes, "ring"
    only; default workspace_budget + 4 V H, the workspace and fp32 accumulator the "fp32" schedule holds).
    Ring memory against speed, Llama-3-8B head (H=4096, V=128256) in bf16: a ring row costs (V + H) x 2
    = 258.5 KiB; N=16384 rows in one flush take 4.04 GiB where the fp32 schedule holds 2.46 GiB (512 MiB
    workspace + 1.96 GiB accumulator), about +1.6 GiB of peak, and then dW is written once, in bf16, with
    no fp32 buffer and no cast; with several flushes the fp32 accumulator stays (counted in the budget)
    and is re-read once per flush instead of once per chunk (a ring the accumulator's size, 1.96 GiB,
    holds three 2048-row chunks: three flushes at N=16384 instead of eight dW GEMMs into the accumulator;
    8192 rows, 2.02 GiB, give two). The default budget gives one flush up to ~10k rows at
    that head, else the fp32 schedule's chunk-by-chunk flushes. "fp32" stays the default until a GPU
    run has measured "ring" (bench/device_pass.sh). check_finite
    (raise on NaN/inf in the kept rows of the inputs, the weights, the reference or the outputs; default:
    the environment variable RDPO_FAST_CHECK_FINITE, else off, when NaN stays in the pairs it touches).
    TRL's DPOConfig options, same names and meaning: loss_type may be a list, with loss_weights (e.g.
    MPO: ["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0]); use_weighting (WPO weights from the policy's
    own token probabilities, computed in the fused pass, without gradient as in TRL); f_divergence_type
    and f_alpha_divergence_coef. The batch-level aot and aot_unpaired run the two-phase schedule of the
    module docstring (up to 8NHV instead of 6NHV).
    The model's logit transform (SPEC section 3): logit_scale (Cohere's), then softcap (Gemma 2/3's
    final_logit_softcapping: z = c tanh(z / c)), then temperature; rdpo_fast.models.loading.logit_transform
    reads them from a model. They apply to the policy and to an in-pass reference alike.
    autocast: "disable" (default) runs the lm_head GEMMs in the inputs' own dtype whatever an enclosing
    torch.autocast says; "follow" runs them in the autocast dtype when one is enabled (fp32 master
    weights, bf16 GEMMs, as TRL's head and Liger do), dW still accumulated in fp32 and returned in the
    weight's dtype.
    `compiled` and `chunk_size` are Liger's performance knobs: accepted, with no effect on results (our
    kernels are always compiled, and chunks follow the workspace budget). Liger's public attributes
    (loss_type, beta, ignore_index, ...) read the settings; assigning one re-validates the whole set."""

    def __init__(self, ignore_index=-100, beta=0.1, alpha=1.0, compute_nll_loss=False, compiled=True,
                 use_ref_model=True, average_log_prob=False, chunk_size=1, loss_type="sigmoid",
                 label_smoothing=0.0, discopop_tau=0.05, *, tau=None, gamma=0.0, ld_alpha=None,
                 workspace_budget=None, dw_accumulation="fp32", dw_ring_budget=None, loss_weights=None,
                 use_weighting=False,
                 f_divergence_type="reverse_kl", f_alpha_divergence_coef=lt.DEFAULT_F_ALPHA, check_finite=None,
                 softcap=None, temperature=1.0, logit_scale=1.0, autocast="disable"):
        super().__init__()
        self.check_finite = check_finite  # None: RDPO_FAST_CHECK_FINITE decides (see _checks.check_finite)
        if tau is not None and discopop_tau != 0.05 and tau != discopop_tau:
            raise ValueError("tau and discopop_tau name the same setting; give one")
        self._settings = dict(
            ignore_index=ignore_index, beta=beta, alpha=alpha, compute_nll_loss=compute_nll_loss,
            use_ref_model=use_ref_model, average_log_prob=average_log_prob, loss_type=loss_type,
            label_smoothing=label_smoothing, tau=discopop_tau if tau is None else tau, gamma=gamma,
            ld_alpha=ld_alpha, workspace_budget=workspace_budget, dw_accumulation=dw_accumulation,
            dw_ring_budget=dw_ring_budget, loss_weights=loss_weights, use_weighting=use_weighting, f_divergence_type=f_divergence_type,
            f_alpha_divergence_coef=f_alpha_divergence_coef, softcap=softcap, temperature=temperature,
            logit_scale=logit_scale, autocast=autocast)
        self._extra = {"compiled": compiled, "chunk_size": chunk_size}
        self.cfg = _Config(**self._settings)

    def _set(self, name, value):
        settings = {**self._settings, name: value}
        self.cfg = _Config(**settings)  # raises on a bad value, leaving the old settings in place
        self._settings = settings

    def forward(self, lin_weight, _input, target, bias=None, ref_input=None, ref_weight=None, ref_bias=None,
                *, ref_chosen_logps=None, ref_rejected_logps=None, soft_labels=None, num_pairs=None,
                num_chosen_tokens=None, return_token_stats=False, host_counts=None):
        """Returns (loss, (chosen_logps, rejected_logps, chosen_logits_mean, rejected_logits_mean,
        nll_loss, chosen_rewards, rejected_rewards)). num_pairs / num_chosen_tokens: the whole batch's
        counts when this call is one micro-batch of it (see the module docstring).
        return_token_stats=True adds a third element, TRL's per-token metrics as sums (fp32 tensors):
        {"entropy_sum": over all completion tokens, "chosen_top1": chosen tokens whose label is the
        argmax (ties go to the lower token id, as torch.argmax), "num_tokens", "num_chosen_tokens"}.
        host_counts: the completion-token count of each of the 2B rows of target as host ints (the
        collator has them): the call then makes no host sync before its kernels are queued (the counts,
        and the row order, are otherwise read back from the device once). On CUDA the given counts and
        the label range are then checked on the device (torch._assert_async: a mismatch fails at the
        next sync, as a device-side error); where syncs cost nothing (CPU) they are checked exactly,
        with a ValueError naming host_counts. Results are identical with and without them."""
        cfg = self.cfg
        compute = _compute_dtype(cfg, _input)
        _check_batch(_input, lin_weight, target, bias, cfg, compute=compute)
        n_seq = _input.shape[0]
        P = n_seq // 2
        V = lin_weight.shape[0]
        sync = host_counts is None or _syncs_free(_input.device)
        counts = self._counts(target, V, host_counts, sync)
        ref_c, ref_r = self._reference(ref_input, ref_weight, ref_bias, target, ref_chosen_logps,
                                       ref_rejected_logps, P, V, compute, n_kept=sum(counts))
        if soft_labels is not None:
            if not cfg.reads_soft_labels:
                raise ValueError(f"soft_labels are read by loss_type 'rdpo' (or 'sigmoid'), not "
                                 f"{lt.describe(cfg.members)!r}")
            if not isinstance(soft_labels, torch.Tensor) or tuple(soft_labels.shape) != (P,):
                raise ValueError(f"soft_labels must be a tensor of shape [{P}] (one per pair)")
            if soft_labels.device != _input.device:
                raise ValueError(f"soft_labels is on {soft_labels.device} but _input is on {_input.device}")
            if cfg.label_smoothing != 0.0:
                raise ValueError("soft_labels and label_smoothing both set the label noise; give one")
            _require((soft_labels >= 0) & (soft_labels <= 1), "soft_labels must lie in [0, 1]", sync)
            soft_labels = soft_labels.detach()
        for name, v in (("num_pairs", num_pairs), ("num_chosen_tokens", num_chosen_tokens)):
            if v is not None and (not isinstance(v, int) or v <= 0):
                raise ValueError(f"{name} must be a positive int (the whole batch's count), got {v!r}")
        need = (_input.requires_grad, lin_weight.requires_grad, bias is not None and bias.requires_grad)
        need = tuple(torch.is_grad_enabled() and n for n in need)
        finite = _checks.check_finite_on(self.check_finite)
        if finite:
            kept = target != cfg.ignore_index
            _checks.check_finite(type(self).__name__, ("_input", _input, kept), ("lin_weight", lin_weight),
                                 ("bias", bias), ("ref_input", ref_input, kept), ("ref_weight", ref_weight),
                                 ("ref_bias", ref_bias), ("ref_chosen_logps", ref_c), ("ref_rejected_logps", ref_r))
        # The GEMMs run in `compute` (the inputs' dtype unless autocast="follow"): autocast itself is off
        # inside, so it cannot recast the workspace.
        with torch.autocast(_input.device.type, enabled=False):
            out = _FusedPreferenceFn.apply(_input, lin_weight, bias, target, ref_c, ref_r, soft_labels, cfg,
                                           (num_pairs, num_chosen_tokens), need, counts, compute,
                                           return_token_stats)
        if finite:
            _checks.check_finite(type(self).__name__, *zip(_OUTPUT_NAMES, out[:8]), result=True)
        aux = tuple(out[1:8])
        if not return_token_stats:
            return out[0], aux
        stats = out[8]
        return out[0], aux, {"entropy_sum": stats[0], "chosen_top1": stats[1],
                             "num_tokens": sum(counts), "num_chosen_tokens": sum(counts[:P])}

    def _counts(self, target, V, host_counts, sync):
        """Completion tokens per row of target (host ints), the labels' range checked."""
        cfg = self.cfg
        n_seq = target.shape[0]
        dev_counts = (target != cfg.ignore_index).sum(1)
        bad = _checks.out_of_range(target, V, cfg.ignore_index)
        if host_counts is not None:
            if not isinstance(host_counts, (list, tuple)) or len(host_counts) != n_seq or not all(
                    isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in host_counts):
                raise ValueError(f"host_counts must be a list of {n_seq} ints >= 0 (the completion tokens of each "
                                 f"row of target), got {host_counts!r}")
            counts = list(host_counts)
        if sync:
            # One host transfer for every count the schedule and the checks need.
            host = torch.cat([dev_counts, bad.view(1)]).tolist()
            if host[n_seq]:
                _checks.raise_out_of_range(target, V, cfg.ignore_index, "target")
            if host_counts is not None and host[:n_seq] != counts:
                first = next(i for i, (a, b) in enumerate(zip(counts, host)) if a != b)
                raise ValueError(f"host_counts[{first}] = {counts[first]} but row {first} of target has "
                                 f"{host[first]} completion tokens")
            counts = host[:n_seq]
        else:
            want = torch.tensor(counts, dtype=dev_counts.dtype).to(target.device, non_blocking=True)
            _require((bad == 0) & (dev_counts == want).all(), "target holds labels outside [0, V) that are not "
                     "ignore_index, or host_counts differ from target's completion-token counts", sync=False)
        if 0 in counts:
            raise ValueError(f"sequence {counts.index(0)} of the batch has no completion token (all targets "
                             f"are ignore_index={cfg.ignore_index}); its log-prob is undefined")
        return counts

    def _reference(self, ref_input, ref_weight, ref_bias, target, ref_chosen_logps, ref_rejected_logps, P, V,
                   compute=None, n_kept=None):
        cfg = self.cfg
        in_pass = ref_input is not None or ref_weight is not None or ref_bias is not None
        given = ref_chosen_logps is not None or ref_rejected_logps is not None
        if not cfg.use_ref_model:
            if in_pass or given:
                raise ValueError("use_ref_model=False, yet reference inputs or log-probs were given")
            if cfg.reference != "required":  # reference-free losses, or sft alone
                return None, None
            zeros = torch.zeros(P, device=target.device)
            return zeros, zeros
        if in_pass and given:
            raise ValueError("give the reference either in-pass (ref_input, ref_weight) or precomputed "
                             "(ref_chosen_logps, ref_rejected_logps), not both")
        if given:
            for name, t in (("ref_chosen_logps", ref_chosen_logps), ("ref_rejected_logps", ref_rejected_logps)):
                if not isinstance(t, torch.Tensor) or tuple(t.shape) != (P,):
                    raise ValueError(f"{name} must be a tensor of shape [{P}] (one per pair)")
                if t.device != target.device:
                    raise ValueError(f"{name} is on {t.device} but target is on {target.device}")
            return ref_chosen_logps.detach().float(), ref_rejected_logps.detach().float()
        if ref_input is None or ref_weight is None:
            raise ValueError("use_ref_model=True needs ref_input and ref_weight, or ref_chosen_logps and "
                             "ref_rejected_logps")
        _check_batch(ref_input, ref_weight, target, ref_bias, cfg, prefix="ref_", compute=compute)
        if ref_weight.shape[0] != V:
            raise ValueError(f"ref_weight has a vocabulary of {ref_weight.shape[0]}, lin_weight of {V}: "
                             "the reference must score the same token ids")
        with torch.no_grad():
            if compute is not None:
                ref_input, ref_weight = ref_input.to(compute), ref_weight.to(compute)
                ref_bias = None if ref_bias is None else ref_bias.to(compute)
            seq_ids = torch.arange(2 * P, device=target.device).repeat_interleave(target.shape[1])
            ld = cfg.ld_alpha
            if ld is not None:
                tail = ld_tail(target, cfg.ignore_index).reshape(-1)
                seq_ids = seq_ids + tail.long() * 2 * P
            _, sums, _ = linear_stats(ref_input, ref_weight, target, ref_bias, seq_ids,
                                       4 * P if ld is not None else 2 * P, cfg.ignore_index, cfg.temperature,
                                       cfg.softcap, cfg.workspace_budget, n_kept=n_kept)
            if ld is not None:
                sums = sums[: 2 * P] + ld * sums[2 * P:]
            if cfg.average_log_prob:
                sums = sums / (target != cfg.ignore_index).sum(1).clamp_min(1)
        return sums[:P], sums[P:]


def _syncs_free(device):
    """Whether a device-to-host read costs nothing: on the CPU there is no queue to drain."""
    return device.type == "cpu"


def _require(ok, message, sync):
    """ValueError(message) unless the bool tensor ok is all true. sync=False queues the check on the
    device instead (torch._assert_async), so the host does not wait for the device."""
    if sync:
        if not bool(ok.all()):
            raise ValueError(message)
    else:
        torch._assert_async(ok.all(), message)


def _compute_dtype(cfg, _input):
    """The enclosing autocast's dtype under autocast="follow" when one is enabled, else None (the
    inputs' own dtype)."""
    dev = _input.device.type if isinstance(_input, torch.Tensor) else "cpu"
    if cfg.autocast == "follow" and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return None


def _check_batch(_input, weight, target, bias, cfg, prefix="", compute=None):
    if not isinstance(_input, torch.Tensor) or _input.dim() != 3:
        raise ValueError(f"{prefix}_input must be [2B, T, H] (chosen rows first, then rejected), got "
                         f"{getattr(_input, 'shape', type(_input).__name__)}")
    if _input.shape[0] == 0 or _input.shape[0] % 2:
        raise ValueError(f"{prefix}_input has {_input.shape[0]} rows: chosen/rejected pairs need an even, "
                         "non-zero number (chosen rows first, then rejected)")
    if not isinstance(target, torch.Tensor) or target.dim() != 2:
        raise ValueError(f"target must be [2B, T], got {getattr(target, 'shape', type(target).__name__)}")
    if compute is not None:
        # Each input is cast to the autocast dtype: check their own dtypes, then the rest on
        # zero-stride views in that dtype (no copy of the [V, H] weight just to check it).
        for name, t in (("_input", _input), ("weight", weight), ("bias", bias)):
            if isinstance(t, torch.Tensor) and t.dtype not in _checks.FLOAT_DTYPES:
                raise ValueError(f"{prefix}{name} dtype {t.dtype} is not supported (float32, bfloat16, float16)")
        _input, weight, bias = (_as_dtype(t, compute) for t in (_input, weight, bias))
    _checks.check_linear_inputs(_input, weight, target, bias, cfg.ignore_index, 1.0, None, check_range=False)


def _as_dtype(t, dtype):
    if not isinstance(t, torch.Tensor) or t.dtype == dtype or t.numel() == 0:
        return t
    return t.new_zeros((), dtype=dtype).expand(t.shape)


def _liger_attribute(name, key=None):
    key = key or name

    def get(self):
        return self._settings[key] if key in self._settings else self._extra[key]

    def set_(self, value):
        if key in self._extra:
            self._extra[key] = value
        else:
            self._set(key, value)

    return property(get, set_, doc=f"Liger's `{name}` setting (assigning re-validates the loss's settings).")


for _name in LIGER_KEYWORDS:
    setattr(FusedLinearPreferenceLoss, _name, _liger_attribute(_name, "tau" if _name == "discopop_tau" else None))
for _name in ("gamma", "ld_alpha", "softcap", "temperature", "logit_scale", "autocast", "workspace_budget",
              "dw_accumulation", "dw_ring_budget", "loss_weights", "use_weighting", "f_divergence_type", "f_alpha_divergence_coef"):
    setattr(FusedLinearPreferenceLoss, _name, _liger_attribute(_name))
del _name
