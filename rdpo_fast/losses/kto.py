"""KTO (Ethayarajh et al. 2024) as Liger's LigerFusedLinearKTOLoss, on rdpo_fast's fused log-prob path:
unpaired sequences, each desirable or undesirable, loss 1 - sigmoid(beta (rho - kl) m) with
rho = log pi - log pi_ref (log pi alone without a reference), m = +1 / -1, kl the batch's KL baseline
(TRL estimates it from mismatched prompt/completion pairs: kto_kl_baseline), averaged over sequences.

The schedule is FusedLinearPreferenceLoss's (fused_pass.ChunkPass), over whole sequences instead of
whole pairs: the loss of a sequence depends on nothing else (kl is a constant), so each chunk's head
gives its gradients at once, one pass, 6NHV. The per-sequence head is head.kto_head (the preference
head kernel's KTO branch).

Vocabulary- and sequence-parallel calls work as FusedLinearPreferenceLoss's (see its forward): the same
keywords, collectives and gradient semantics, over sequences instead of pairs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rdpo_fast.ops import checks as _checks
from rdpo_fast.ops.logprobs import linear_stats, sequence_logprobs
from rdpo_fast.ops.schedule import chunk_rows, chunks_of_pairs, kept_rows

from .fused_pass import (
    ChunkPass,
    Grads,
    GradsMadeInForward,
    PassParallel,
    SeqStats,
    aligned_chunks,
    check_epilogue,
    check_nonempty,
    grouped_rows,
    parallel_call,
    parallel_layout,
)
from .head import kto_head

if TYPE_CHECKING:  # annotations only: a torch build without distributed support has no ProcessGroup
    from torch.distributed import ProcessGroup


class _SequenceHead:
    """KTO's head over a range of sequences, from their accumulated log-probs: writes their losses and
    rewards, and each sequence's gradient, from which token_grads gives each row's (ChunkPass's head)."""

    def __init__(self, stats, seq, lens, ref_logps, kl, desirable, opts):
        self.stats, self.seq, self.lens = stats, seq, lens
        self.ref_logps, self.kl, self.desirable = ref_logps, kl, desirable
        self.beta, self.average_log_prob = opts["beta"], opts["average_log_prob"]
        B = lens.numel()
        self.num = B if opts["num_sequences"] is None else opts["num_sequences"]
        self.losses = torch.empty(B, device=lens.device, dtype=torch.float32)
        self.rewards = torch.empty_like(self.losses)
        self.g_seq = torch.zeros_like(self.losses)

    def run(self, s0, s1):
        lens = self.lens[s0:s1]
        scale = 1.0 / lens if self.average_log_prob else torch.ones_like(lens)
        logp = self.stats.logp[s0:s1] * scale
        losses, rew, d = kto_head(logp, self.ref_logps[s0:s1], self.kl[s0:s1], self.desirable[s0:s1], self.beta)
        self.losses[s0:s1], self.rewards[s0:s1] = losses, rew
        self.g_seq[s0:s1] = d * scale / self.num

    def token_grads(self, r0, r1):
        return self.g_seq.index_select(0, self.seq[r0:r1])


class _FusedKTOFn(GradsMadeInForward):
    @staticmethod
    def forward(ctx, _input, weight, bias, target, ref_logps, kl, desirable, opts, need_grad, host_counts,
                layout=None, segment_ids=None):
        B, H = len(host_counts), _input.shape[-1]
        V = weight.shape[0]
        x2 = _input.reshape(-1, H)
        par = layout or PassParallel()
        if segment_ids is None:
            # Kept rows in row-major order are sequence by sequence already, so chunks hold whole
            # sequences; their number, known on the host, spares nonzero's sync.
            rows = kept_rows(target, opts["ignore_index"], n_kept=sum(host_counts))
            seq = torch.div(rows, target.shape[1], rounding_mode="floor")
        else:  # a packed row: its kept rows grouped sequence by sequence
            rows = grouped_rows(target, segment_ids, B, opts["ignore_index"], sum(host_counts))
            seq = segment_ids.index_select(0, rows)
        labels = target.reshape(-1).index_select(0, rows)
        lens = torch.tensor(par.counts(host_counts), device=_input.device).float()
        stats = SeqStats(B, _input.device, with_sq=False)
        grads = Grads(x2, weight, need_grad, opts["dw_accumulation"], vocab=par.vocab, n_rows=rows.numel())
        if layout is None:
            chunks = chunks_of_pairs(host_counts, chunk_rows(rows.numel(), V, _input, opts["workspace_budget"]))
        else:  # every rank of a group cuts the same chunks (see fused_pass.aligned_chunks)
            plan = par.plan_units(host_counts, list)
            V_plan = V if par.vocab is None else par.vocab.plan_size
            chunks = aligned_chunks(host_counts, plan, chunk_rows(sum(plan), V_plan, _input, opts["workspace_budget"]))
        head = _SequenceHead(stats, seq, lens, ref_logps, kl, desirable, opts)
        ChunkPass(x2, weight, bias, rows, labels, seq, chunks, stats, grads,
                  transform=dict(temperature=1.0, softcap=None), vocab=par.vocab,
                  sync=par.sync(stats, lambda s0, s1: torch.arange(s0, s1, device=x2.device)),
                  epilogue=opts["epilogue"]).run(head)
        grads.finish(rows)

        logps = stats.logp * (1.0 / lens if opts["average_log_prob"] else 1.0)
        d = desirable.float()
        u = 1.0 - d
        out = (head.losses.sum() / head.num, (logps * d).sum(), (logps * u).sum(), (stats.logit * d).sum(),
               (stats.logit * u).sum(), (head.rewards * d).sum(), (head.rewards * u).sum())
        # forward read the token counts on the host already: backward may read the upstream gradient too.
        GradsMadeInForward.keep_grads(ctx, grads, _input.shape, weight, bias, sync_free=False)
        ctx.mark_non_differentiable(*out[1:])
        return out


class FusedLinearKTOLoss(torch.nn.Module):
    """Drop-in for liger_kernel.chunked_loss.LigerFusedLinearKTOLoss: same constructor (defaults
    included), forward(_input, lin_weight, target, bias=None, preference_labels=None, ref_input=None,
    ref_weight=None, ref_bias=None, kl=None) (note Liger's order: _input first) and return
    (loss, (chosen_logps_sum, rejected_logps_sum, chosen_logits_sum, rejected_logits_sum,
    chosen_rewards_sum, rejected_rewards_sum)), "chosen" meaning desirable. The logits sums are over
    completion tokens (Liger sums every padded position, which a pass that skips prompt rows cannot).
    Extra: ref_logps= (precomputed reference log-probs instead of ref_input/ref_weight), num_sequences=
    (the whole batch's count when this call is one micro-batch of it), workspace_budget,
    dw_accumulation, epilogue ("two_pass" or "one_pass", as FusedLinearPreferenceLoss's: the same pass).
    kl: None, a number, or a tensor with one value or one per sequence; no gradient.
    segment_ids= (packed input: _input one row [1, N, H] or [N, H], target [1, N] or [N], segment_ids with
    target's shape naming each token's sequence in [0, B); only completion tokens' ids are read; B is
    preference_labels' length; ref_input packed alike; results equal the padded layout's).
    process_group=, vocab_start=, sequence_parallel_group=: vocabulary- and sequence-parallel calls, as
    FusedLinearPreferenceLoss.forward documents them (B sequences instead of 2B rows; not with segment_ids).
    `compiled`, `chunk_size`: accepted, no effect."""

    def __init__(self, ignore_index: int = -100, beta: float = 0.1, compiled: bool = True, use_ref_model: bool = False,
                 average_log_prob: bool = False, chunk_size: int = 1, *, workspace_budget=None,
                 dw_accumulation="fp32", epilogue="two_pass"):
        super().__init__()
        self.ignore_index = ignore_index
        self.beta = beta
        self.compiled = compiled
        self.use_ref_model = use_ref_model
        self.average_log_prob = average_log_prob
        self.chunk_size = chunk_size
        self.workspace_budget = workspace_budget
        self.dw_accumulation = dw_accumulation
        self.epilogue = epilogue
        self._check_settings()

    def _check_settings(self):
        beta = self.beta
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0 or beta == float("inf"):
            raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
        if self.dw_accumulation not in ("fp32", "weight"):
            raise ValueError(f"dw_accumulation must be 'fp32' or 'weight', got {self.dw_accumulation!r}")
        check_epilogue(self.epilogue)

    def forward(self, _input: torch.Tensor, lin_weight: torch.Tensor, target: torch.Tensor,
                bias: torch.Tensor | None = None, preference_labels: torch.Tensor | None = None,
                ref_input: torch.Tensor | None = None, ref_weight: torch.Tensor | None = None,
                ref_bias: torch.Tensor | None = None, kl: float | torch.Tensor | None = None, *,
                ref_logps: torch.Tensor | None = None, num_sequences: int | None = None,
                segment_ids: torch.Tensor | None = None, process_group: ProcessGroup | None = None,
                vocab_start: int | None = None, sequence_parallel_group: ProcessGroup | None = None) -> tuple:
        self._check_settings()  # Liger reads its attributes at every call; so do we, validated
        ignore_index = int(self.ignore_index)
        (_input, lin_weight, target, bias, ref_input, ref_weight, ref_bias), (vocab, ref_vocab, sp) = parallel_call(
            _input, lin_weight, target, bias, ref_input, ref_weight, ref_bias, process_group=process_group,
            vocab_start=vocab_start, sequence_parallel_group=sequence_parallel_group)
        if segment_ids is not None:
            if vocab is not None or sp is not None:
                raise ValueError("segment_ids (a packed row) with process_group or sequence_parallel_group: a packed "
                                 "row in a parallel call is not supported yet; pass the padded [B, T, H] layout there")
            _checks.check_packed_row(_input, target)
        elif not isinstance(_input, torch.Tensor) or _input.dim() != 3 or _input.shape[0] == 0:
            raise ValueError(f"_input must be [B, T, H] with B > 0, got {getattr(_input, 'shape', type(_input))}")
        elif not isinstance(target, torch.Tensor) or target.dim() != 2:
            raise ValueError(f"target must be [B, T], got {getattr(target, 'shape', type(target).__name__)}")
        _checks.check_linear_inputs(_input, lin_weight, target, bias, ignore_index, 1.0, None, check_range=False,
                                    vocab_size=None if vocab is None else vocab.vocab_size)
        V = lin_weight.shape[0] if vocab is None else vocab.vocab_size
        keep = target != ignore_index
        if preference_labels is None:
            raise ValueError("preference_labels is required: a bool tensor [B], True for desirable sequences")
        # A packed row's number of sequences is preference_labels' (its ids cannot tell a trailing sequence
        # with no completion token from none at all).
        if segment_ids is None:
            B = _input.shape[0]
        else:
            B = len(preference_labels) if isinstance(preference_labels, torch.Tensor) and preference_labels.dim() else 0
        if (not isinstance(preference_labels, torch.Tensor) or preference_labels.dtype != torch.bool
                or tuple(preference_labels.shape) != (B,)):
            raise ValueError(f"preference_labels must be a bool tensor of shape [{B or 'B'}] (True: desirable)")
        if segment_ids is None:
            dev_counts = keep.sum(1)
        else:
            segment_ids, B = _checks.packed_segments(segment_ids, target, ignore_index, B, paired=False)
            dev_counts = torch.zeros(B, device=target.device, dtype=torch.int64).index_add_(
                0, segment_ids, keep.reshape(-1).long())
        if preference_labels.device != _input.device:
            raise ValueError(f"preference_labels is on {preference_labels.device} but _input is on {_input.device}")
        host = torch.cat([dev_counts, _checks.out_of_range(target, V, ignore_index).view(1)]).tolist()
        counts, n_bad = host[:B], host[B]
        if n_bad:
            _checks.raise_out_of_range(target, V, ignore_index, "target")
        layout = parallel_layout(vocab, sp, counts, target.device)
        # Under sequence parallelism a rank may hold none of a sequence's completion tokens; the group may not.
        seq_counts = counts if layout is None else layout.counts(counts)
        check_nonempty(seq_counts, ignore_index)
        if num_sequences is not None and (not isinstance(num_sequences, int) or num_sequences <= 0):
            raise ValueError(f"num_sequences must be a positive int (the whole batch's count), got {num_sequences!r}")
        ref = self._reference(ref_input, ref_weight, ref_bias, ref_logps, target, B, V, ignore_index, ref_vocab, sp,
                              seq_counts, segment_ids)
        kl_vec = self._kl(kl, B, _input.device)
        need = (_input.requires_grad, lin_weight.requires_grad, bias is not None and bias.requires_grad)
        need = tuple(torch.is_grad_enabled() and n for n in need)
        opts = dict(ignore_index=ignore_index, beta=float(self.beta), average_log_prob=bool(self.average_log_prob),
                    num_sequences=num_sequences, workspace_budget=self.workspace_budget,
                    dw_accumulation=self.dw_accumulation, epilogue=self.epilogue)
        with torch.autocast(_input.device.type, enabled=False):
            out = _FusedKTOFn.apply(_input, lin_weight, bias, target, ref, kl_vec, preference_labels, opts, need,
                                    counts, layout, segment_ids)
        return out[0], tuple(out[1:])

    @staticmethod
    def _kl(kl, B, device):
        if kl is None:
            return torch.zeros(B, device=device)
        if isinstance(kl, (int, float)) and not isinstance(kl, bool):
            kl = torch.tensor(float(kl), device=device)
        if not isinstance(kl, torch.Tensor) or kl.numel() not in (1, B) or not kl.is_floating_point():
            raise ValueError(f"kl must be None, a number, or a float tensor with 1 or {B} values")
        if kl.device != device:
            raise ValueError(f"kl is on {kl.device} but _input is on {device}")
        kl = kl.detach().float().reshape(-1)
        if not bool(kl.isfinite().all()):
            raise ValueError("kl must be finite")
        return kl.expand(B).contiguous()

    def _reference(self, ref_input, ref_weight, ref_bias, ref_logps, target, B, V, ignore_index, ref_vocab=None,
                   sequence_group=None, seq_counts=None, segment_ids=None):
        in_pass = ref_input is not None or ref_weight is not None or ref_bias is not None
        if not self.use_ref_model:
            if in_pass or ref_logps is not None:
                raise ValueError("use_ref_model=False, yet reference inputs or log-probs were given")
            return torch.zeros(B, device=target.device)
        if in_pass and ref_logps is not None:
            raise ValueError("give the reference either in-pass (ref_input, ref_weight) or as ref_logps, not both")
        if ref_logps is not None:
            if not isinstance(ref_logps, torch.Tensor) or tuple(ref_logps.shape) != (B,):
                raise ValueError(f"ref_logps must be a tensor of shape [{B}] (one per sequence)")
            if ref_logps.device != target.device:
                raise ValueError(f"ref_logps is on {ref_logps.device} but target is on {target.device}")
            return ref_logps.detach().float()
        if ref_input is None or ref_weight is None:
            raise ValueError("use_ref_model=True needs ref_input and ref_weight, or ref_logps")
        if not isinstance(ref_input, torch.Tensor) or ref_input.shape[:-1] != target.shape:
            layout = "[B, T, H]" if segment_ids is None else "one packed row"
            raise ValueError(f"ref_input must be laid out like _input ({layout}), got "
                             f"{getattr(ref_input, 'shape', None)}")
        ref_V = ref_weight.shape[0] if ref_vocab is None else ref_vocab.vocab_size
        _checks.check_linear_inputs(ref_input, ref_weight, target, ref_bias, ignore_index, 1.0, None,
                                    check_range=False, vocab_size=None if ref_vocab is None else ref_V)
        if ref_V != V:
            raise ValueError(f"ref_weight has a vocabulary of {ref_V}, lin_weight of {V}: the "
                             "reference must score the same token ids")
        with torch.no_grad():
            if segment_ids is None:
                seq_ids = torch.arange(B, device=target.device).repeat_interleave(target.shape[1])
            else:
                seq_ids = segment_ids
            _, sums, _ = linear_stats(ref_input, ref_weight, target, ref_bias, seq_ids, B, ignore_index, 1.0, None,
                                      self.workspace_budget, vocab_shard=ref_vocab,
                                      sequence_parallel_group=sequence_group)
            if self.average_log_prob:
                sums = sums / torch.tensor(seq_counts, device=target.device)
        return sums


def kto_kl_baseline(kl_input: torch.Tensor, lin_weight: torch.Tensor, kl_target: torch.Tensor,
                    bias: torch.Tensor | None = None, ref_kl_input: torch.Tensor | None = None,
                    ref_weight: torch.Tensor | None = None, ref_bias: torch.Tensor | None = None, *,
                    ref_kl_logps: torch.Tensor | None = None, ignore_index: int = -100,
                    process_group: ProcessGroup | None = None, vocab_start: int | None = None,
                    sequence_parallel_group: ProcessGroup | None = None) -> torch.Tensor:
    """TRL's KTO KL baseline from mismatched prompt/completion pairs: mean over them of
    log pi(y|x') - log pi_ref(y|x'), clamped at 0, without gradient, through the fused forward-only op.
    Under data parallelism, average it across processes before passing it as kl (TRL gathers it).
    process_group, vocab_start, sequence_parallel_group: as sequence_logprobs (both weights sharded alike)."""
    par = dict(process_group=process_group, vocab_start=vocab_start, sequence_parallel_group=sequence_parallel_group)
    with torch.no_grad():
        pol, _ = sequence_logprobs(kl_input, lin_weight, kl_target, bias=bias, ignore_index=ignore_index, **par)
        if ref_kl_logps is None:
            if ref_kl_input is None or ref_weight is None:
                raise ValueError("kto_kl_baseline needs ref_kl_input and ref_weight, or ref_kl_logps")
            ref_kl_logps, _ = sequence_logprobs(ref_kl_input, ref_weight, kl_target, bias=ref_bias,
                                                ignore_index=ignore_index, **par)
        return (pol - ref_kl_logps.float()).mean().clamp(min=0)
