"""Analytic cost model of the fused DPO loss's GPU schedule (issue 24, item 1). CPU only: it imports
neither torch nor rdpo_fast, so it runs anywhere and in CI.

What it is for: to rank the remaining speed ideas before GPU minutes are spent on them. For each
schedule of the fused DPO forward+backward with reference log-probs given it lists every kernel a step
launches, with its FLOPs and HBM bytes, and the host syncs, then turns them into time on a device:

    GEMM           max(FLOPs / (peak x gemm_eff), bytes / bandwidth) + acc_penalty x (bytes an accumulating
                   epilogue moves beyond a plain bf16 store: C re-read, wider fp32 store) / bandwidth
    streaming      bytes / (bandwidth x the kernel kind's achieved fraction)
    small kernel   tiny_kernel_s each (O(pairs) bookkeeping, launch-bound)
    GPU idle       kernel_gap_s per kernel, plus, per host sync, its latency and the host time to queue
                   the ops between the drain and the next long kernel (cpu_op_s each)

Schedules (see rdpo_fast/fused_loss.py; this file re-implements the chunk and ring planning so that it
stays import-free, and bench/test_cost_model.py checks the plans against the code):

    fp32      today's default: per chunk of whole pairs a logits GEMM into the bounded workspace, the
              forward epilogue (logsumexp, label gather, per-sequence sums), the pair head, the dZ
              kernel in place, the dX GEMM, and a dW GEMM added into an fp32 [V, H] accumulator (the
              first chunk writes it, beta=0); dW cast to the weight dtype at the end
    weight    dW summed per chunk in the weight's dtype (no fp32 buffer, no cast)
    ring      dw_accumulation="ring": chunks' dZ and hidden rows stay in a ring of dw_ring_budget bytes,
              one dW GEMM per flush; a single flush writes dW in the weight's dtype
    one-pass  epilogue="one_pass" (kernels/logprob_onepass.py): one kernel computes the statistics and,
              sweeping the rows again, writes S = (onehot - softmax) * d transform in place; g is a row
              scale of the hidden rows before the dW GEMM and of the dX GEMM's fp32 output (rounded once
              as it is scaled). One logits read less, if the second sweep finds the rows in L2 (the
              kernel's persistent grid is sized for that; a GPU must confirm it)
    scaled-exp  QuACK-style: the logits GEMM's epilogue stores a bf16 scaled exponent and sum-exp
              partials; no epilogue pass at all; dX/dW apply per-row scales inside custom GEMMs

The H100 preset is fitted to the committed profile (bench/results/H100-2026-11-22-*) by h100():
the constants and where each comes from are printed by `python -m bench.cost_model --calibration`.

    python -m bench.cost_model [--device h100|h200] [--shape llama3-8b qwen2.5-7b] [--n 2048 16384]
                               [--ring-budget BYTES] [--custom-gemm-eff 1.0] [--calibration] [--json F]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

MiB = 2**20
GiB = 2**30
RESULTS = Path(__file__).resolve().parent / "results"
PROFILE = RESULTS / "H100-2026-11-22-loss-profile.txt"
LOSS_RUN = RESULTS / "H100-2026-11-22-loss.json"
SWEEP_RUN = RESULTS / "H100-2026-11-22-sweep.json"
TUNE_RUN = RESULTS / "H100-2026-11-22-tune-epilogue.json"

# ---------------------------------------------------------------------------------------------------
# Problem


@dataclass(frozen=True)
class Head:
    name: str
    H: int
    V: int


HEADS = {"llama3-8b": Head("llama3-8b", 4096, 128256), "qwen2.5-7b": Head("qwen2.5-7b", 3584, 152064)}


@dataclass(frozen=True)
class Problem:
    """One fused-loss call as the benchmarks run it: N completion rows (prompt and pad rows are compacted
    away before any GEMM, so they cost nothing here), sequences of T rows, a pair is 2T rows."""
    head: Head
    N: int
    T: int = 1024
    elt: int = 2  # bytes per element of the GEMM dtype (bf16)

    @property
    def pairs(self) -> int:
        return self.N // (2 * self.T)

    @property
    def nhv(self) -> float:
        return float(self.N) * self.head.H * self.head.V


# ---------------------------------------------------------------------------------------------------
# Devices


@dataclass(frozen=True)
class Device:
    name: str
    peak_flops: float      # dense bf16 tensor-core FLOP/s, datasheet
    hbm_bw: float          # HBM bytes/s, datasheet
    gemm_eff: float        # fraction of peak_flops cuBLAS reaches on these large bf16 GEMMs
    acc_penalty: float     # share of an accumulating GEMM's extra epilogue traffic it does not hide
    copy_eff: float        # fraction of hbm_bw a vectorised copy / cast / fill reaches
    fwd_epi_eff: float     # ... the forward epilogue (one read of the logits)
    bwd_epi_eff: float     # ... the dZ kernel (one read and one write of the logits)
    strided_eff: float     # ... a non-vectorised elementwise kernel (bf16 x 0-dim device tensor)
    rows_eff: float        # ... row gathers and scatters of hidden states (index_select / index_copy_)
    tiny_kernel_s: float   # GPU time of one O(pairs) bookkeeping kernel
    kernel_gap_s: float    # GPU idle between two queued kernels of one stream
    sync_latency_s: float  # one device-to-host read once the queue has drained
    cpu_op_s: float        # host time to dispatch one eager torch op / kernel launch
    source: dict = field(default_factory=dict, compare=False)  # constant -> where it comes from

    def with_gemm_time(self, flops: float, seconds: float) -> Device:
        """The same device with gemm_eff taken from a cuBLAS time measured in the same run: lent H100s
        differ by ~10% in sustained GEMM clock, so same-run comparisons refit this one constant."""
        return replace(self, gemm_eff=flops / (seconds * self.peak_flops))


# Datasheet numbers (NVIDIA H100 Tensor Core GPU datasheet, SXM5 column; NVIDIA H200 Tensor Core GPU
# datasheet, SXM column). Both list "BF16 Tensor Core 1,979 teraFLOPS" with 2:4 sparsity: dense is half,
# 989.4 TFLOP/s (132 SMs at the 1.83 GHz boost clock; the H200 has the same GH100 die and clocks).
# Memory: H100 SXM5 80GB HBM3 3.35 TB/s; H200 141GB HBM3e 4.8 TB/s. The profiled card reports itself as
# "NVIDIA H100 80GB HBM3" with 132 SMs: the SXM5 part.
H100_PEAK, H100_BW = 989.4e12, 3.35e12
H200_PEAK, H200_BW = 989.4e12, 4.8e12

# Host-side constants. The committed files have no timeline (the profile is a per-kernel table), so these
# cannot be fitted from them; they are typical figures, stated here, and a GPU trace should replace them.
KERNEL_GAP_S = 1.0e-6    # back-to-back kernels on one stream, queue non-empty
SYNC_LATENCY_S = 20e-6   # .tolist()/bool() of a device tensor once the queue is drained
CPU_OP_S = 8e-6          # eager torch op incl. its Python frame (Triton launches ~ the same on 3.6)
# Small-kernel GPU time, set from the profile: its 105 small aten::mul kernels average 1.5 us, its small
# copies 1.5 us, its small gathers 5.7 us; 2 us is taken for all bookkeeping kernels.
TINY_KERNEL_S = 2.0e-6


# ---------------------------------------------------------------------------------------------------
# What a step launches


@dataclass(frozen=True)
class Op:
    """One kind of kernel in a step. calls: per step; the rest per call. read/write: HBM bytes moved
    (c_read: the part of read that is an accumulating GEMM re-reading its output). acc: the bytes an
    accumulating GEMM's epilogue moves beyond a plain store of its output in the GEMM dtype (the C
    re-read, and the wider fp32 store): what acc_penalty, fitted on exactly this count, charges."""
    name: str
    part: str              # component it is reported under (PARTS)
    calls: int
    flops: float = 0.0
    read: float = 0.0
    write: float = 0.0
    acc: float = 0.0
    c_read: float = 0.0
    kind: str = "copy"     # gemm | copy | fwd_epi | bwd_epi | strided | rows | tiny
    scope: str = "step"    # chunk | flush | step: how the calls scale (for launches per chunk)
    gemm_rel: float = 1.0  # a custom GEMM's efficiency relative to cuBLAS's (1.0: cuBLAS itself)


PARTS = ("gemm logits+dX", "gemm dW", "epilogue stats", "epilogue dZ", "elementwise", "rows", "small kernels")


@dataclass(frozen=True)
class Sync:
    name: str
    refill_ops: int  # host ops between this drain and the next long kernel being queued


@dataclass
class Step:
    label: str
    ops: list
    syncs: list
    chunks: int
    flushes: int = 0
    notes: list = field(default_factory=list)
    planned_bytes: int = 0  # the schedule's own big buffers: workspace or ring, accumulator

    @property
    def gemm_flops(self) -> float:
        return sum(o.flops * o.calls for o in self.ops if o.kind == "gemm")

    @property
    def launches(self) -> int:
        return sum(o.calls for o in self.ops)

    def launches_per_chunk(self) -> float:
        per = sum(o.calls for o in self.ops if o.scope in ("chunk", "flush"))
        return per / max(self.chunks, 1)


def traffic(step: Step) -> dict:
    """HBM bytes per step by pass. GEMM operand reads are listed apart: at these shapes the GEMMs are
    compute-bound and their operand traffic is hidden under the math (the roofline max() in op_time)."""
    t = {"logits write": 0.0, "epilogue reads": 0.0, "dZ / S writes": 0.0, "dW writes": 0.0,
         "dW accumulator re-reads": 0.0, "casts, fills, scalings": 0.0, "row gathers/scatters": 0.0,
         "GEMM operand reads": 0.0}
    for o in step.ops:
        if o.kind == "gemm":
            t["GEMM operand reads"] += o.calls * (o.read - o.c_read)
            t["dW accumulator re-reads"] += o.calls * o.c_read
            if o.part == "gemm dW":
                t["dW writes"] += o.calls * o.write
            elif o.name.startswith("logits"):
                t["logits write"] += o.calls * o.write
        elif o.part in ("epilogue stats", "epilogue dZ"):
            t["epilogue reads"] += o.calls * o.read
            t["dZ / S writes"] += o.calls * o.write
        elif o.part == "elementwise":
            t["casts, fills, scalings"] += o.calls * (o.read + o.write)
        elif o.part == "rows":
            t["row gathers/scatters"] += o.calls * (o.read + o.write)
    return t


def op_time(op: Op, dev: Device) -> float:
    """Seconds for one call."""
    moved = op.read + op.write
    if op.kind == "gemm":
        math_s = op.flops / (dev.peak_flops * dev.gemm_eff * op.gemm_rel)
        return max(math_s, moved / (dev.hbm_bw * dev.copy_eff)) + dev.acc_penalty * op.acc / dev.hbm_bw
    if op.kind == "tiny":
        return dev.tiny_kernel_s
    eff = {"copy": dev.copy_eff, "fwd_epi": dev.fwd_epi_eff, "bwd_epi": dev.bwd_epi_eff,
           "strided": dev.strided_eff, "rows": dev.rows_eff}[op.kind]
    return max(moved / (dev.hbm_bw * eff), dev.tiny_kernel_s)


@dataclass
class Prediction:
    label: str
    parts: dict            # part -> seconds per step
    kernels_s: float
    idle_s: float
    total_s: float
    gemm_flops: float
    launches: int
    launches_per_chunk: float
    syncs: int
    chunks: int
    flushes: int
    planned_mib: float
    notes: list

    @property
    def ms(self) -> float:
        return self.total_s * 1e3


def predict(step: Step, dev: Device) -> Prediction:
    parts = {p: 0.0 for p in PARTS}
    for op in step.ops:
        parts[op.part] += op.calls * op_time(op, dev)
    kernels = sum(parts.values())
    idle = step.launches * dev.kernel_gap_s
    for s in step.syncs:
        idle += dev.sync_latency_s + s.refill_ops * dev.cpu_op_s
    return Prediction(step.label, parts, kernels, idle, kernels + idle, step.gemm_flops, step.launches,
                      step.launches_per_chunk(), len(step.syncs), step.chunks, step.flushes,
                      step.planned_bytes / MiB, list(step.notes))


# ---------------------------------------------------------------------------------------------------
# Planning, as rdpo_fast does it (re-implemented: see the module docstring)

WORKSPACE_BYTES = 512 * MiB  # rdpo_fast.ops.DEFAULT_WORKSPACE_BYTES


def chunk_rows(n_rows: int, V: int, elt: int, budget: int, round128: bool = True) -> int:
    """rdpo_fast.ops.chunk_rows on the Triton backend (workspace factor = the element size)."""
    rows = max(1, budget // (V * elt))
    if round128 and rows > 256:  # multiples of 128 since 2026-11-22 21:38 (841a23c)
        rows -= rows % 128
    return min(n_rows, rows)


def chunks_of_pairs(rows_per_pair: list, max_rows: int) -> list:
    """rdpo_fast.fused_loss._chunks_of_pairs: row counts of chunks of whole pairs, each at most max_rows
    (a single pair longer than that gets a chunk of its own)."""
    sizes, p0, r0, r = [], 0, 0, 0
    for p, n in enumerate(rows_per_pair):
        if r + n - r0 > max_rows and p > p0:
            sizes.append(r - r0)
            p0, r0 = p, r
        r += n
    sizes.append(r - r0)
    return sizes


@dataclass(frozen=True)
class RingPlan:
    """rdpo_fast.fused_loss._DwRing's plan: slot offsets, flush points, ring rows, dW dtype."""
    offsets: tuple
    flush_after: tuple
    rows: int
    flushes: int
    dw_in_weight_dtype: bool

    def flush_rows(self, sizes: list) -> list:
        """Rows each flush's dW GEMM covers (its K)."""
        out, fill = [], 0
        for off, n, f in zip(self.offsets, sizes, self.flush_after):
            fill = off + n
            if f:
                out.append(fill)
        return out


def ring_plan(sizes: list, V: int, H: int, elt: int, budget: int, weight_elt: int | None = None) -> RingPlan:
    row_bytes = (V + H) * elt
    total = sum(sizes)
    if total * row_bytes <= budget:
        cap = total
    else:
        cap = max(max(sizes), (budget - 4 * V * H) // row_bytes)
    offsets, flush, fill = [], [], 0
    for n in sizes:
        if fill + n > cap:
            flush[-1] = True
            fill = 0
        offsets.append(fill)
        flush.append(False)
        fill += n
    flush[-1] = True
    flushes = sum(flush)
    weight_elt = elt if weight_elt is None else weight_elt
    # One flush: dW straight from the GEMM in the weight's dtype (bf16 == GEMM dtype, or fp32 masters).
    single_ok = weight_elt in (elt, 4)
    return RingPlan(tuple(offsets), tuple(flush), max(o + n for o, n in zip(offsets, sizes)), flushes,
                    flushes == 1 and single_ok)


def default_ring_budget(head: Head, workspace: int = WORKSPACE_BYTES) -> int:
    """dw_ring_budget's default: the workspace plus the 4VH bytes of the fp32 accumulator."""
    return workspace + 4 * head.V * head.H


# ---------------------------------------------------------------------------------------------------
# Code states: the committed measurements were taken on earlier code than today's, so the calibration
# builds the schedule as it was then (git history of rdpo_fast/fused_loss.py).


@dataclass(frozen=True)
class CodeState:
    name: str
    dw_zero_fill: bool        # dW accumulator zero-filled, every chunk's GEMM reads it (before fa3c493)
    grad_scale_muls: bool     # backward multiplies dX and dW by grad_loss (before 841a23c)
    backward_sync: bool       # backward reads bool(grad_loss == 1) (841a23c on)
    prologue_syncs: int       # host syncs before the first GEMM without host_counts
    round128: bool            # chunk rows rounded down to a multiple of 128
    prologue_ops: int         # host ops from the first prologue sync to the first logits GEMM
    tiny_fixed: int           # small kernels per step outside the chunk loop
    tiny_per_chunk: int       # small kernels per chunk (pair head bookkeeping, g per token)
    device_grad_scale: bool = False  # with host_counts, backward scales on the device (no sync, no pass at 1)


# Before fa3c493 (the profile): checks and counts read back in five places (check_labels' any(), the
# empty-sequence any(), nonzero in _pair_order, rows_per_pair.tolist(), int(num_chosen_tokens)).
PROFILED = CodeState("profiled (b67653e, before fa3c493)", dw_zero_fill=True, grad_scale_muls=True,
                     backward_sync=False, prologue_syncs=5, round128=False, prologue_ops=40, tiny_fixed=55,
                     tiny_per_chunk=25)
# fa3c493..e536979 (the loss suite's 91.1 ms): one transfer for counts and checks, nonzero still there.
LOSS_SUITE = replace(PROFILED, name="loss suite (fa3c493/e536979)", dw_zero_fill=False, prologue_syncs=2,
                     prologue_ops=35)
# 841a23c (the sweep): grad_loss == 1 skips the [V, H] pass, at one sync in backward; 128-row chunks.
SWEEP = replace(LOSS_SUITE, name="sweep (841a23c)", grad_scale_muls=False, backward_sync=True, round128=True)
# Today's main (73e8c28): rows from one sort (no nonzero), one .tolist() for counts and label range
# (none with host_counts), _SeqStats/_PairHead bookkeeping.
MAIN_73E8C28 = replace(SWEEP, name="main (73e8c28)", prologue_syncs=1, prologue_ops=40, tiny_fixed=50,
                       tiny_per_chunk=24)
# Issue 21: a host_counts call's backward scales dX and dW in place by grad_loss on the device
# (kernels/grad_scale.py, no write when it is 1): no sync and no [V, H] pass.
HEAD_CODE = replace(MAIN_73E8C28, name="main (issue 21)", device_grad_scale=True)


# ---------------------------------------------------------------------------------------------------
# Schedules


@dataclass(frozen=True)
class Schedule:
    label: str
    dw: str = "fp32"                 # fp32 | weight | ring
    ring_budget: int | None = None   # bytes; None: the default (workspace + 4VH)
    epilogue: str = "two-pass"       # two-pass | one-pass | scaled-exp
    lse_in_gemm: bool = False        # persistent GEMM computing the logsumexp partials in its epilogue
    host_counts: bool = False        # the collator's counts given: no prologue sync
    workspace: int = WORKSPACE_BYTES
    custom_gemm_rel: float = 1.0     # custom GEMMs' efficiency relative to cuBLAS
    code: CodeState = HEAD_CODE


def fused_step(pb: Problem, sc: Schedule) -> Step:
    """Every kernel and sync of one fused DPO forward+backward (reference log-probs given)."""
    H, V, e, N = pb.head.H, pb.head.V, pb.elt, pb.N
    code = sc.code
    VH = V * H
    cap = chunk_rows(N, V, e, sc.workspace, code.round128)
    sizes = chunks_of_pairs([2 * pb.T] * pb.pairs, cap)
    k = len(sizes)
    ops: list = []
    notes: list = []

    def add(name, part, calls, kind, scope="chunk", **kw):
        if calls:
            ops.append(Op(name, part, calls, kind=kind, scope=scope, **kw))

    # Rows: every chunk gathers its hidden rows (into the ring slot for "ring"), the dX rows are
    # scattered back; per-chunk calls are summed over chunks of (possibly) different sizes.
    for n in sorted(set(sizes)):
        c = sizes.count(n)
        add(f"gather x rows [{n}, H]", "rows", c, "rows", read=n * H * e, write=n * H * e)
        custom = sc.epilogue == "scaled-exp" or sc.lse_in_gemm
        rel = sc.custom_gemm_rel if custom else 1.0
        add(f"logits GEMM [{n}, V]", "gemm logits+dX", c, "gemm", flops=2.0 * n * H * V,
            read=VH * e + n * H * e, write=n * V * e, gemm_rel=rel)
        # Epilogue passes over the chunk's logits.
        if sc.epilogue == "two-pass":
            if not sc.lse_in_gemm:
                add("forward epilogue (lse, gather, sums)", "epilogue stats", c, "fwd_epi", read=n * V * e)
            add("dZ kernel, in place", "epilogue dZ", c, "bwd_epi", read=n * V * e, write=n * V * e)
        elif sc.epilogue == "one-pass":
            add("one-pass epilogue: stats + S in place", "epilogue dZ", c, "bwd_epi", read=n * V * e,
                write=n * V * e)
            # g as a row scale: x rows scaled in place before dW (read + write [n, H]); the dX GEMM's fp32
            # output scaled and rounded to the GEMM dtype in one pass.
            add("row scale g*x for dW", "rows", c, "copy", read=n * H * e, write=n * H * e)
            add("row scale g*(S W) for dX, fp32 -> bf16", "rows", c, "copy", read=n * H * 4, write=n * H * e)
        elif sc.epilogue == "scaled-exp":
            # The GEMM stores E and (max, sum-exp, sum-z) partials per 128-column tile; a small kernel
            # reduces them; the target logit comes from a gathered W row dot x (O(nH)).
            tiles = -(-V // 128)
            add("reduce sum-exp partials", "epilogue stats", c, "copy", read=n * tiles * 4 * 3, write=n * 8)
            add("target logit (gathered W rows . x)", "rows", c, "rows", read=2 * n * H * e, write=n * 4)
            add("onehot term of dW (index_add of g*x rows)", "rows", c, "rows", read=n * H * e + n * H * 4,
                write=n * H * 4)
        else:
            raise ValueError(f"unknown epilogue {sc.epilogue!r}")
        add(f"dX GEMM [{n}, H]", "gemm logits+dX", c, "gemm", flops=2.0 * n * H * V,
            read=n * V * e + VH * e, write=n * H * (4 if sc.epilogue == "one-pass" else e),
            gemm_rel=sc.custom_gemm_rel if sc.epilogue == "scaled-exp" else 1.0)
        add("dX rows index_copy_", "rows", c, "rows", read=n * H * e, write=n * H * e)
    add("pair head and per-token g (bookkeeping)", "small kernels", code.tiny_per_chunk * k, "tiny")

    # dW
    dw_rel = sc.custom_gemm_rel if sc.epilogue == "scaled-exp" else 1.0
    flushes = 0
    planned = 0
    def dw_gemm(name, K, out_elt, reads_c, scope):
        # A plain GEMM stores VH x e; an accumulating one may re-read C and store it wider.
        c_read = VH * out_elt if reads_c else 0
        add(name, "gemm dW", 1, "gemm", scope=scope, flops=2.0 * K * H * V, read=K * V * e + K * H * e + c_read,
            write=VH * out_elt, c_read=c_read, acc=c_read + VH * (out_elt - e), gemm_rel=dw_rel)

    if sc.dw in ("fp32", "weight"):
        acc_elt = 4 if sc.dw == "fp32" else e
        planned = max(sizes) * V * e + VH * acc_elt
        for i, n in enumerate(sizes):
            # The first chunk writes dW (beta=0) unless the accumulator was zero-filled first.
            dw_gemm(f"dW GEMM K={n} (+)= into {'fp32' if acc_elt == 4 else 'bf16'} [V, H]", n, acc_elt,
                    i > 0 or code.dw_zero_fill, "chunk")
        if code.dw_zero_fill:
            add("zero-fill dW accumulator", "elementwise", 1, "copy", scope="step", write=VH * acc_elt)
        if acc_elt == 4:
            add("cast dW fp32 -> weight dtype", "elementwise", 1, "copy", scope="step", read=VH * 4, write=VH * e)
        flushes = k
    elif sc.dw == "ring":
        budget = default_ring_budget(pb.head, sc.workspace) if sc.ring_budget is None else sc.ring_budget
        plan = ring_plan(sizes, V, H, e, budget)
        flushes = plan.flushes
        planned = plan.rows * (V + H) * e + (0 if plan.dw_in_weight_dtype else VH * 4)
        for i, K in enumerate(plan.flush_rows(sizes)):
            if plan.dw_in_weight_dtype:  # one flush: a plain GEMM writing dW in bf16
                dw_gemm(f"dW GEMM K={K} (ring flush) -> bf16", K, e, False, "flush")
            else:
                dw_gemm(f"dW GEMM K={K} (ring flush) (+)= fp32", K, 4, i > 0, "flush")
        if not plan.dw_in_weight_dtype:
            add("cast dW fp32 -> weight dtype", "elementwise", 1, "copy", scope="step", read=VH * 4, write=VH * e)
        notes.append(f"ring budget {budget / MiB:.0f} MiB: {plan.rows} rows, {plan.flushes} flush(es)")
    else:
        raise ValueError(f"unknown dw schedule {sc.dw!r}")

    # Per step: dX buffer zeroed, bookkeeping outside the loop, backward's grad_loss passes.
    add("zero dX [N, H]", "elementwise", 1, "copy", scope="step", write=N * H * e)
    add("prologue/epilogue bookkeeping", "small kernels", code.tiny_fixed, "tiny", scope="step")
    if code.grad_scale_muls:
        # g * grad_loss with a 0-dim device tensor: the non-vectorised TensorIterator path.
        add("backward: dW * grad_loss", "elementwise", 1, "strided", scope="step", read=VH * e, write=VH * e)
        add("backward: dX * grad_loss", "elementwise", 1, "strided", scope="step", read=N * H * e, write=N * H * e)
    device_scale = sc.host_counts and code.device_grad_scale
    if device_scale:
        add("backward: grad_scale kernels (return at once when grad_loss == 1)", "small kernels", 2, "tiny",
            scope="step")

    syncs = []
    n_pro = 0 if sc.host_counts else code.prologue_syncs
    for i in range(n_pro):
        # The first drain leaves the GPU waiting for the whole prologue; later ones only add latency.
        syncs.append(Sync("prologue read-back", code.prologue_ops if i == 0 else 0))
    if code.backward_sync and not device_scale:
        # Drains the queue at the end of the step: the host then queues the rest of the step and, in the
        # benchmark, the next step's prologue before the GPU has a long kernel again.
        syncs.append(Sync("backward bool(grad_loss == 1)", 5 + (code.prologue_ops if n_pro == 0 else 0)))
    return Step(sc.label, ops, syncs, k, flushes, notes, planned)


def cublas_step(pb: Problem) -> Step:
    """The roofline: the same three 2NHV GEMMs alone (bench/loss_suite.py's "3 GEMMs (6NHV)")."""
    H, V, e, N = pb.head.H, pb.head.V, pb.elt, pb.N
    f = 2.0 * N * H * V
    ops = [Op("logits GEMM", "gemm logits+dX", 1, f, V * H * e + N * H * e, N * V * e, kind="gemm"),
           Op("dX GEMM", "gemm logits+dX", 1, f, N * V * e + V * H * e, N * H * e, kind="gemm"),
           Op("dW GEMM", "gemm dW", 1, f, N * V * e + N * H * e, V * H * e, kind="gemm")]
    return Step("cuBLAS 3 GEMMs (6NHV)", ops, [], 1)


def one_gemm_step(pb: Problem) -> Step:
    H, V, e, N = pb.head.H, pb.head.V, pb.elt, pb.N
    return Step("cuBLAS 1 GEMM (2NHV)", [Op("logits GEMM", "gemm logits+dX", 1, 2.0 * N * H * V,
                                             V * H * e + N * H * e, N * V * e, kind="gemm")], [], 1)


def ref_forward_step(pb: Problem, lse_in_gemm: bool = False, custom_gemm_rel: float = 1.0,
                     workspace: int = WORKSPACE_BYTES) -> Step:
    """rdpo_fast.sequence_logprobs under no_grad (the reference forward, 2NHV): label-range check and
    nonzero (two syncs), compaction, then per chunk of rows a GEMM into the workspace and the forward
    epilogue. lse_in_gemm: a persistent GEMM reduces the logsumexp in its epilogue and never writes
    the logits."""
    H, V, e, N = pb.head.H, pb.head.V, pb.elt, pb.N
    cap = chunk_rows(N, V, e, workspace)
    sizes = [min(cap, N - s) for s in range(0, N, cap)]
    ops = [Op("compact hidden rows", "rows", 1, read=N * H * e, write=N * H * e, kind="rows"),
           Op("bookkeeping", "small kernels", 16 + 2 * len(sizes), kind="tiny")]
    for n in sorted(set(sizes)):
        c = sizes.count(n)
        if lse_in_gemm:
            tiles = -(-V // 128)
            ops.append(Op(f"logits GEMM [{n}, V] + lse epilogue", "gemm logits+dX", c, 2.0 * n * H * V,
                          V * H * e + n * H * e, n * tiles * 8, kind="gemm", scope="chunk", gemm_rel=custom_gemm_rel))
            ops.append(Op("reduce lse partials", "epilogue stats", c, read=n * tiles * 8, write=n * 8,
                          kind="copy", scope="chunk"))
        else:
            ops.append(Op(f"logits GEMM [{n}, V]", "gemm logits+dX", c, 2.0 * n * H * V, V * H * e + n * H * e,
                          n * V * e, kind="gemm", scope="chunk"))
            ops.append(Op("forward epilogue", "epilogue stats", c, read=n * V * e, kind="fwd_epi", scope="chunk"))
    syncs = [Sync("label range check", 6), Sync("nonzero (compaction)", 0)]
    return Step("reference forward" + (" (lse in GEMM)" if lse_in_gemm else ""), ops, syncs, len(sizes))


# ---------------------------------------------------------------------------------------------------
# The committed measurements


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(ms|us|s)", text.strip())
    if not m:
        raise ValueError(f"not a time: {text!r}")
    return float(m.group(1)) * {"ms": 1.0, "us": 1e-3, "s": 1e3}[m.group(2)]


def parse_profile(path: Path = PROFILE) -> dict:
    """torch.profiler key_averages table of bench/profile_loss.py -> per-step milliseconds per component.
    Device kernels are the rows with no CPU time; steps = calls of the fused op (one per step), named
    FusedPreferenceFn since issue 21 and _FusedPreferenceFn in the committed profile, which predates it."""
    rows = {}
    total = None
    for line in path.read_text().splitlines():
        if line.startswith("Self CUDA time total"):
            total = _ms(line.split(":", 1)[1])
            continue
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) != 11 or not cells[-1].isdigit():
            continue
        name = cells[0]
        rows[name] = {"cpu_total_ms": _ms(cells[4]), "self_cuda_ms": _ms(cells[6]), "calls": int(cells[-1])}
    op = next((n for n in ("FusedPreferenceFn", "_FusedPreferenceFn") if n in rows), None)
    if op is None:
        raise ValueError(f"{path}: no row of the fused op (FusedPreferenceFn); is it profile_loss.py's table?")
    steps = rows[op]["calls"]
    kernels = {n: r for n, r in rows.items() if r["cpu_total_ms"] == 0.0}

    def pick(pred):
        sel = [r for n, r in kernels.items() if pred(n)]
        return sum(r["self_cuda_ms"] for r in sel) / steps, sum(r["calls"] for r in sel) / steps

    gemm_plain = pick(lambda n: n.startswith("nvjet") and "badd" not in n)
    gemm_dw = pick(lambda n: n.startswith("nvjet") and "badd" in n)
    fwd = pick(lambda n: n == "logprob_fwd_kernel")
    bwd = pick(lambda n: n == "logprob_bwd_kernel")
    strided = pick(lambda n: n.startswith("void at::native::elementwise_kernel<128, 4,"))
    total_ms = total / steps
    big = gemm_plain[0] + gemm_dw[0] + fwd[0] + bwd[0]
    return {
        "steps": steps,
        "gemm logits+dX": gemm_plain[0], "gemm logits+dX calls": gemm_plain[1],
        "gemm dW": gemm_dw[0], "gemm dW calls": gemm_dw[1],
        "epilogue stats": fwd[0], "epilogue stats calls": fwd[1],
        "epilogue dZ": bwd[0], "epilogue dZ calls": bwd[1],
        "strided mul": strided[0], "strided mul calls": strided[1],
        "gather": pick(lambda n: "vectorized_gather_kernel" in n)[0],
        "index_copy": pick(lambda n: "index_elementwise_kernel" in n)[0],
        "other kernels": total_ms - big,
        "kernels": total_ms,
    }


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def loss_rows(path: Path = LOSS_RUN, kind: str = "random") -> dict:
    """{(impl, pass): median_ms} of the loss suite."""
    return {(r["impl"], r["pass"]): r["median_ms"] for r in load_json(path)[kind] if "median_ms" in r}


def h100(profile: Path = PROFILE, tune: Path = TUNE_RUN) -> Device:
    """The H100 SXM preset: datasheet peak and bandwidth, the rest fitted or set from the 2026-11-22
    profile and epilogue tune (same device pass, committed together in fa3c493)."""
    prof = parse_profile(profile)
    tun = load_json(tune)
    # The profile's chunks are whole pairs of 2 x 1024 rows at the Llama-3-8B head.
    pb = Problem(HEADS["llama3-8b"], 16384)
    n, H, V, e = 2 * pb.T, pb.head.H, pb.head.V, pb.elt
    t_plain = prof["gemm logits+dX"] / prof["gemm logits+dX calls"] * 1e-3
    gemm_eff = 2.0 * n * H * V / (t_plain * H100_PEAK)
    # The fp32 dW addmm of the profiled code read and wrote a zero-filled accumulator in every chunk:
    # 4VH re-read + 4VH stored, 6VH beyond a plain bf16 store.
    t_badd = prof["gemm dW"] / prof["gemm dW calls"] * 1e-3
    acc_penalty = (t_badd - t_plain) * H100_BW / (6 * V * H)
    rows_tb = lambda rs, key: statistics.median(r[key] for r in rs) * 1e12  # noqa: E731
    fwd_bw = rows_tb(tun["configs"], "fwd_TBps")
    bwd_bw = rows_tb(tun["configs"], "bwd_TBps")
    copy_bw = tun["copy_TBps"] * 1e12
    # Historical only: g * grad_loss (bf16 [V, H] and [N, H] by a 0-dim CUDA tensor) in backward.
    strided_bw = 2 * (V * H + pb.N * H) * e / (prof["strided mul"] * 1e-3)  # both muls, per step
    chunks = prof["epilogue stats calls"]
    rows_bytes = chunks * 2 * (2 * n * H * e)  # gather + index_copy_, each reads and writes [n, H]
    rows_bw = rows_bytes / ((prof["gather"] + prof["index_copy"]) * 1e-3)
    src = {
        "peak_flops": "datasheet: H100 SXM5 BF16 1,979 TFLOP/s with sparsity / 2",
        "hbm_bw": "datasheet: H100 SXM5 HBM3 3.35 TB/s",
        "gemm_eff": f"fitted: profile's plain cuBLAS GEMMs (logits, dX), {t_plain * 1e3:.3f} ms per 2048-row "
                    f"chunk GEMM = {2 * n * H * V / t_plain / 1e12:.0f} TFLOP/s",
        "acc_penalty": f"fitted: profile's fp32 dW addmm {t_badd * 1e3:.3f} ms vs {t_plain * 1e3:.3f} ms plain, "
                       f"over its 6VH bytes beyond a plain bf16 store (4VH re-read, 2VH wider store)",
        "copy_eff": f"tune file: device-to-device copy {tun['copy_TBps']:.2f} TB/s",
        "fwd_epi_eff": f"tune file: forward epilogue, median over {len(tun['configs'])} configs "
                       f"{fwd_bw / 1e12:.2f} TB/s",
        "bwd_epi_eff": f"tune file: dZ kernel, median over configs {bwd_bw / 1e12:.2f} TB/s (read + write)",
        "strided_eff": f"fitted: profile's g * grad_loss kernels (non-vectorised path) {strided_bw / 1e12:.2f} TB/s;"
                       " historical code only",
        "rows_eff": f"fitted: profile's index_select + index_copy_ of hidden rows {rows_bw / 1e12:.2f} TB/s",
        "tiny_kernel_s": "set from the profile's small kernels (1.5 to 5.7 us each)",
        "kernel_gap_s": "stated, typical; no timeline in the committed files",
        "sync_latency_s": "stated, typical; no timeline in the committed files",
        "cpu_op_s": "stated, typical eager dispatch; no timeline in the committed files",
    }
    return Device("H100 SXM5 80GB (fitted to the 2026-11-22 profile)", H100_PEAK, H100_BW, gemm_eff, acc_penalty,
                  copy_bw / H100_BW, fwd_bw / H100_BW, bwd_bw / H100_BW, strided_bw / H100_BW, rows_bw / H100_BW,
                  TINY_KERNEL_S, KERNEL_GAP_S, SYNC_LATENCY_S, CPU_OP_S, src)


def h200() -> Device:
    """H200 SXM: the H100's fitted efficiencies (same die, same clocks; not calibrated on an H200) at the
    H200's HBM3e bandwidth."""
    d = h100()
    src = dict(d.source, hbm_bw="datasheet: H200 SXM HBM3e 4.8 TB/s",
               peak_flops="datasheet: H200 SXM BF16 1,979 TFLOP/s with sparsity / 2",
               gemm_eff=d.source["gemm_eff"] + " (H100 value; not calibrated on an H200)")
    return replace(d, name="H200 SXM 141GB (H100 efficiencies, uncalibrated)", hbm_bw=H200_BW, source=src)


DEVICES = {"h100": h100, "h200": h200}


# ---------------------------------------------------------------------------------------------------
# Calibration against the committed files


def calibration(dev: Device | None = None) -> dict:
    """Per-component prediction of the profiled code against the profile, and whole-step predictions of
    the code each wall-time file measured, against it (gemm_eff refitted to that run's cuBLAS time)."""
    dev = dev or h100()
    prof = parse_profile()
    pb = Problem(HEADS["llama3-8b"], 16384)
    p = predict(fused_step(pb, Schedule("fp32 as profiled", code=PROFILED)), dev)
    other = p.parts["elementwise"] + p.parts["rows"] + p.parts["small kernels"]
    comp = []
    for name, pred_ms, meas in (
            ("GEMM logits + dX (cuBLAS mm)", p.parts["gemm logits+dX"] * 1e3, prof["gemm logits+dX"]),
            ("GEMM dW, fp32 addmm", p.parts["gemm dW"] * 1e3, prof["gemm dW"]),
            ("forward epilogue kernel", p.parts["epilogue stats"] * 1e3, prof["epilogue stats"]),
            ("dZ epilogue kernel", p.parts["epilogue dZ"] * 1e3, prof["epilogue dZ"]),
            ("elementwise, fills, casts, gathers, small kernels", other * 1e3, prof["other kernels"]),
            ("all kernels", p.kernels_s * 1e3, prof["kernels"])):
        comp.append({"component": name, "predicted_ms": pred_ms, "measured_ms": meas, "ratio": pred_ms / meas})

    loss = loss_rows()
    cub = loss[("cublas", "3 GEMMs (6NHV)")]
    run_dev = dev.with_gemm_time(6 * pb.nhv, cub * 1e-3)
    walls = []
    for label, sched, key in (
            ("fp32 (loss-suite code)", Schedule("fp32", code=LOSS_SUITE), ("rdpo_fast", "DPO fwd+bwd")),
            ("weight (loss-suite code)", Schedule("weight", dw="weight", code=LOSS_SUITE),
             ("rdpo_fast dW=weight", "DPO fwd+bwd")),
            ("fp32, 1 GiB workspace (loss-suite code)", Schedule("fp32 1GiB", workspace=GiB, code=LOSS_SUITE),
             ("rdpo_fast 1GiB ws", "DPO fwd+bwd"))):
        pr = predict(fused_step(pb, sched), run_dev).ms
        walls.append({"what": label, "predicted_ms": pr, "measured_ms": loss[key], "ratio": pr / loss[key]})
    pr = predict(cublas_step(pb), run_dev).ms
    walls.append({"what": "cuBLAS 3 GEMMs (gemm_eff fitted to it)", "predicted_ms": pr, "measured_ms": cub,
                  "ratio": pr / cub})
    pr = predict(ref_forward_step(pb), run_dev).ms
    meas = loss[("rdpo_fast", "reference forward")]
    walls.append({"what": "reference forward", "predicted_ms": pr, "measured_ms": meas, "ratio": pr / meas})

    sweep = []
    for r in load_json(SWEEP_RUN)["rows"]:
        spb = Problem(HEADS[r["head"]], r["N"])
        sdev = dev.with_gemm_time(6 * spb.nhv, r["gemm3_ms"] * 1e-3)
        pr = predict(fused_step(spb, Schedule("fp32", code=SWEEP)), sdev).ms
        rf = predict(ref_forward_step(spb), sdev).ms
        sweep.append({"head": r["head"], "N": r["N"], "gemm_eff_run": sdev.gemm_eff, "predicted_ms": pr,
                      "measured_ms": r["dpo_ms"], "ratio": pr / r["dpo_ms"], "ref_fwd_predicted_ms": rf,
                      "ref_fwd_measured_ms": r["ref_fwd_ms"], "ref_fwd_ratio": rf / r["ref_fwd_ms"]})
    wall = loss[("rdpo_fast", "DPO fwd+bwd")]
    return {
        "profile_components": comp,
        "profile_idle": {"predicted_ms": p.idle_s * 1e3,
                         "residual_ms": wall - prof["kernels"],
                         "note": "the residual is the loss suite's wall time minus the profile's kernel sum: two "
                                 "device calls, two H100s, two code states, so it is not a measurement of idle"},
        "same_run_walls": walls,
        "run_gemm_eff": run_dev.gemm_eff,
        "sweep": sweep,
    }


# ---------------------------------------------------------------------------------------------------
# Schedules and ideas at a shape


def schedules(pb: Problem, ring_budget: int | None = None, custom_rel: float = 1.0) -> list:
    one_flush = pb.N * (pb.head.V + pb.head.H) * pb.elt
    rb = default_ring_budget(pb.head) if ring_budget is None else ring_budget
    return [
        Schedule("fp32 (default)"),
        Schedule("weight (bf16 dW sums)", dw="weight"),
        Schedule(f"ring (budget {rb / MiB:.0f} MiB)", dw="ring", ring_budget=rb),
        Schedule(f"ring, one flush (budget {one_flush / MiB:.0f} MiB)", dw="ring", ring_budget=one_flush),
        Schedule("one-pass epilogue (fp32 dW)", epilogue="one-pass"),
        Schedule("one-pass + ring one flush", epilogue="one-pass", dw="ring", ring_budget=one_flush),
        Schedule("scaled-exp + ring one flush", epilogue="scaled-exp", dw="ring", ring_budget=one_flush,
                 custom_gemm_rel=custom_rel),
    ]


def ideas(pb: Problem, dev: Device, custom_rel: float = 1.0) -> list:
    """Predicted gain of each remaining idea alone against today's default, ranked; with the custom
    GEMM's break-even efficiency where the idea needs one."""
    base_s = Schedule("fp32 (default)")
    base = predict(fused_step(pb, base_s), dev)
    one_flush = pb.N * (pb.head.V + pb.head.H) * pb.elt
    cands = [
        ("ring, default budget", replace(base_s, dw="ring"), None),
        ("ring, one flush", replace(base_s, dw="ring", ring_budget=one_flush),
         f"buffers {fused_step(pb, replace(base_s, dw='ring', ring_budget=one_flush)).planned_bytes / MiB:.0f} MiB "
         f"vs fp32's {fused_step(pb, base_s).planned_bytes / MiB:.0f} MiB"),
        ("one-pass epilogue", replace(base_s, epilogue="one-pass"), None),
        ("host_counts (no host sync in the step: prologue and backward)", replace(base_s, host_counts=True), None),
        ("scaled-exponent epilogue (custom GEMMs)", replace(base_s, epilogue="scaled-exp", custom_gemm_rel=custom_rel),
         "needs all three GEMMs custom"),
        ("persistent GEMM with lse epilogue (forward)", replace(base_s, lse_in_gemm=True, custom_gemm_rel=custom_rel),
         "logits GEMM custom; same saving as one-pass, not additive with it"),
    ]
    out = []
    for name, sc, note in cands:
        pr = predict(fused_step(pb, sc), dev)
        gain = base.total_s - pr.total_s
        row = {"idea": name, "ms": pr.ms, "gain_ms": gain * 1e3, "note": note or ""}
        # Break-even: the custom GEMM efficiency (relative to cuBLAS) at which the gain is zero.
        if sc.custom_gemm_rel != 1.0 or sc.epilogue == "scaled-exp" or sc.lse_in_gemm:
            lo, hi = 0.5, 1.0
            for _ in range(40):
                mid = (lo + hi) / 2
                t = predict(fused_step(pb, replace(sc, custom_gemm_rel=mid)), dev).total_s
                lo, hi = (mid, hi) if t > base.total_s else (lo, mid)
            row["break_even_gemm_rel"] = hi
        out.append(row)
    # The reference forward: today's against one GEMM, and with the lse in the GEMM's epilogue.
    g1 = predict(one_gemm_step(pb), dev).total_s
    ref = predict(ref_forward_step(pb), dev).total_s
    ref_lse = predict(ref_forward_step(pb, lse_in_gemm=True, custom_gemm_rel=custom_rel), dev).total_s
    out.append({"idea": "reference forward: lse in the GEMM epilogue (no logits written)", "ms": ref_lse * 1e3,
                "gain_ms": (ref - ref_lse) * 1e3,
                "note": f"ref forward {ref / g1:.3f} -> {ref_lse / g1:.3f} x one GEMM "
                        "(a separate pass, not in the DPO step)"})
    out.sort(key=lambda r: -r["gain_ms"])
    return out


def report(pb: Problem, dev: Device, ring_budget: int | None = None, custom_rel: float = 1.0) -> dict:
    cub = predict(cublas_step(pb), dev)
    g1 = predict(one_gemm_step(pb), dev)
    rows = []
    for sc in schedules(pb, ring_budget, custom_rel):
        p = predict(fused_step(pb, sc), dev)
        rows.append({"schedule": sc.label, "ms": p.ms, "x_cublas": cub.total_s / p.total_s,
                     "parts_ms": {k: v * 1e3 for k, v in p.parts.items()}, "idle_ms": p.idle_s * 1e3,
                     "gemm_flops": p.gemm_flops, "launches": p.launches,
                     "launches_per_chunk": p.launches_per_chunk, "host_syncs": p.syncs, "chunks": p.chunks,
                     "dw_gemms": p.flushes, "planned_buffers_mib": p.planned_mib, "notes": p.notes,
                     "hbm_gb": {k: v / 1e9 for k, v in traffic(fused_step(pb, sc)).items()}})
    ref = predict(ref_forward_step(pb), dev)
    # What the last same-run measurement at this shape left unexplained (sweep, code 841a23c).
    unexplained = None
    for r in load_json(SWEEP_RUN)["rows"]:
        if r["head"] == pb.head.name and r["N"] == pb.N:
            rdev = dev.with_gemm_time(6 * pb.nhv, r["gemm3_ms"] * 1e-3)
            pr = predict(fused_step(pb, Schedule("fp32", code=SWEEP)), rdev).ms
            unexplained = {"measured_ms": r["dpo_ms"], "predicted_ms": pr, "residual_ms": r["dpo_ms"] - pr}
    return {"head": pb.head.name, "H": pb.head.H, "V": pb.head.V, "N": pb.N, "cublas_3gemm_ms": cub.ms,
            "cublas_1gemm_ms": g1.ms, "reference_forward_ms": ref.ms,
            "reference_forward_x_gemm": ref.total_s / g1.total_s,
            "schedules": rows, "ideas": ideas(pb, dev, custom_rel), "sweep_unexplained": unexplained}


# ---------------------------------------------------------------------------------------------------
# CLI


def _print_calibration(cal: dict, dev: Device) -> None:
    print("Constants:")
    for k in ("peak_flops", "hbm_bw", "gemm_eff", "acc_penalty", "copy_eff", "fwd_epi_eff", "bwd_epi_eff",
              "strided_eff", "rows_eff", "tiny_kernel_s", "kernel_gap_s", "sync_latency_s", "cpu_op_s"):
        v = getattr(dev, k)
        print(f"  {k:15s} {v:<12.4g} {dev.source.get(k, '')}")
    print("\nCalibration: the profiled code (fp32, before fa3c493) against bench/results/H100-2026-11-22-loss-"
          "profile.txt, ms per step")
    print(f"  {'component':52s} {'predicted':>9s} {'measured':>9s} {'ratio':>6s}")
    for r in cal["profile_components"]:
        print(f"  {r['component']:52s} {r['predicted_ms']:9.2f} {r['measured_ms']:9.2f} {r['ratio']:6.3f}")
    idle = cal["profile_idle"]
    print(f"  {'GPU idle (gaps, syncs) predicted':52s} {idle['predicted_ms']:9.2f}")
    print(f"  {'loss-suite wall - profile kernels (residual)':52s} {'':9s} {idle['residual_ms']:9.2f}   "
          "(not an idle measurement: see below)")
    print(f"\nSame-run wall times (loss suite, gemm_eff refitted to its cuBLAS time: {cal['run_gemm_eff']:.3f})")
    for r in cal["same_run_walls"]:
        print(f"  {r['what']:52s} {r['predicted_ms']:9.2f} {r['measured_ms']:9.2f} {r['ratio']:6.3f}")
    print("\nSweep (code 841a23c), gemm_eff refitted per row to that row's cuBLAS 3-GEMM time")
    print(f"  {'head':11s} {'N':>6s} {'eff':>6s} {'DPO pred':>9s} {'meas':>8s} {'ratio':>6s}   "
          f"{'ref pred':>8s} {'meas':>7s} {'ratio':>6s}")
    for r in cal["sweep"]:
        print(f"  {r['head']:11s} {r['N']:6d} {r['gemm_eff_run']:6.3f} {r['predicted_ms']:9.2f} "
              f"{r['measured_ms']:8.2f} {r['ratio']:6.3f}   {r['ref_fwd_predicted_ms']:8.2f} "
              f"{r['ref_fwd_measured_ms']:7.2f} {r['ref_fwd_ratio']:6.3f}")


def _print_report(rep: dict) -> None:
    print(f"\n{rep['head']} (H={rep['H']}, V={rep['V']}), N={rep['N']}: "
          f"cuBLAS 3 GEMMs {rep['cublas_3gemm_ms']:.2f} ms, "
          f"reference forward {rep['reference_forward_ms']:.2f} ms = {rep['reference_forward_x_gemm']:.3f} x one GEMM")
    print(f"  {'schedule':44s} {'ms':>7s} {'gain':>6s} {'x cuBLAS':>8s} {'GEMMs':>7s} {'epilog':>7s} {'other':>6s} "
          f"{'idle':>5s} {'launch/chunk':>12s} {'syncs/step':>10s} {'dW GEMMs':>8s} {'buffers MiB':>11s}")
    base = rep["schedules"][0]["ms"]
    for r in rep["schedules"]:
        pm = r["parts_ms"]
        gem = pm["gemm logits+dX"] + pm["gemm dW"]
        epi = pm["epilogue stats"] + pm["epilogue dZ"]
        oth = pm["elementwise"] + pm["rows"] + pm["small kernels"]
        print(f"  {r['schedule']:44s} {r['ms']:7.2f} {base - r['ms']:+6.2f} {r['x_cublas']:8.3f} {gem:7.2f} {epi:7.2f} "
              f"{oth:6.2f} {r['idle_ms']:5.2f} {r['launches_per_chunk']:12.1f} {r['host_syncs']:10d} "
              f"{r['dw_gemms']:8d} "
              f"{r['planned_buffers_mib']:11.0f}")
    print("  ideas, each alone against fp32 (default), ranked by predicted gain:")
    for i, r in enumerate(rep["ideas"], 1):
        be = (f"  break-even custom GEMM at {r['break_even_gemm_rel']:.3f} x cuBLAS"
              if "break_even_gemm_rel" in r else "")
        note = f"  [{r['note']}]" if r["note"] else ""
        print(f"  {i}. {r['idea']:62s} {r['gain_ms']:+7.2f} ms{be}{note}")
    u = rep.get("sweep_unexplained")
    if u:
        print(f"  not in the model: the sweep measured {u['measured_ms']:.2f} ms for fp32 here, the model gives "
              f"{u['predicted_ms']:.2f} ms at that run's GEMM speed: {u['residual_ms']:+.2f} ms unexplained "
              "(measure it first: kernel sum vs span in a trace)")
    keys = list(rep["schedules"][0]["hbm_gb"])
    short = ["logits wr", "epi rd", "dZ/S wr", "dW wr", "dW re-rd", "cast/fill", "rows", "GEMM rd*"]
    print("  HBM GB per step by pass (* operand reads, hidden under the GEMMs' math):")
    print(f"  {'schedule':44s} " + " ".join(f"{h:>9s}" for h in short))
    for r in rep["schedules"]:
        print(f"  {r['schedule']:44s} " + " ".join(f"{r['hbm_gb'][k]:9.2f}" for k in keys))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=sorted(DEVICES), default="h100")
    ap.add_argument("--shape", nargs="+", choices=sorted(HEADS), default=["llama3-8b", "qwen2.5-7b"])
    ap.add_argument("--n", nargs="+", type=int, default=[2048, 16384])
    ap.add_argument("--ring-budget", type=int, default=None, help="bytes (default: workspace + 4VH)")
    ap.add_argument("--custom-gemm-eff", type=float, default=1.0,
                    help="custom GEMMs' efficiency relative to cuBLAS (scaled-exp, lse-in-GEMM ideas)")
    ap.add_argument("--calibration", action="store_true", help="print the constants and the calibration")
    ap.add_argument("--json", help="write everything as JSON here")
    a = ap.parse_args(argv)
    for n in a.n:
        if n <= 0 or n % 2048:
            ap.error(f"--n {n}: whole pairs of 2 x 1024 rows, a multiple of 2048")
    dev = DEVICES[a.device]()
    cal = calibration(h100())
    if a.calibration:
        _print_calibration(cal, dev)
    print(f"\nDevice: {dev.name}; peak {dev.peak_flops / 1e12:.1f} TFLOP/s x gemm_eff {dev.gemm_eff:.3f}, "
          f"HBM {dev.hbm_bw / 1e12:.2f} TB/s. Predictions, not measurements.")
    reps = [report(Problem(HEADS[s], n), dev, a.ring_budget, a.custom_gemm_eff) for s in a.shape for n in a.n]
    for rep in reps:
        _print_report(rep)
    if a.json:
        out = {"model": "bench/cost_model.py", "device": {k: v for k, v in asdict(dev).items()},
               "calibration": cal, "results": reps}
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
