"""The fused pass behind FusedLinearPreferenceLoss (and, over sequences instead of pairs,
FusedLinearKTOLoss): the chunk schedule over a batch's kept rows (ChunkPass), its statistics and gradient
buffers, the autograd base class that hands back the gradients made in forward, and a call's parallel
layout. The head that runs on each chunk is the caller's: pairs in pair_pass.py, sequences in kto.py.

Schedule (SPEC section 6): prompt and pad rows are dropped, the kept rows are grouped pair by pair and
cut into chunks of whole pairs that fit the logits workspace (a packed row's kept rows are grouped the
same way, by their segment ids, into the same order as the padded layout's). Per chunk: one logits GEMM into the
workspace; the fused epilogue (logsumexp, label log-prob, per-sequence sums of log-probs and logits,
and for WPO of log sum p^2); the preference head on the chunk's pairs, which gives each sequence's
gradient; the in-place dZ kernel; then the dX GEMM (final for these rows) and the dW GEMM, accumulated
in fp32 across chunks (dw_accumulation="ring": the chunks' dZ stay in a ring and one dW GEMM per flush
covers all of them, see DwRing). Gradients are made in forward and scaled by grad_output in backward:
6NHV FLOPs.

The one-pass epilogue (epilogue="one_pass", see EPILOGUES; "two_pass" is the default): the forward
epilogue's kernel also writes S = (onehot - softmax) * d transform over the chunk's logits, sweeping each
row again while it is in L2, so the logits are read once instead of twice; dZ = diag(g) S is never
written, each row's g scales the dX GEMM's output and the hidden rows the dW GEMM reads.

Batch-level losses (aot, aot_unpaired: they sort the whole batch's log-ratios) need every pair's
log-probs before any gradient, so they run in two phases: the forward statistics of every chunk
(keeping each row's logsumexp), the head on the whole batch, then each chunk's logits again for dZ, dX
and dW. The last chunk's logits are still in the workspace and are not recomputed: 6NHV + 2NHV (k-1)/k
for k chunks, 8NHV at most; 6NHV when the batch fits one chunk.

Backward multiplies the gradients made in forward by the loss's upstream gradient. Where the call made
no host sync (host_counts on a device where a sync waits), it does so in place on the device and
without reading that gradient (ops.scale: a launch that returns at once when it is 1); otherwise it
reads it once, skips the multiplication when it is 1, and allows a second backward (retain_graph).

Parallel calls (PassParallel; the collectives and their maths are rdpo_fast.ops.parallel's): over a
vocabulary-sharded weight every chunk's forward epilogue makes one all-gather of O(rows) floats that
gives the whole vocabulary's logsumexp and log-probs on every rank, dZ and dW stay on the local slice,
and dX, kept in fp32 for the kept rows, is summed over the group by one all-reduce after the last
chunk. Over sequence-parallel ranks each rank holds some tokens of every sequence: the chunks are cut at
the same pairs on every rank (planned from every rank's counts), and before a chunk's head its pairs'
sums are summed over the group, so the head sees whole sequences and every rank computes the same loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from rdpo_fast.ops import parallel
from rdpo_fast.ops.epilogue import (
    forward_epilogue,
    grad_epilogue,
    onepass_epilogue,
    token_stats,
    unscaled_grad_epilogue,
)
from rdpo_fast.ops.scale import scale_
from rdpo_fast.ops.schedule import (
    accumulate_mm,
    chunks_of_pairs,
    logits_into,
    row_scaled_mm,
)

if TYPE_CHECKING:  # annotations only: a torch build without distributed support has no ProcessGroup
    from torch.distributed import ProcessGroup


def ld_tail(labels2d: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """LD-DPO: [2B, T] bool, True for completion tokens past the pair's shorter completion (the verbose
    tail, weighted by ld_alpha). Those tokens are summed in sequence slot 2B + s instead of s."""
    P = labels2d.shape[0] // 2
    keep = (labels2d != ignore_index).long()
    counts = keep.sum(1)
    position = keep.cumsum(1) - 1  # rank of each kept token within its completion
    public = torch.minimum(counts[:P], counts[P:]).repeat(2)
    return position >= public[:, None]


def packed_ld_tail(labels: torch.Tensor, segment_ids: torch.Tensor, n_seq: int, ignore_index: int,
                   n_kept: int) -> torch.Tensor:
    """ld_tail for a packed row: [N] bool, True for the completion tokens past the pair's shorter completion,
    each sequence's tokens ranked in row order (a sequence need not be contiguous). segment_ids: [N] int64,
    every entry in [0, n_seq); n_kept: the number of completion tokens."""
    lab, seg = labels.reshape(-1), segment_ids.reshape(-1)
    rows = grouped_rows(lab, seg, n_seq, ignore_index, n_kept)  # completion tokens, sequence by sequence
    s = seg.index_select(0, rows)
    counts = torch.zeros(n_seq, device=lab.device, dtype=torch.int64).index_add_(0, s, torch.ones_like(s))
    rank = torch.arange(n_kept, device=lab.device) - (counts.cumsum(0) - counts).index_select(0, s)
    P = n_seq // 2
    public = torch.minimum(counts[:P], counts[P:]).repeat(2).index_select(0, s)
    return torch.zeros(lab.numel(), device=lab.device, dtype=torch.bool).index_copy_(0, rows, rank >= public)


def grouped_rows(labels: torch.Tensor, group: torch.Tensor, n_groups: int, ignore_index: int,
                 n_kept: int) -> torch.Tensor:
    """A packed row's kept rows (flat indices) ordered by group ([N] int64 in [0, n_groups)), each group's
    in row order: one sort of unique keys, as the padded layout's (no nonzero, no host sync)."""
    lab = labels.reshape(-1)
    N = lab.numel()
    key = group * N + torch.arange(N, device=lab.device)
    key = torch.where(lab != ignore_index, key, key + n_groups * N)  # ignored rows after every kept one
    return torch.sort(key).indices[:n_kept]


class SeqStats:
    """Per-sequence accumulators the forward epilogue adds into (one slot per sequence, two with LD-DPO):
    sums of label log-probs, of logits, and (WPO) of log sum p^2."""

    def __init__(self, n_slots: int, device: torch.device, with_sq: bool):
        self.logp = torch.zeros(n_slots, device=device, dtype=torch.float32)
        self.logit = torch.zeros(n_slots, device=device, dtype=torch.float32)
        self.sq = torch.zeros(n_slots, device=device, dtype=torch.float32) if with_sq else None

    def folded(self, t: torch.Tensor, n_seq: int) -> torch.Tensor:
        """Unweighted per-sequence totals (the LD tail slots folded back in)."""
        return t[:n_seq] + t[n_seq:] if t.numel() > n_seq else t

    def sum_over(self, group, slots: torch.Tensor) -> None:
        """The given slots of every accumulator summed over a sequence-parallel group (one all-gather)."""
        accs = [t for t in (self.logp, self.logit, self.sq) if t is not None]
        total = parallel.group_sum(torch.stack([t.index_select(0, slots) for t in accs]), group)
        for t, v in zip(accs, total):
            t.index_copy_(0, slots, v)


class Grads:
    """The gradients made in forward: dX rows (final per chunk), dW (accumulated over chunks), d bias."""

    def __init__(self, x2: torch.Tensor, weight: torch.Tensor, need_grad: tuple[bool, bool, bool],
                 dw_accumulation: str, w_dtype: torch.dtype | None = None, vocab: parallel.VocabShard | None = None,
                 n_rows: int = 0):
        V, H = weight.shape
        dev = x2.device
        self.x = torch.zeros_like(x2) if need_grad[0] else None
        # Over a vocabulary shard each chunk's dX is this slice's part, summed over the ranks at the end:
        # kept in fp32 for the n_rows kept rows (in pass order) until then, so the sum is rounded once.
        self.vocab = vocab
        self.x_part = (torch.empty(n_rows, H, device=dev, dtype=torch.float32)
                       if vocab is not None and need_grad[0] else None)
        # dW sums one GEMM per chunk: in fp32 by default, or (dw_accumulation="weight") in the weight's
        # own dtype, which halves the traffic of re-reading and re-writing dW once per chunk. The ring
        # schedule picks its own dtype (w_dtype, see DwRing).
        if w_dtype is None:
            w_dtype = torch.float32 if dw_accumulation == "fp32" else weight.dtype
        self.w = torch.empty(V, H, device=dev, dtype=w_dtype) if need_grad[1] else None
        self.b = torch.zeros(V, device=dev, dtype=torch.float32) if need_grad[2] else None
        self.any = any(need_grad)

    def finish(self, rows: torch.Tensor) -> None:
        """After the last chunk: a vocabulary shard's dX summed over its group (one all-reduce) into
        the kept rows (rows: their flat indices, in pass order)."""
        if self.x_part is not None:
            self.vocab.sum_(self.x_part)
            self.x.index_copy_(0, rows, self.x_part.to(self.x.dtype))
            self.x_part = None


class DwRing:
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

    def __init__(self, sizes: list[int], V: int, H: int, gemm_dtype: torch.dtype, weight_dtype: torch.dtype,
                 budget: int, dev: torch.device):
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

    def slot(self, i: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(logit rows, hidden rows) of the i-th chunk in processing order, n rows."""
        o = self.offsets[i]
        return self.z[o: o + n], self.x[o: o + n]

    def done(self, i: int, n: int, grads: Grads) -> None:
        """The i-th chunk's dZ is in its slot: flush if the plan says so."""
        self._fill = self.offsets[i] + n
        if self.flush_after[i] and grads.w is not None:
            a, b = self.z[: self._fill].t(), self.x[: self._fill]
            if grads.w.dtype == a.dtype:
                grads.w.addmm_(a, b, beta=0.0 if self._first else 1.0)
            else:
                accumulate_mm(grads.w, a, b, first=self._first)
            self._first = False


# The epilogue schedules (the losses' `epilogue` option). "two_pass": the forward epilogue reads each
# chunk's logits, the dZ kernel reads them again and writes dZ in place. "one_pass": one kernel reads them
# once and, sweeping the same rows again from L2, writes S = dZ / g in place; g is then a row scale
# around the dX and dW GEMMs (ChunkPass.chunk_grads). "two_pass" stays the default until a GPU run has
# measured the other (issue 24).
EPILOGUES = ("two_pass", "one_pass")


def check_epilogue(epilogue: str) -> str:
    """epilogue, if it names one of EPILOGUES; ValueError otherwise."""
    if not isinstance(epilogue, str) or epilogue not in EPILOGUES:
        raise ValueError(f"epilogue must be one of {EPILOGUES}, got {epilogue!r}")
    return epilogue


def gradient_order(n_chunks: int, two_phase: bool) -> list[int]:
    """The order the gradient pass visits the chunks. The two-phase schedule starts with the last chunk,
    whose logits the statistics pass left in the workspace."""
    last = n_chunks - 1
    return [last] + list(range(last)) if two_phase else list(range(n_chunks))


class ChunkHead(Protocol):
    """What ChunkPass runs between a chunk's statistics and its gradients."""

    def run(self, first: int, end: int) -> None:
        """The loss of pairs (or sequences) first:end from the statistics, and their sequences'
        gradients."""

    def token_grads(self, r0: int, r1: int) -> torch.Tensor:
        """The upstream gradient of kept rows r0:r1 (fp32)."""


class ChunkPass:
    """The chunk loop over a batch's kept rows (rows: their flat indices into x2, grouped so that chunks
    hold whole pairs, or KTO's whole sequences): per chunk the logits GEMM into the workspace (a ring
    slot with DwRing), the forward epilogue adding into the per-sequence statistics (slots: each row's
    accumulator slot), and, given the rows' upstream gradients, dZ in place and the dX, dW, d bias GEMMs.

    A head (ChunkHead) runs between the two halves: per chunk (run one pass), or once on the whole batch
    (two_phase, for batch-level losses; the gradients then visit the chunks in gradient_order, which a
    DwRing must be planned with). top1_rows: the rows whose label-is-argmax counts in TRL's token
    accuracy (the chosen rows); given, TRL's entropy and token accuracy are summed into token_sums.
    vocab: weight and bias are this rank's vocabulary slice (the epilogue then combines the ranks'
    statistics, and dZ is the slice's). sync(first, end): called before the head runs on pairs (or
    sequences) first:end, to sum their statistics over a sequence-parallel group.

    epilogue="one_pass" (see EPILOGUES): a chunk whose gradients follow gets S = (onehot - softmax) *
    d transform written over its logits by its forward epilogue's own kernel. Where that kernel cannot
    write it, a separate in-place pass over the logits does (unscaled_grad_epilogue), which reads them as
    often as the two-pass schedule does: a vocabulary slice (its logsumexp is whole only after the chunk's
    collective), TRL's token statistics (they read the raw logits after the forward epilogue), and the
    two-phase schedule's recomputed chunks (their logits come back after the statistics)."""

    def __init__(self, x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rows: torch.Tensor,
                 labels: torch.Tensor, slots: torch.Tensor, chunks: list[tuple[int, int, int, int]],
                 stats: SeqStats, grads: Grads, *, transform: dict, two_phase: bool = False,
                 ring: DwRing | None = None, top1_rows: torch.Tensor | None = None,
                 vocab: parallel.VocabShard | None = None, sync=None, epilogue: str = "two_pass"):
        self.x2, self.weight, self.bias = x2, weight, bias
        self.rows, self.labels, self.slots = rows, labels, slots
        self.chunks, self.stats, self.grads, self.tf = chunks, stats, grads, transform
        self.two_phase = two_phase
        self.order = gradient_order(len(chunks), two_phase)
        self.ring = ring
        if ring is not None:
            # The ring's first slot is the statistics pass's workspace: order[0] lands there.
            self.ws, self.xs = ring.z, ring.x
        else:
            n = max(r1 - r0 for _, _, r0, r1 in chunks)
            self.ws, self.xs = torch.empty(n, weight.shape[0], device=x2.device, dtype=weight.dtype), None
        self.top1_rows = top1_rows
        self.token_sums = None if top1_rows is None else torch.zeros(2, device=x2.device, dtype=torch.float32)
        self.epilogue = forward_epilogue if vocab is None else vocab.forward_epilogue
        self.v_offset = 0 if vocab is None else vocab.vocab_start
        self.sync = sync
        self.one_pass = check_epilogue(epilogue) == "one_pass"
        # Whether the forward epilogue's kernel can write S itself (see the class docstring).
        self.fuses_s = self.one_pass and vocab is None and top1_rows is None

    def _head(self, head: ChunkHead, first: int, end: int) -> None:
        if self.sync is not None:
            self.sync(first, end)
        head.run(first, end)

    def run(self, head: ChunkHead) -> None:
        """The whole pass: statistics, the head, the gradients."""
        if self.two_phase:
            self._two_phases(head)
        else:
            self._chunk_by_chunk(head)

    def _chunk_by_chunk(self, head):
        # Per-pair losses: each chunk's head needs only its own pairs, so one pass does it all (6NHV).
        for k, (p0, p1, r0, r1) in enumerate(self.chunks):
            xc, z, lse = self.chunk_stats(k, None if self.ring is None else self.ring.slot(k, r1 - r0),
                                          write_s=self.one_pass and self.grads.any)
            self._head(head, p0, p1)
            if self.grads.any:
                self.chunk_grads(k, k, xc, z, lse, head.token_grads(r0, r1))

    def _two_phases(self, head):
        # Batch-level losses: every chunk's statistics, the head on the whole batch, then the gradients in
        # self.order: the last chunk first, whose logits (xc, z below) are still in the workspace and
        # are not recomputed.
        # With the one-pass epilogue the last chunk's S is written now (it needs no gradient), the
        # recomputed chunks' by a separate pass over their logits.
        lses = []
        last = len(self.chunks) - 1
        for k in range(len(self.chunks)):
            xc, z, lse = self.chunk_stats(k, write_s=self.one_pass and self.grads.any and k == last)
            lses.append(lse)
        self._head(head, self.chunks[0][0], self.chunks[-1][1])
        if not self.grads.any:
            return
        for i, k in enumerate(self.order):
            _, _, r0, r1 = self.chunks[k]
            if i > 0:
                z_out, x_out = (self.ws, None) if self.ring is None else self.ring.slot(i, r1 - r0)
                xc, z = self._logits(r0, r1, z_out, x_out)
                if self.one_pass:
                    unscaled_grad_epilogue(z, self.labels[r0:r1], lses[k], v_offset=self.v_offset, **self.tf)
            self.chunk_grads(i, k, xc, z, lses[k], head.token_grads(r0, r1))

    def chunk_stats(self, k: int, slot: tuple[torch.Tensor, torch.Tensor] | None = None, write_s: bool = False,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Chunk k's logits into the workspace (or the given ring slot) and its forward epilogue, adding
        into the statistics. Returns (the chunk's hidden rows, its logits, its rows' logsumexp). write_s
        (one-pass epilogue): the returned logits are then overwritten with S, for chunk_grads."""
        _, _, r0, r1 = self.chunks[k]
        z_out, x_out = (self.ws, self.xs) if slot is None else slot
        xc, z = self._logits(r0, r1, z_out, x_out)
        labels, st = self.labels[r0:r1], self.stats
        fused = write_s and self.fuses_s
        epilogue = onepass_epilogue if fused else self.epilogue
        lse, _ = epilogue(z, labels, seq_ids=self.slots[r0:r1], seq_logp=st.logp, seq_logit=st.logit,
                          seq_sq=st.sq, **self.tf)
        if self.token_sums is not None:
            entropy, top1 = token_stats(z, labels, lse, **self.tf)
            self.token_sums[0] += entropy.sum()
            self.token_sums[1] += (top1 * self.top1_rows[r0:r1]).sum()
        if write_s and not fused:
            unscaled_grad_epilogue(z, labels, lse, v_offset=self.v_offset, **self.tf)
        return xc, z, lse

    def chunk_grads(self, i: int, k: int, xc: torch.Tensor, z: torch.Tensor, lse: torch.Tensor,
                    g_tok: torch.Tensor) -> None:
        """dZ of chunk k in place from its logits and its rows' upstream gradients g_tok, then dX, dW, d
        bias. i: the chunk's place in the gradient order (the first writes dW with beta=0, so there is no
        zero-fill pass over [V, H]); with a ring, dW waits for the ring's flush.

        One-pass epilogue: z holds S already and dZ = diag(g) S is never formed. dX = diag(g) (S W), the
        rows scaled on the GEMM's fp32 output (one rounding to dX's dtype); dW = S^T (diag(g) X), the
        hidden rows xc scaled in place in the GEMM dtype (O(rows x H) instead of O(rows x V); a ring
        then keeps S and g x, and its flushes need nothing else); d bias = S^T g."""
        _, _, r0, r1 = self.chunks[k]
        grads, weight = self.grads, self.weight
        if self.one_pass:
            dz, row_scale = z, g_tok
            if grads.w is not None:
                xc.mul_(g_tok[:, None])
        else:
            dz, row_scale = grad_epilogue(z, self.labels[r0:r1], lse, g_tok, v_offset=self.v_offset, **self.tf), None
        if grads.x_part is not None:
            accumulate_mm(grads.x_part[r0:r1], dz, weight, first=True)
            if row_scale is not None:
                grads.x_part[r0:r1].mul_(row_scale[:, None])
        elif grads.x is not None:
            dx = torch.mm(dz, weight) if row_scale is None else row_scaled_mm(dz, weight, row_scale, grads.x.dtype)
            grads.x.index_copy_(0, self.rows[r0:r1], dx.to(grads.x.dtype))
        if grads.w is not None and self.ring is None:
            if grads.w.dtype == torch.float32:
                accumulate_mm(grads.w, dz.t(), xc, first=i == 0)
            else:
                grads.w.addmm_(dz.t().to(grads.w.dtype), xc.to(grads.w.dtype), beta=0.0 if i == 0 else 1.0)
        if grads.b is not None:
            if row_scale is None:
                grads.b += dz.sum(0, dtype=torch.float32)
            else:  # a [1, rows] x [rows, V] GEMM accumulated in fp32: no [rows, V] temporary
                accumulate_mm(grads.b.view(1, -1), row_scale.to(dz.dtype)[None, :], dz)
        if self.ring is not None:
            self.ring.done(i, r1 - r0, grads)

    def _logits(self, r0, r1, z_out, x_out):
        """Rows r0:r1's hidden states in the GEMM dtype (the weight's), gathered into x_out (a ring slot)
        or a fresh tensor (x_out None), and their logits in z_out."""
        rows = self.rows[r0:r1]
        if x_out is not None:
            xc = x_out[: r1 - r0]
            if self.x2.dtype == x_out.dtype:
                torch.index_select(self.x2, 0, rows, out=xc)
            else:
                xc.copy_(self.x2.index_select(0, rows))
        else:
            xc = self.x2.index_select(0, rows)
            if xc.dtype != self.weight.dtype:  # autocast="follow": the GEMMs run in the autocast dtype
                xc = xc.to(self.weight.dtype)
        return xc, logits_into(z_out[: r1 - r0], xc, self.weight, self.bias)


class GradsMadeInForward(torch.autograd.Function):
    """Base of the fused losses' autograd functions. Their forward makes the gradients of its scalar loss
    (the first output; the others are not differentiable) w.r.t. inputs 0-2, (hidden, weight, bias),
    and keeps them with keep_grads; backward scales them by the loss's upstream gradient."""

    @staticmethod
    def keep_grads(ctx, grads: Grads, x_shape: torch.Size, weight: torch.Tensor, bias: torch.Tensor | None,
                   sync_free: bool) -> None:
        """Keeps the gradients in the parameters' dtypes (the fp32 accumulators are freed before
        backward). sync_free: the call made no host sync, and backward must not make one either."""
        ctx.save_for_backward(
            None if grads.x is None else grads.x.view(x_shape),
            None if grads.w is None else grads.w.to(weight.dtype),
            None if grads.b is None else grads.b.to(bias.dtype))
        ctx.sync_free = sync_free
        ctx.scaled_in_place = False

    @staticmethod
    def backward(ctx, grad_loss, *_aux_grads):
        if ctx.sync_free and ctx.scaled_in_place:
            raise RuntimeError(
                "a second backward through the same call of a fused loss given host_counts: without a host "
                "sync, its first backward scaled the gradients made in forward in place by the upstream "
                "gradient, so they cannot be scaled again exactly. Call the loss again for another "
                "backward, or leave host_counts out: backward then reads the upstream gradient on the host "
                "and keeps the gradients, and retain_graph works")
        gx, gw, gb = ctx.saved_tensors
        need = ctx.needs_input_grad
        out = [None if not n or g is None else g for g, n in zip((gx, gw, gb), need[:3])]
        if ctx.sync_free:
            # On the device: a launch that returns at once when grad_loss is 1, no read of it here.
            out = [None if g is None else scale_(g, grad_loss) for g in out]
            ctx.scaled_in_place = True
        elif not bool(grad_loss == 1):  # the usual loss.backward() skips a pass over the [V, H] gradient
            out = [None if g is None else g * grad_loss.to(g.dtype) for g in out]
        return (*out, *[None] * (len(need) - 3))


@dataclass(frozen=True)
class PassOptions:
    """The per-call settings of one FusedPreferenceFn call (the loss's own settings are its config).
    num_pairs / num_chosen_tokens: the whole batch's counts (None: this call's). host_counts: the
    completion tokens of each row of target. compute_dtype: the GEMMs' dtype (None: the inputs').
    token_stats: also sum TRL's entropy and token accuracy. sync_free: the call made no host sync.
    parallel: the call's vocabulary shard and sequence-parallel group (None: a single process)."""
    num_pairs: int | None
    num_chosen_tokens: int | None
    need_grad: tuple[bool, bool, bool]
    host_counts: list[int]
    compute_dtype: torch.dtype | None
    token_stats: bool
    sync_free: bool
    # Packed input ([1, N] rows): each token's sequence, [N] int64 in [0, 2B) (ignored tokens' ids made
    # valid by the caller); None for the padded [2B, T] layout.
    segment_ids: torch.Tensor | None = None
    parallel: PassParallel | None = None


@dataclass(frozen=True)
class PassParallel:
    """The parallel layout of one fused-loss call. vocab: the weight's VocabShard (None: whole weight).
    sequence: the sequence-parallel group (None: each rank holds whole sequences), with rank_counts,
    every rank's completion tokens per row of target (host ints, in the group's rank order)."""
    vocab: parallel.VocabShard | None = None
    sequence: object = None
    rank_counts: list[list[int]] | None = None

    def counts(self, local: list[int]) -> list[int]:
        """Each sequence's completion tokens over the whole group (local: this rank's)."""
        if self.sequence is None:
            return local
        return [sum(c) for c in zip(*self.rank_counts)]

    def plan_units(self, local: list[int], units) -> list[int]:
        """The rows per unit (pair, or KTO sequence) that chunk plans are made from: units(counts) of
        this rank's counts, or under sequence parallelism their largest over the ranks, so that every
        rank cuts its chunks at the same units (its collectives must match its peers')."""
        if self.sequence is None:
            return units(local)
        return [max(u) for u in zip(*(units(c) for c in self.rank_counts))]

    def sync(self, stats: SeqStats, slots_of):
        """ChunkPass's sync for a sequence-parallel group (None without one): before the head of units
        first:end, their accumulator slots (slots_of(first, end)) are summed over the group."""
        if self.sequence is None:
            return None
        return lambda first, end: stats.sum_over(self.sequence, slots_of(first, end))


def parallel_call(_input, weight, target, bias, ref_input=None, ref_weight=None, ref_bias=None, *,
                  process_group: ProcessGroup | None = None, vocab_start: int | None = None,
                  sequence_parallel_group: ProcessGroup | None = None) -> tuple[tuple, tuple]:
    """A fused loss's call as this rank sees it: ((_input, weight, target, bias, ref_input, ref_weight,
    ref_bias) as local tensors, (weight's VocabShard or None, ref_weight's, the sequence-parallel group
    or None)); the keywords as FusedLinearPreferenceLoss.forward documents them. A plain ref_weight is
    sharded like a plain weight (the same process_group and vocab_start), or whole without them."""
    _input = parallel.local_replica(_input, "_input")
    target = parallel.local_replica(target, "target")
    ref_input = parallel.local_replica(ref_input, "ref_input")
    shard = dict(process_group=process_group, vocab_start=vocab_start, labels=target)
    weight, bias, vocab = parallel.vocab_shard(weight, bias, name="lin_weight", **shard)
    ref_vocab = None
    if ref_weight is not None:
        ref_weight, ref_bias, ref_vocab = parallel.vocab_shard(ref_weight, ref_bias, name="ref_weight", **shard)
    return ((_input, weight, target, bias, ref_input, ref_weight, ref_bias),
            (vocab, ref_vocab, parallel.sequence_group(sequence_parallel_group)))


def parallel_layout(vocab: parallel.VocabShard | None, sequence, counts: list[int],
                    device: torch.device) -> PassParallel | None:
    """The PassParallel of a call (None for a single process); under sequence parallelism every rank's
    counts are gathered (one small all-gather)."""
    if vocab is None and sequence is None:
        return None
    rank_counts = None if sequence is None else parallel.gather_ints(counts, sequence, device)
    return PassParallel(vocab, sequence, rank_counts)


def check_nonempty(counts: list[int], ignore_index: int) -> None:
    """Every sequence needs a completion token: its log-prob is undefined otherwise."""
    if 0 in counts:
        raise ValueError(f"sequence {counts.index(0)} of the batch has no completion token (all targets "
                         f"are ignore_index={ignore_index}); its log-prob is undefined")


def aligned_chunks(local_units: list[int], plan_units: list[int], max_rows: int) -> list[tuple[int, int, int, int]]:
    """chunks_of_pairs cut by plan_units (identical on every rank) with each chunk's row range in this
    rank's own local_units: every rank's chunk k then holds the same pairs, a rank possibly none of
    their rows."""
    ends = [0]
    for n in local_units:
        ends.append(ends[-1] + n)
    return [(p0, p1, ends[p0], ends[p1]) for p0, p1, _, _ in chunks_of_pairs(plan_units, max_rows)]
