"""The drop-in fused preference loss: lm_head + log-probs + generalized DPO head in one autograd op,
never holding the N x V logits. Same constructor keywords, forward signature and return layout as
liger_kernel's LigerFusedLinearDPOLoss, plus precomputed reference log-probs and rDPO soft labels.

Schedule (SPEC section 6): prompt and pad rows are dropped, the kept rows are grouped pair by pair and
cut into chunks of whole pairs that fit the logits workspace. Per chunk: one logits GEMM into the
workspace; the fused epilogue (logsumexp, label log-prob, per-sequence sums of log-probs and logits);
the preference head on the chunk's pairs, which gives each sequence's gradient; the in-place dZ
kernel; then the dX GEMM (final for these rows) and the dW GEMM, accumulated in fp32 across chunks.
Gradients are made in forward and scaled by grad_output in backward: 6NHV FLOPs in all.

Normalisation, exact under gradient accumulation: the loss is
    sum over pairs of the per-pair loss / num_pairs  +  alpha * (sum of chosen-token NLL) / num_chosen_tokens
where num_pairs and num_chosen_tokens default to this batch's own counts. To split a batch into k
micro-batches, pass the whole batch's counts to every call: the k losses (and gradients) then sum to
the whole batch's exactly.
"""
from __future__ import annotations

import math

import torch

from . import _checks
from .epilogue import forward_epilogue, grad_epilogue, token_stats
from .ops import _accumulate_mm, _linear_stats, _logits_into, chunk_rows
from .preference import LOSS_TYPES, preference_head, validate_preference_args

LIGER_KEYWORDS = ("ignore_index", "beta", "alpha", "compute_nll_loss", "compiled", "use_ref_model",
                  "average_log_prob", "chunk_size", "loss_type", "label_smoothing", "discopop_tau")
# Loss types whose head divides the sequence log-probs by the completion lengths itself.
LENGTH_NORMALISED = ("ipo", "sigmoid_norm", "simpo")
# "disable": the lm_head GEMMs run in the inputs' own dtype whatever an enclosing autocast says (exact,
# the default). "follow": under an enabled autocast they run in its dtype (TRL's and Liger's behaviour:
# fp32 master weights, bf16 GEMMs), dW still accumulated in fp32 and returned in the weight's dtype.
AUTOCAST_MODES = ("disable", "follow")


def _logit_transform(softcap, temperature, logit_scale):
    """(softcap, temperature) for the kernels, with a logit scale s > 0 folded in exactly (see
    rdpo_fast.modeling.LogitTransform): the transform is scale, then softcap, then temperature."""
    _checks.check_transform(temperature, softcap)
    if not (isinstance(logit_scale, (int, float)) and math.isfinite(logit_scale) and logit_scale > 0):
        raise ValueError(f"logit_scale must be a finite number > 0, got {logit_scale!r}")
    s = float(logit_scale)
    return (None if softcap is None else float(softcap) / s), float(temperature) / s


class _Config:
    """Every setting of one loss, validated once at construction."""

    def __init__(self, *, ignore_index, beta, alpha, compute_nll_loss, use_ref_model, average_log_prob,
                 loss_type, label_smoothing, tau, gamma, ld_alpha, workspace_budget, dw_accumulation,
                 softcap=None, temperature=1.0, logit_scale=1.0, autocast="disable"):
        self.ignore_index = int(ignore_index)
        self.beta = float(beta)
        self.alpha = float(alpha)
        self.compute_nll_loss = bool(compute_nll_loss)
        self.use_ref_model = bool(use_ref_model)
        self.average_log_prob = bool(average_log_prob)
        self.loss_type = loss_type
        self.label_smoothing = float(label_smoothing)
        self.tau = float(tau)
        self.gamma = float(gamma)
        self.ld_alpha = None if ld_alpha is None else float(ld_alpha)
        self.workspace_budget = workspace_budget
        if dw_accumulation not in ("fp32", "weight"):
            raise ValueError(f"dw_accumulation must be 'fp32' or 'weight', got {dw_accumulation!r}")
        self.dw_accumulation = dw_accumulation
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(LOSS_TYPES)}")
        if self.average_log_prob and loss_type in LENGTH_NORMALISED:
            raise ValueError(f"average_log_prob=True with loss_type {loss_type!r}, which already divides the "
                             "sequence log-probs by their lengths: that would divide twice; leave it False")
        self.softcap, self.temperature = _logit_transform(softcap, temperature, logit_scale)
        if autocast not in AUTOCAST_MODES:
            raise ValueError(f"autocast must be one of {AUTOCAST_MODES}, got {autocast!r}")
        self.autocast = autocast
        if self.ld_alpha is not None and not 0.0 <= self.ld_alpha <= 1.0:
            raise ValueError(f"ld_alpha must be in [0, 1] (LD-DPO weight of the verbose tail), got {ld_alpha}")
        if loss_type == "simpo" and use_ref_model:
            raise ValueError("simpo is reference-free: pass use_ref_model=False")
        if alpha != 1.0 and not compute_nll_loss:
            raise ValueError("alpha weights the NLL term: set compute_nll_loss=True or leave alpha=1.0")
        # Validate the head's options once on a dummy pair, so a bad setting fails at construction.
        one = torch.zeros(1)
        ref = None if loss_type == "simpo" else one
        self.head_options(one, one, ref, ref, None, one + 1, one + 1, check=True)

    def head_options(self, c, r, cref, rref, soft, len_c, len_r, check=False):
        uses_len = self.loss_type in LENGTH_NORMALISED
        opts = dict(loss_type=self.loss_type, beta=self.beta, label_smoothing=self.label_smoothing,
                    soft_labels=soft, chosen_lengths=len_c if uses_len else None,
                    rejected_lengths=len_r if uses_len else None, gamma=self.gamma, tau=self.tau)
        if check:
            validate_preference_args(c, r, cref, rref, **opts)
        return opts


def _pair_order(labels2d, ignore_index):
    """Kept rows (flat indices), grouped pair by pair (chosen rows, then the matching rejected rows),
    with each row's sequence index and the per-sequence token counts."""
    n_seq, T = labels2d.shape
    P = n_seq // 2
    keep = labels2d != ignore_index
    rows = keep.reshape(-1).nonzero().squeeze(1)
    seq = torch.div(rows, T, rounding_mode="floor")
    pair = seq % P
    order = torch.sort(pair, stable=True).indices
    rows, seq = rows[order], seq[order]
    return rows, seq, keep.sum(1)


def _chunks_of_pairs(rows_per_pair, max_rows):
    """[(first pair, end pair, first row, end row)], each chunk whole pairs and at most max_rows rows
    (a single pair longer than max_rows gets a chunk of its own)."""
    bounds = []
    p0 = r0 = r = 0
    for p, n in enumerate(rows_per_pair):
        if r + n - r0 > max_rows and p > p0:
            bounds.append((p0, p, r0, r))
            p0, r0 = p, r
        r += n
    bounds.append((p0, len(rows_per_pair), r0, r))
    return bounds


def ld_tail(labels2d, ignore_index):
    """LD-DPO: [2B, T] bool, True for completion tokens past the pair's shorter completion (the verbose
    tail, weighted by ld_alpha). Those tokens are summed in sequence slot 2B + s instead of s."""
    P = labels2d.shape[0] // 2
    keep = (labels2d != ignore_index).long()
    counts = keep.sum(1)
    position = keep.cumsum(1) - 1  # rank of each kept token within its completion
    public = torch.minimum(counts[:P], counts[P:]).repeat(2)
    return position >= public[:, None]


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
        tf = dict(temperature=cfg.temperature, softcap=cfg.softcap)
        rows, seq, counts = _pair_order(target, cfg.ignore_index)
        labels = target.reshape(-1).index_select(0, rows)
        slot = seq
        if cfg.ld_alpha is not None:
            tail = ld_tail(target, cfg.ignore_index).reshape(-1).index_select(0, rows)
            slot = seq + tail.long() * n_seq
        n_slots = 2 * n_seq if cfg.ld_alpha is not None else n_seq
        num_pairs, num_chosen_tokens = norms
        num_pairs = P if num_pairs is None else num_pairs
        num_chosen_tokens = sum(host_counts[:P]) if num_chosen_tokens is None else num_chosen_tokens

        sums = torch.zeros(n_slots, device=dev, dtype=torch.float32)
        logit_sums = torch.zeros(n_slots, device=dev, dtype=torch.float32)
        lens = counts.float()
        losses = torch.empty(P, device=dev, dtype=torch.float32)
        rew_c = torch.empty_like(losses)
        rew_r = torch.empty_like(losses)
        seq_logps = torch.empty(n_seq, device=dev, dtype=torch.float32)
        grad_x = torch.zeros_like(x2) if need_grad[0] else None
        # dW sums one GEMM per chunk: in fp32 by default, or (dw_accumulation="weight") in the weight's
        # own dtype, which halves the traffic of re-reading and re-writing dW once per chunk.
        w_acc = torch.float32 if cfg.dw_accumulation == "fp32" else weight.dtype
        grad_w = torch.empty(V, H, device=dev, dtype=w_acc) if need_grad[1] else None
        grad_b = torch.zeros(V, device=dev, dtype=torch.float32) if need_grad[2] else None
        any_grad = any(need_grad)
        # TRL's entropy and token-accuracy metrics, from the same logits (want_stats): sums over tokens.
        stats = torch.zeros(2, device=dev, dtype=torch.float32) if want_stats else None

        # Chunks of whole pairs within the budget; a single pair longer than that gets its own chunk.
        per_pair = [a + b for a, b in zip(host_counts[:P], host_counts[P:])]
        cap = chunk_rows(rows.numel(), V, w_c, cfg.workspace_budget)
        chunks = _chunks_of_pairs(per_pair, cap)
        ws = torch.empty(max(r1 - r0 for _, _, r0, r1 in chunks), V, device=dev, dtype=cd)
        for k, (p0, p1, r0, r1) in enumerate(chunks):
            xc = x2.index_select(0, rows[r0:r1]).to(cd)
            z = _logits_into(ws[: r1 - r0], xc, w_c, b_c)
            lse, _ = forward_epilogue(z, labels[r0:r1], seq_ids=slot[r0:r1], seq_logp=sums,
                                      seq_logit=logit_sums, **tf)
            if stats is not None:
                entropy, top1 = token_stats(z, labels[r0:r1], lse, **tf)
                stats[0] += entropy.sum()
                stats[1] += (top1 * (seq[r0:r1] < P)).sum()
            # The chunk's sequences: chosen p0..p1 and rejected P+p0..P+p1.
            sc = torch.arange(p0, p1, device=dev)
            sr = sc + P
            c_sum, r_sum = _combine(sums, sc, sr, n_seq, cfg.ld_alpha)
            scale_c = 1.0 / lens[sc] if cfg.average_log_prob else torch.ones_like(c_sum)
            scale_r = 1.0 / lens[sr] if cfg.average_log_prob else torch.ones_like(r_sum)
            c, r = c_sum * scale_c, r_sum * scale_r
            seq_logps[sc], seq_logps[sr] = c, r
            refc = None if ref_c is None else ref_c[p0:p1].float()
            refr = None if ref_r is None else ref_r[p0:p1].float()
            opts = cfg.head_options(c, r, refc, refr, None if soft is None else soft[p0:p1].float(),
                                    lens[sc], lens[sr])
            l, rc, rr, (dc, dr, _, _) = preference_head(c, r, refc, refr, **opts)
            losses[p0:p1], rew_c[p0:p1], rew_r[p0:p1] = l, rc, rr
            if not any_grad:
                continue
            # Per-sequence gradient of the loss, then per token (LD tail tokens weigh ld_alpha).
            g_seq = torch.zeros(n_seq, device=dev, dtype=torch.float32)
            g_seq[sc] = dc * scale_c / num_pairs
            g_seq[sr] = dr * scale_r / num_pairs
            s = seq[r0:r1]
            g_tok = g_seq.index_select(0, s)
            if cfg.ld_alpha is not None:
                g_tok = torch.where(slot[r0:r1] >= n_seq, g_tok * cfg.ld_alpha, g_tok)
            if cfg.compute_nll_loss:
                g_tok = g_tok - (s < P).float() * (cfg.alpha / max(num_chosen_tokens, 1))
            dz = grad_epilogue(z, labels[r0:r1], lse, g_tok, **tf)
            if grad_x is not None:
                grad_x.index_copy_(0, rows[r0:r1], torch.mm(dz, w_c).to(grad_x.dtype))
            if grad_w is not None:  # the first chunk writes dW (beta=0): no zero-fill pass over [V, H]
                if grad_w.dtype == torch.float32:
                    _accumulate_mm(grad_w, dz.t(), xc, first=k == 0)
                else:
                    grad_w.addmm_(dz.t().to(w_acc), xc.to(w_acc), beta=0.0 if k == 0 else 1.0)
            if grad_b is not None:
                grad_b += dz.sum(0, dtype=torch.float32)

        # Unweighted totals per sequence (the LD tail slots folded back in) for the NLL and metrics.
        raw = sums[:n_seq] + (sums[n_seq:] if cfg.ld_alpha is not None else 0)
        lsum = logit_sums[:n_seq] + (logit_sums[n_seq:] if cfg.ld_alpha is not None else 0)
        nll = -raw[:P].sum() / max(num_chosen_tokens, 1) if cfg.compute_nll_loss else torch.zeros((), device=dev)
        chosen_tokens = counts[:P].sum().clamp_min(1)
        rejected_tokens = counts[P:].sum().clamp_min(1)
        chosen_logits_mean = lsum[:P].sum() / (chosen_tokens * V)
        rejected_logits_mean = lsum[P:].sum() / (rejected_tokens * V)
        loss = losses.sum() / num_pairs + cfg.alpha * nll

        # Kept in the parameters' dtypes: the fp32 accumulators are freed before backward.
        ctx.save_for_backward(
            None if grad_x is None else grad_x.view(_input.shape),
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype))
        aux = (seq_logps[:P].clone(), seq_logps[P:].clone(), chosen_logits_mean, rejected_logits_mean,
               nll.detach(), rew_c, rew_r)
        if stats is None:
            stats = torch.zeros(0, device=dev)
        ctx.mark_non_differentiable(*aux, stats)
        return (loss, *aux, stats)

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
    for every loss_type of SPEC section 4. Extra keywords: gamma (simpo margin), tau (discopop; Liger's
    discopop_tau is accepted too), ld_alpha (LD-DPO verbose-tail weight), workspace_budget (bytes),
    dw_accumulation ("fp32", the default, or "weight": sum the per-chunk dW in the weight's dtype, as
    Liger does; faster for bf16 weights, at one rounding per chunk), check_finite (raise on NaN/inf in
    the kept rows of the inputs, the weights, the reference or the outputs; default: the environment
    variable RDPO_FAST_CHECK_FINITE, else off, when NaN stays in the pairs it touches).
    The model's logit transform (SPEC section 3): logit_scale (Cohere's), then softcap (Gemma 2/3's
    final_logit_softcapping: z = c tanh(z / c)), then temperature; rdpo_fast.modeling.logit_transform
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
                 workspace_budget=None, dw_accumulation="fp32", check_finite=None, softcap=None, temperature=1.0,
                 logit_scale=1.0, autocast="disable"):
        super().__init__()
        self.check_finite = check_finite  # None: RDPO_FAST_CHECK_FINITE decides (see _checks.check_finite)
        if tau is not None and discopop_tau != 0.05 and tau != discopop_tau:
            raise ValueError("tau and discopop_tau name the same setting; give one")
        self._settings = dict(
            ignore_index=ignore_index, beta=beta, alpha=alpha, compute_nll_loss=compute_nll_loss,
            use_ref_model=use_ref_model, average_log_prob=average_log_prob, loss_type=loss_type,
            label_smoothing=label_smoothing, tau=discopop_tau if tau is None else tau, gamma=gamma,
            ld_alpha=ld_alpha, workspace_budget=workspace_budget, dw_accumulation=dw_accumulation,
            softcap=softcap, temperature=temperature, logit_scale=logit_scale, autocast=autocast)
        self._extra = {"compiled": compiled, "chunk_size": chunk_size}
        self.cfg = _Config(**self._settings)

    def _set(self, name, value):
        settings = {**self._settings, name: value}
        self.cfg = _Config(**settings)  # raises on a bad value, leaving the old settings in place
        self._settings = settings

    def forward(self, lin_weight, _input, target, bias=None, ref_input=None, ref_weight=None, ref_bias=None,
                *, ref_chosen_logps=None, ref_rejected_logps=None, soft_labels=None, num_pairs=None,
                num_chosen_tokens=None, return_token_stats=False):
        """Returns (loss, (chosen_logps, rejected_logps, chosen_logits_mean, rejected_logits_mean,
        nll_loss, chosen_rewards, rejected_rewards)). num_pairs / num_chosen_tokens: the whole batch's
        counts when this call is one micro-batch of it (see the module docstring).
        return_token_stats=True adds a third element, TRL's per-token metrics as sums (fp32 tensors):
        {"entropy_sum": over all completion tokens, "chosen_top1": chosen tokens whose label is the
        argmax (ties go to the lower token id, as torch.argmax), "num_tokens", "num_chosen_tokens"}."""
        cfg = self.cfg
        compute = _compute_dtype(cfg, _input)
        _check_batch(_input, lin_weight, target, bias, cfg, compute=compute)
        n_seq = _input.shape[0]
        P = n_seq // 2
        V = lin_weight.shape[0]
        # One host transfer for every count the schedule and the checks need.
        host = torch.cat([(target != cfg.ignore_index).sum(1),
                          _checks.out_of_range(target, V, cfg.ignore_index).view(1)]).tolist()
        counts, n_bad = host[:n_seq], host[n_seq]
        if n_bad:
            _checks.raise_out_of_range(target, V, cfg.ignore_index, "target")
        if 0 in counts:
            raise ValueError(f"sequence {counts.index(0)} of the batch has no completion token (all targets "
                             f"are ignore_index={cfg.ignore_index}); its log-prob is undefined")
        ref_c, ref_r = self._reference(ref_input, ref_weight, ref_bias, target, ref_chosen_logps,
                                       ref_rejected_logps, P, V, compute)
        if soft_labels is not None:
            if cfg.loss_type not in ("rdpo", "sigmoid"):
                raise ValueError(f"soft_labels are read by loss_type 'rdpo' (or 'sigmoid'), not {cfg.loss_type!r}")
            if not isinstance(soft_labels, torch.Tensor) or tuple(soft_labels.shape) != (P,):
                raise ValueError(f"soft_labels must be a tensor of shape [{P}] (one per pair)")
            if soft_labels.device != _input.device:
                raise ValueError(f"soft_labels is on {soft_labels.device} but _input is on {_input.device}")
            if cfg.label_smoothing != 0.0:
                raise ValueError("soft_labels and label_smoothing both set the label noise; give one")
            if not bool(((soft_labels >= 0) & (soft_labels <= 1)).all()):
                raise ValueError("soft_labels must lie in [0, 1]")
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

    def _reference(self, ref_input, ref_weight, ref_bias, target, ref_chosen_logps, ref_rejected_logps, P, V,
                   compute=None):
        cfg = self.cfg
        in_pass = ref_input is not None or ref_weight is not None or ref_bias is not None
        given = ref_chosen_logps is not None or ref_rejected_logps is not None
        if not cfg.use_ref_model:
            if in_pass or given:
                raise ValueError("use_ref_model=False, yet reference inputs or log-probs were given")
            if cfg.loss_type == "simpo":
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
            _, sums, _ = _linear_stats(ref_input, ref_weight, target, ref_bias, seq_ids,
                                       4 * P if ld is not None else 2 * P, cfg.ignore_index, cfg.temperature,
                                       cfg.softcap, cfg.workspace_budget)
            if ld is not None:
                sums = sums[: 2 * P] + ld * sums[2 * P:]
            if cfg.average_log_prob:
                sums = sums / (target != cfg.ignore_index).sum(1).clamp_min(1)
        return sums[:P], sums[P:]


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
              "dw_accumulation"):
    setattr(FusedLinearPreferenceLoss, _name, _liger_attribute(_name))
del _name
