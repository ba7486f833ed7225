"""The drop-in fused preference loss: lm_head + log-probs + generalized DPO head in one autograd op,
never holding the N x V logits. Same constructor keywords, forward signature and return layout as
liger_kernel's LigerFusedLinearDPOLoss, plus precomputed reference log-probs and rDPO soft labels, and
TRL's loss options: a list of loss types with loss_weights, use_weighting (WPO), f_divergence_type.

This module is the Module and its settings: validation of the settings (once, at construction) and of
each call's inputs, the reference log-probs (given, or from an in-pass reference model, forward only),
and the host-side token counts. The pass itself, its chunk schedule and its cost in FLOPs are in
fused_pass.py; the autograd op over pairs in pair_pass.py.

Layouts: padded, _input [2B, T, H] with chosen rows first; or packed (padding-free), one row [1, N, H]
whose tokens segment_ids assigns to the 2B sequences (chosen 0..B-1, rejected B..2B-1). The pass groups
a packed row's kept rows into the padded layout's order, so the two give the same results.

Normalisation, exact under gradient accumulation: the loss is
    sum over pairs of the per-pair loss / num_pairs
        + (alpha [compute_nll_loss] + w_sft [loss_type 'sft']) * (sum of chosen-token NLL) / num_chosen_tokens
where num_pairs and num_chosen_tokens default to this batch's own counts. To split a batch into k
micro-batches, pass the whole batch's counts to every call: the k losses (and gradients) then sum to
the whole batch's exactly (aot's sorting excepted: it ranks within each call).

Parallel calls (SPEC section 9; forward's process_group, vocab_start, sequence_parallel_group): a
vocabulary-sharded lm_head (tensor parallelism) gives every rank the whole batch's loss, log-probs and
d _input, and the gradient of its own weight slice; sequence-sharded inputs (context parallelism) give
every rank the whole batch's loss (counted once) and its own tokens' gradients. See forward.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from rdpo_fast.ops import checks as _checks
from rdpo_fast.ops.logprobs import linear_stats

from . import table as lt
from .fused_pass import (
    PassOptions,
    check_epilogue,
    check_nonempty,
    ld_tail,
    packed_ld_tail,
    parallel_call,
    parallel_layout,
)
from .head import check_head_options
from .pair_pass import FusedPreferenceFn

if TYPE_CHECKING:  # annotations only: a torch build without distributed support has no ProcessGroup
    from torch.distributed import ProcessGroup


LIGER_KEYWORDS = ("ignore_index", "beta", "alpha", "compute_nll_loss", "compiled", "use_ref_model",
                  "average_log_prob", "chunk_size", "loss_type", "label_smoothing", "discopop_tau")
# "disable": the lm_head GEMMs run in the inputs' own dtype whatever an enclosing autocast says (exact,
# the default). "follow": under an enabled autocast they run in its dtype (TRL's and Liger's behaviour:
# fp32 master weights, bf16 GEMMs), dW still accumulated in fp32 and returned in the weight's dtype.
AUTOCAST_MODES = ("disable", "follow")
# How dW is summed over chunks (see fused_pass.DwRing for "ring"). "fp32" stays the default until a GPU run has
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
                 autocast="disable", epilogue="two_pass"):
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
        self.epilogue = check_epilogue(epilogue)
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


_OUTPUT_NAMES = ("loss", "chosen_logps", "rejected_logps", "chosen_logits_mean", "rejected_logits_mean", "nll_loss",
                 "chosen_rewards", "rejected_rewards")


class FusedLinearPreferenceLoss(torch.nn.Module):
    """Drop-in for liger_kernel.chunked_loss.LigerFusedLinearDPOLoss (same keywords, forward and return),
    for every loss_type of SPEC section 4 and rdpo_fast.LOSS_TYPES. Extra keywords: gamma (simpo margin),
    tau (discopop; Liger's discopop_tau is accepted too), ld_alpha (LD-DPO verbose-tail weight),
    workspace_budget (bytes), dw_accumulation ("fp32", the default: one dW GEMM per chunk added into an
    fp32 [V, H] accumulator; "weight": sum the per-chunk dW in the weight's dtype, as Liger does, faster
    for bf16 weights at one rounding per chunk; "ring": keep the chunks' dZ and hidden rows in a ring of
    dw_ring_budget bytes and issue one dW GEMM per flush, see fused_pass.DwRing), dw_ring_budget (bytes, "ring"
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
    fused_pass docstring (up to 8NHV instead of 6NHV).
    The model's logit transform (SPEC section 3): logit_scale (Cohere's), then softcap (Gemma 2/3's
    final_logit_softcapping: z = c tanh(z / c)), then temperature; rdpo_fast.models.loading.logit_transform
    reads them from a model. They apply to the policy and to an in-pass reference alike.
    autocast: "disable" (default) runs the lm_head GEMMs in the inputs' own dtype whatever an enclosing
    torch.autocast says; "follow" runs them in the autocast dtype when one is enabled (fp32 master
    weights, bf16 GEMMs, as TRL's head and Liger do), dW still accumulated in fp32 and returned in the
    weight's dtype.
    epilogue: "two_pass" (default) or "one_pass", the schedule of the per-chunk passes over the logits
    (fused_pass.EPILOGUES): "one_pass" reads each chunk's logits once where "two_pass" reads them twice
    (forward epilogue, then the dZ kernel), writing S = (onehot - softmax) * d transform in place of
    them, and applies each row's gradient as a scale around the dX and dW GEMMs. It applies to every loss
    type and option; where the forward epilogue's kernel cannot write S (a vocabulary-sharded weight,
    return_token_stats=True, the logits the batch-level losses recompute) a separate pass writes it,
    with no saving there. "two_pass" stays the default until a GPU run has measured "one_pass".
    `compiled` and `chunk_size` are Liger's performance knobs: accepted, with no effect on results (our
    kernels are always compiled, and chunks follow the workspace budget). Liger's public attributes
    (loss_type, beta, ignore_index, ...) read the settings; assigning one re-validates the whole set."""

    def __init__(self, ignore_index=-100, beta=0.1, alpha=1.0, compute_nll_loss=False, compiled=True,
                 use_ref_model=True, average_log_prob=False, chunk_size=1, loss_type="sigmoid",
                 label_smoothing=0.0, discopop_tau=0.05, *, tau=None, gamma=0.0, ld_alpha=None,
                 workspace_budget=None, dw_accumulation="fp32", dw_ring_budget=None, loss_weights=None,
                 use_weighting=False,
                 f_divergence_type="reverse_kl", f_alpha_divergence_coef=lt.DEFAULT_F_ALPHA, check_finite=None,
                 softcap=None, temperature=1.0, logit_scale=1.0, autocast="disable", epilogue="two_pass"):
        super().__init__()
        self.check_finite = check_finite  # None: RDPO_FAST_CHECK_FINITE decides (see _checks.check_finite)
        if tau is not None and discopop_tau != 0.05 and tau != discopop_tau:
            raise ValueError("tau and discopop_tau name the same setting; give one")
        self._settings = dict(
            ignore_index=ignore_index, beta=beta, alpha=alpha, compute_nll_loss=compute_nll_loss,
            use_ref_model=use_ref_model, average_log_prob=average_log_prob, loss_type=loss_type,
            label_smoothing=label_smoothing, tau=discopop_tau if tau is None else tau, gamma=gamma,
            ld_alpha=ld_alpha, workspace_budget=workspace_budget, dw_accumulation=dw_accumulation,
            dw_ring_budget=dw_ring_budget, loss_weights=loss_weights, use_weighting=use_weighting,
            f_divergence_type=f_divergence_type,
            f_alpha_divergence_coef=f_alpha_divergence_coef, softcap=softcap, temperature=temperature,
            logit_scale=logit_scale, autocast=autocast, epilogue=epilogue)
        self._extra = {"compiled": compiled, "chunk_size": chunk_size}
        self.cfg = _Config(**self._settings)

    def _set(self, name, value):
        settings = {**self._settings, name: value}
        self.cfg = _Config(**settings)  # raises on a bad value, leaving the old settings in place
        self._settings = settings

    def forward(self, lin_weight: torch.Tensor, _input: torch.Tensor, target: torch.Tensor,
                bias: torch.Tensor | None = None, ref_input: torch.Tensor | None = None,
                ref_weight: torch.Tensor | None = None, ref_bias: torch.Tensor | None = None, *,
                ref_chosen_logps: torch.Tensor | None = None, ref_rejected_logps: torch.Tensor | None = None,
                soft_labels: torch.Tensor | None = None, num_pairs: int | None = None,
                num_chosen_tokens: int | None = None, return_token_stats: bool = False,
                host_counts: list[int] | None = None, segment_ids: torch.Tensor | None = None,
                process_group: ProcessGroup | None = None, vocab_start: int | None = None,
                sequence_parallel_group: ProcessGroup | None = None) -> tuple:
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
        with a ValueError naming host_counts. Results are identical with and without them. On CUDA
        backward then makes no host sync either: it scales the gradients in place on the device, so a
        second backward through the same call (retain_graph) raises a RuntimeError.
        segment_ids: packed (padding-free) input instead of the padded layout. _input is one row [1, N, H]
        (or [N, H]), target [1, N] (or [N]), and segment_ids, with target's shape, the sequence of each
        token: chosen sequences 0..B-1, rejected B..2B-1, pair i = (i, B + i). A sequence's tokens are
        ranked in row order (they need not be contiguous); the ids of tokens whose target is
        ignore_index are not read (padding may carry any id, -1 included). host_counts is required with
        it: its 2B entries say how many sequences there are (the ids cannot: a sequence with no
        completion token at the end of the row would make B look smaller and pair the wrong sequences,
        where an empty sequence must be refused). ref_input, when given, is packed like _input. Results
        equal the padded layout's (the kept rows are grouped into the same order); gradients reach the
        packed rows.

        Vocabulary-parallel (tensor-parallel lm_head): lin_weight (and bias) a DTensor sharded Shard(0)
        over one mesh dimension, or this rank's plain slice with process_group= and vocab_start= (its
        first token id); _input and target the same on every rank of that group (plain, or Replicate
        DTensors); target's labels in [0, whole V). ref_weight may be sharded likewise (a plain one
        with the same process_group and vocab_start) or whole. Every rank returns the whole batch's
        loss and metrics; backward gives each rank the whole d _input and the gradient of its own
        weight slice (a Shard(0) DTensor for a DTensor weight). Each chunk makes one all-gather of
        3 floats a row (4 with use_weighting); d _input one all-reduce of its kept rows (fp32) per
        call. return_token_stats is refused there (TRL's token accuracy needs each token's argmax
        over the whole vocabulary, which the per-chunk statistics do not carry).
        sequence_parallel_group: each rank of the group holds some tokens of every sequence (_input
        [2B, T_r, H], target [2B, T_r]: the same 2B rows, this rank's T_r positions; prompt and pad
        positions ignore_index as usual; a rank may hold no completion token of a row). The per-
        sequence sums are summed over the group before the head, so every rank returns the whole
        batch's loss and metrics, equal to one process's over the whole sequences; the loss counts
        once. When every rank calls backward, each rank's d _input is exactly that of its own tokens,
        and its weight gradient is its own tokens' part: the data-parallel reduction over the
        sequence-parallel ranks must SUM them (with an averaging reduction such as DDP's, scale the
        loss by the number of sequence-parallel ranks). ld_alpha is refused there (LD-DPO's tail
        needs each token's position in its whole completion). Both compose (a TP x SP mesh). Every
        rank of both groups must make the call alike; host_counts (this rank's own counts) then do
        not make it sync-free: the ranks' counts are gathered to plan the same chunks everywhere. A packed row
        (segment_ids) is not taken by a parallel call yet."""
        cfg = self.cfg
        (_input, lin_weight, target, bias, ref_input, ref_weight, ref_bias), (vocab, ref_vocab, sp) = parallel_call(
            _input, lin_weight, target, bias, ref_input, ref_weight, ref_bias, process_group=process_group,
            vocab_start=vocab_start, sequence_parallel_group=sequence_parallel_group)
        if vocab is not None and return_token_stats:
            raise ValueError("return_token_stats=True with a vocabulary-sharded lin_weight: TRL's token accuracy needs "
                             "each token's argmax over the whole vocabulary (ties to the lowest id), which the "
                             "per-chunk combination of the ranks' (logsumexp, label logit, logit sum) does not "
                             "carry; leave it False, or compute the metrics with a whole lm_head")
        if sp is not None and cfg.ld_alpha is not None:
            raise ValueError("ld_alpha with sequence_parallel_group: LD-DPO weights the tokens past the pair's "
                             "shorter completion, which needs each token's position in its whole completion; a "
                             "sequence-parallel rank holds only some of them (context-parallel layouts are not "
                             "contiguous). Run LD-DPO with whole sequences per rank")
        compute = _compute_dtype(cfg, _input)
        packed = segment_ids is not None
        if packed and (vocab is not None or sp is not None):
            raise ValueError("segment_ids (a packed row) with process_group or sequence_parallel_group: a packed "
                             "row in a parallel call is not supported yet; pass the padded [2B, T, H] layout there")
        if packed and host_counts is None:
            raise ValueError("segment_ids (a packed row) needs host_counts, the completion tokens of each of its "
                             "2B sequences (chosen 0..B-1, then rejected): the number of sequences cannot be read "
                             "from the ids, since a trailing sequence with no completion token would pair the "
                             "wrong sequences instead of being refused")
        _check_batch(_input, lin_weight, target, bias, cfg, compute=compute, vocab=vocab, packed=packed)
        V = lin_weight.shape[0] if vocab is None else vocab.vocab_size
        # A parallel call reads small gathered tensors on the host anyway (its chunk plan must agree
        # with its peers'), so it checks host_counts exactly.
        sync = host_counts is None or _syncs_free(_input.device) or vocab is not None or sp is not None
        segments = _Segments(segment_ids, target, cfg.ignore_index, host_counts, sync) if packed else None
        n_seq = segments.n_seq if packed else _input.shape[0]
        P = n_seq // 2
        counts = self._counts(target, V, host_counts, sync, whole=sp is None, segments=segments)
        layout = parallel_layout(vocab, sp, counts, target.device)
        seq_counts = counts if layout is None else layout.counts(counts)
        if sp is not None:
            check_nonempty(seq_counts, cfg.ignore_index)
        ref_c, ref_r = self._reference(ref_input, ref_weight, ref_bias, target, ref_chosen_logps,
                                       ref_rejected_logps, P, V, compute, n_kept=sum(counts), ref_vocab=ref_vocab,
                                       sequence_group=sp, seq_counts=seq_counts, segments=segments)
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
        opts = PassOptions(num_pairs=num_pairs, num_chosen_tokens=num_chosen_tokens, need_grad=need,
                           host_counts=counts, compute_dtype=compute, token_stats=return_token_stats,
                           sync_free=not sync, segment_ids=segments.ids if packed else None, parallel=layout)
        with torch.autocast(_input.device.type, enabled=False):
            out = FusedPreferenceFn.apply(_input, lin_weight, bias, target, ref_c, ref_r, soft_labels, cfg, opts)
        if finite:
            _checks.check_finite(type(self).__name__, *zip(_OUTPUT_NAMES, out[:8]), result=True)
        aux = tuple(out[1:8])
        if not return_token_stats:
            return out[0], aux
        stats = out[8]
        return out[0], aux, {"entropy_sum": stats[0], "chosen_top1": stats[1],
                             "num_tokens": sum(seq_counts), "num_chosen_tokens": sum(seq_counts[:P])}

    def _counts(self, target, V, host_counts, sync, whole=True, segments=None):
        """Completion tokens per sequence (a row of target, or a packed row's segment; host ints), the
        labels' range checked. whole: the rows are whole sequences, each of which needs a completion token
        (a sequence-parallel rank's need not)."""
        cfg = self.cfg
        if segments is None:
            n_seq, unit = target.shape[0], "row"
            dev_counts = (target != cfg.ignore_index).sum(1)
        else:
            n_seq, unit, dev_counts = segments.n_seq, "sequence", segments.counts
        bad = _checks.out_of_range(target, V, cfg.ignore_index)
        if host_counts is not None:
            if not isinstance(host_counts, (list, tuple)) or len(host_counts) != n_seq or not all(
                    isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in host_counts):
                raise ValueError(f"host_counts must be a list of {n_seq} ints >= 0 (the completion tokens of each "
                                 f"{unit} of target), got {host_counts!r}")
            counts = list(host_counts)
        if sync:
            # One host transfer for every count the schedule and the checks need.
            host = torch.cat([dev_counts, bad.view(1)]).tolist()
            if host[n_seq]:
                _checks.raise_out_of_range(target, V, cfg.ignore_index, "target")
            if host_counts is not None and host[:n_seq] != counts:
                first = next(i for i, (a, b) in enumerate(zip(counts, host)) if a != b)
                raise ValueError(f"host_counts[{first}] = {counts[first]} but {unit} {first} of target has "
                                 f"{host[first]} completion tokens")
            counts = host[:n_seq]
        else:
            want = torch.tensor(counts, dtype=dev_counts.dtype).to(target.device, non_blocking=True)
            _require((bad == 0) & (dev_counts == want).all(), "target holds labels outside [0, V) that are not "
                     "ignore_index, or host_counts differ from target's completion-token counts", sync=False)
        if whole:
            check_nonempty(counts, cfg.ignore_index)
        return counts

    def _reference(self, ref_input, ref_weight, ref_bias, target, ref_chosen_logps, ref_rejected_logps, P, V,
                   compute=None, n_kept=None, ref_vocab=None, sequence_group=None, seq_counts=None, segments=None):
        """The reference log-probs [P], [P]: given, or from the in-pass reference (forward only; ref_vocab:
        ref_weight's VocabShard; sequence_group: sums over it; seq_counts: whole sequences' counts;
        segments: a packed row's sequences)."""
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
        _check_batch(ref_input, ref_weight, target, ref_bias, cfg, prefix="ref_", compute=compute, vocab=ref_vocab,
                     packed=segments is not None)
        ref_V = ref_weight.shape[0] if ref_vocab is None else ref_vocab.vocab_size
        if ref_V != V:
            raise ValueError(f"ref_weight has a vocabulary of {ref_V}, lin_weight of {V}: "
                             "the reference must score the same token ids")
        with torch.no_grad():
            if compute is not None:
                ref_input, ref_weight = ref_input.to(compute), ref_weight.to(compute)
                ref_bias = None if ref_bias is None else ref_bias.to(compute)
            ld = cfg.ld_alpha
            if segments is None:
                seq_ids = torch.arange(2 * P, device=target.device).repeat_interleave(target.shape[1])
                tail = None if ld is None else ld_tail(target, cfg.ignore_index).reshape(-1)
            else:
                seq_ids = segments.ids
                tail = None if ld is None else packed_ld_tail(target, seq_ids, 2 * P, cfg.ignore_index, n_kept)
            if ld is not None:
                seq_ids = seq_ids + tail.long() * 2 * P
            _, sums, _ = linear_stats(ref_input, ref_weight, target, ref_bias, seq_ids,
                                      4 * P if ld is not None else 2 * P, cfg.ignore_index, cfg.temperature,
                                      cfg.softcap, cfg.workspace_budget, n_kept=n_kept, vocab_shard=ref_vocab,
                                      sequence_parallel_group=sequence_group)
            if ld is not None:
                sums = sums[: 2 * P] + ld * sums[2 * P:]
            if cfg.average_log_prob:
                if segments is not None:
                    lens = segments.counts
                elif sequence_group is not None:
                    lens = torch.tensor(seq_counts, device=target.device)
                else:
                    lens = (target != cfg.ignore_index).sum(1)
                sums = sums / lens.clamp_min(1)
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


def _check_batch(_input, weight, target, bias, cfg, prefix="", compute=None, vocab=None, packed=False):
    """vocab: weight's VocabShard when it is one rank's slice (which may be empty), else None. packed: _input is
    one packed row (segment_ids)."""
    arg = "ref_input" if prefix else "_input"
    if packed:
        _checks.check_packed_row(_input, target, arg)
    elif not isinstance(_input, torch.Tensor) or _input.dim() != 3:
        raise ValueError(f"{arg} must be [2B, T, H] (chosen rows first, then rejected), got "
                         f"{getattr(_input, 'shape', type(_input).__name__)}")
    elif _input.shape[0] == 0 or _input.shape[0] % 2:
        raise ValueError(f"{arg} has {_input.shape[0]} rows: chosen/rejected pairs need an even, "
                         "non-zero number (chosen rows first, then rejected)")
    elif not isinstance(target, torch.Tensor) or target.dim() != 2:
        raise ValueError(f"target must be [2B, T], got {getattr(target, 'shape', type(target).__name__)}")
    if compute is not None:
        # Each input is cast to the autocast dtype: check their own dtypes, then the rest on
        # zero-stride views in that dtype (no copy of the [V, H] weight just to check it).
        for name, t in (("_input", _input), ("weight", weight), ("bias", bias)):
            if isinstance(t, torch.Tensor) and t.dtype not in _checks.FLOAT_DTYPES:
                raise ValueError(f"{prefix}{name} dtype {t.dtype} is not supported (float32, bfloat16, float16)")
        _input, weight, bias = (_as_dtype(t, compute) for t in (_input, weight, bias))
    _checks.check_linear_inputs(_input, weight, target, bias, cfg.ignore_index, 1.0, None, check_range=False,
                                vocab_size=None if vocab is None else vocab.vocab_size)


class _Segments:
    """A packed row's sequences: ids ([N] int64, checked, see ops.checks.packed_segments), n_seq (2B) and
    counts (completion tokens per sequence, on the device)."""

    def __init__(self, segment_ids, target, ignore_index, host_counts, sync):
        if not isinstance(host_counts, (list, tuple)):
            raise ValueError(f"host_counts must be a list of ints (one per packed sequence), got "
                             f"{type(host_counts).__name__}")
        # Its length is the number of sequences; _counts checks its entries.
        self.ids, self.n_seq = _checks.packed_segments(segment_ids, target, ignore_index, len(host_counts),
                                                       paired=True, sync=sync)
        keep = (target.reshape(-1) != ignore_index).long()
        self.counts = torch.zeros(self.n_seq, device=keep.device, dtype=torch.int64).index_add_(0, self.ids, keep)


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
              "dw_accumulation", "dw_ring_budget", "loss_weights", "use_weighting", "f_divergence_type",
              "f_alpha_divergence_coef", "epilogue"):
    setattr(FusedLinearPreferenceLoss, _name, _liger_attribute(_name))
del _name
