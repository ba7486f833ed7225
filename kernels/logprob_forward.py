"""Forward epilogue over a block of ready logits: per row the logsumexp, the target logit, the log-prob
of the label, and, fused, the per-sequence sums of log-probs and of logits (for TRL's logits/* metrics).
With HAS_SQ (constexpr; no cost when off) also log sum_v p_v^2 = logsumexp(2z) - 2 lse per row, and its
per-sequence sum: the statistic of TRL's WPO weights, from the same exponentials (sum of e^2).

With PARTIAL (constexpr; the vocabulary-parallel ops) the block is one rank's vocabulary slice, whose
column j is token v_offset + j: instead of log-probs the kernel writes each row's partial statistics
into one packed fp32 buffer [k, M] (the send buffer of the ops' single collective per chunk): the
slice's logsumexp, the label's logit (0 when another rank owns the label), the slice's logit sum, and
with HAS_SQ the slice's logsumexp of 2z. Each of these combines exactly across slices (ops/parallel.py).

Rows are processed BLOCK_M at a time, the vocabulary in BLOCK_V tiles with an online (running max)
logsumexp in fp32, so one pass over the logits suffices whatever their dtype. Row offsets are int64:
rows * V exceeds 2^31 at real sizes.
"""
import torch
import triton
import triton.language as tl

from .logits_math import transform


@triton.jit
def logprob_fwd_kernel(
    z_ptr, stride_z, row_idx_ptr, labels_ptr, seq_ptr,
    lse_ptr, logp_ptr, seq_logp_ptr, seq_logit_ptr, sq_ptr, seq_sq_ptr, part_ptr,
    M, V, v_offset, inv_temp, softcap,
    HAS_ROW_IDX: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_SQ: tl.constexpr,
    PARTIAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < M
    if HAS_ROW_IDX:
        rows = tl.load(row_idx_ptr + offs_m, mask=row_ok, other=0).to(tl.int64)
    else:
        rows = offs_m.to(tl.int64)
    row_base = z_ptr + rows * stride_z
    labels = tl.load(labels_ptr + offs_m, mask=row_ok, other=0).to(tl.int64)

    run_max, run_sum, run_sq, logit_sum = row_sweep(row_base, row_ok, V, inv_temp, softcap, HAS_SOFTCAP, HAS_SQ,
                                                    BLOCK_M, BLOCK_V)
    lse = run_max + tl.log(run_sum)
    if PARTIAL:
        part = part_ptr + offs_m  # row k of the packed [k, M] buffer is part + k * M
        tl.store(part, lse, mask=row_ok)
        tl.store(part + 2 * M, logit_sum, mask=row_ok)
        if HAS_SQ:
            # logsumexp(2z) of the slice; the combined log sum p^2 is its logsumexp over slices - 2 lse.
            tl.store(part + 3 * M, 2.0 * run_max + tl.log(run_sq), mask=row_ok)
        # The label's logit only where this slice holds it: the ranks' targets then add up exactly. The
        # labels are read here, after the loop (the load above is then dead code): held through the loop
        # they made ptxas spill in the fp32 WPO variant on sm_80.
        local = tl.load(labels_ptr + offs_m, mask=row_ok, other=0).to(tl.int64) - v_offset
        owned = row_ok & (local >= 0) & (local < V)
        target = tl.load(row_base + local, mask=owned, other=0.0).to(tl.float32)
        target = tl.where(owned, transform(target, inv_temp, softcap, HAS_SOFTCAP), 0.0)
        tl.store(part + M, target, mask=row_ok)
    else:
        target = tl.load(row_base + labels, mask=row_ok, other=0.0).to(tl.float32)
        store_stats(target, lse, run_sum, run_sq, logit_sum, offs_m, row_ok, seq_ptr, lse_ptr, logp_ptr,
                    seq_logp_ptr, seq_logit_ptr, sq_ptr, seq_sq_ptr, inv_temp, softcap, HAS_SOFTCAP, HAS_SEQ,
                    HAS_SQ)


@triton.jit
def row_sweep(row_base, row_ok, V, inv_temp, softcap, HAS_SOFTCAP: tl.constexpr, HAS_SQ: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr):
    """One read of a block of rows (row_base: [BLOCK_M] row pointers): (running max, sum of exp relative
    to it, the same of exp^2 with HAS_SQ, sum of the transformed logits), each [BLOCK_M] fp32."""
    run_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_M], tl.float32)
    run_sq = tl.zeros([BLOCK_M], tl.float32)
    logit_sum = tl.zeros([BLOCK_M], tl.float32)
    cols0 = tl.arange(0, BLOCK_V)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + cols0
        col_ok = cols < V
        mask = row_ok[:, None] & col_ok[None, :]
        z = tl.load(row_base[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        z = transform(z, inv_temp, softcap, HAS_SOFTCAP)
        logit_sum += tl.sum(tl.where(mask, z, 0.0), axis=1)
        # Padding columns are -inf so they vanish from the max and the sum; padded rows keep finite
        # zeros (not -inf) so no inf - inf NaN appears in rows that are never stored.
        z = tl.where(col_ok[None, :], z, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(z, axis=1))
        scale = tl.exp(run_max - new_max)
        e = tl.exp(z - new_max[:, None])
        run_sum = run_sum * scale + tl.sum(e, axis=1)
        if HAS_SQ:
            run_sq = run_sq * (scale * scale) + tl.sum(e * e, axis=1)
        run_max = new_max
    return run_max, run_sum, run_sq, logit_sum


@triton.jit
def store_stats(target, lse, run_sum, run_sq, logit_sum, offs_m, row_ok, seq_ptr, lse_ptr, logp_ptr,
                seq_logp_ptr, seq_logit_ptr, sq_ptr, seq_sq_ptr, inv_temp, softcap,
                HAS_SOFTCAP: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_SQ: tl.constexpr):
    """The per-row results of a row_sweep (target: the label's raw logit, fp32): lse and log p(label),
    with HAS_SQ log sum p^2, and with HAS_SEQ their per-sequence sums and the logit sums, added in."""
    target = transform(target, inv_temp, softcap, HAS_SOFTCAP)
    logp = target - lse
    tl.store(lse_ptr + offs_m, lse, mask=row_ok)
    tl.store(logp_ptr + offs_m, logp, mask=row_ok)
    if HAS_SQ:
        # sum p^2 = sum e^2 / (sum e)^2, both relative to the same running max.
        sq = tl.log(run_sq) - 2.0 * tl.log(run_sum)
        tl.store(sq_ptr + offs_m, sq, mask=row_ok)
    if HAS_SEQ:
        seq = tl.load(seq_ptr + offs_m, mask=row_ok, other=0).to(tl.int64)
        tl.atomic_add(seq_logp_ptr + seq, logp, mask=row_ok)
        tl.atomic_add(seq_logit_ptr + seq, logit_sum, mask=row_ok)
        if HAS_SQ:
            tl.atomic_add(seq_sq_ptr + seq, sq, mask=row_ok)


def fwd_blocks(V: int, interpreted: bool):
    """(BLOCK_M, BLOCK_V, num_warps). On the GPU: one row per program streams the vocabulary in
    wide tiles (the op is bandwidth-bound, 16k+ programs fill the SMs); 2048 x 4 warps reached
    2.43 TB/s on an H100, against 2.99 TB/s for a copy (bench/results, tune). Under the interpreter the cost
    is per program and per loop step, so take many rows and the whole (small) vocabulary at once."""
    if interpreted:
        return 64, min(triton.next_power_of_2(V), 4096), 1, 1
    return 1, 2048, 4, 3


def logprob_forward(z, labels, *, row_idx=None, seq_ids=None, seq_logp=None, seq_logit=None,
                    temperature=1.0, softcap=None, interpreted=False, log_sum_sq=None, seq_sq=None,
                    partials=None, v_offset=0):
    """z: [rows, V] logits (any float dtype, last dim contiguous). labels/seq_ids: [M] for the M rows
    processed (row_idx maps them to rows of z; None means the first M rows). seq_logp / seq_logit:
    fp32 [S] accumulators, added into. log_sum_sq: optional fp32 [M] output of log sum_v p_v^2;
    seq_sq: optional fp32 [S] accumulator of it (with seq_ids); neither with row_idx.
    Returns (lse [M], logp [M]) in fp32.
    partials: a contiguous fp32 [k, M] buffer (k = 3, or 4 for the WPO statistic) for the PARTIAL mode
    of the module docstring, z being the vocabulary slice that starts at token v_offset; it is filled
    instead, and the returned lse / logp are left unwritten (no row_idx, seq_ids or sq outputs then)."""
    M = labels.numel()
    V = z.shape[1]
    lse = torch.empty(M, device=z.device, dtype=torch.float32)
    logp = torch.empty_like(lse)
    has_sq = log_sum_sq is not None or seq_sq is not None
    if has_sq and row_idx is not None:
        raise ValueError("log_sum_sq / seq_sq are computed on compacted rows only (row_idx=None)")
    partial = partials is not None
    if partial:
        if has_sq or row_idx is not None or seq_ids is not None:
            raise ValueError("partials are written for compacted rows, without sequence sums or sq outputs")
        has_sq = partials.shape[0] == 4
    if M == 0:
        return lse, logp
    if has_sq and log_sum_sq is None:
        log_sum_sq = torch.empty_like(lse)
    BLOCK_M, BLOCK_V, warps, stages = fwd_blocks(V, interpreted)
    has_seq = seq_ids is not None
    grid = (triton.cdiv(M, BLOCK_M),)
    logprob_fwd_kernel[grid](
        z, z.stride(0), row_idx if row_idx is not None else labels, labels,
        seq_ids if has_seq else labels,
        lse, logp, seq_logp if has_seq else lse, seq_logit if has_seq else lse,
        log_sum_sq if has_sq else lse, seq_sq if has_sq and has_seq else lse, partials if partial else lse,
        M, V, v_offset, 1.0 / temperature, 1.0 if softcap is None else float(softcap),
        HAS_ROW_IDX=row_idx is not None, HAS_SOFTCAP=softcap is not None, HAS_SEQ=has_seq, HAS_SQ=has_sq,
        PARTIAL=partial, BLOCK_M=BLOCK_M, BLOCK_V=BLOCK_V, num_warps=warps, num_stages=stages,
    )
    return lse, logp


def _compile_specs():
    """Every variant the GPU launcher can produce, for ahead-of-time compilation checks (sm_80/sm_90)."""
    BLOCK_M, BLOCK_V, warps, stages = fwd_blocks(1 << 17, interpreted=False)
    specs = []
    for zt in ("bf16", "fp16", "fp32"):
        for has_row_idx in (False, True):
            for has_softcap in (False, True):
                for has_seq in (False, True):
                    # The WPO statistic is computed on compacted rows only (the launcher refuses row_idx);
                    # so are the vocabulary-parallel partials, which have no sequence sums either.
                    for has_sq in (False,) if has_row_idx else (False, True):
                        for partial in (False, True) if not (has_row_idx or has_seq) else (False,):
                            specs.append(_spec(zt, has_row_idx, has_softcap, has_seq, has_sq, partial,
                                               BLOCK_M, BLOCK_V, warps, stages))
    return specs


def _spec(zt, has_row_idx, has_softcap, has_seq, has_sq, partial, BLOCK_M, BLOCK_V, warps, stages):
    return {
        "fn": logprob_fwd_kernel,
        "name": f"logprob_fwd[{zt},row_idx={has_row_idx},softcap={has_softcap},seq={has_seq},sq={has_sq}"
                + (",partial]" if partial else "]"),
        "signature": {
            "z_ptr": f"*{zt}", "stride_z": "i32", "row_idx_ptr": "*i64", "labels_ptr": "*i64",
            "seq_ptr": "*i64", "lse_ptr": "*fp32", "logp_ptr": "*fp32", "seq_logp_ptr": "*fp32",
            "seq_logit_ptr": "*fp32", "sq_ptr": "*fp32", "seq_sq_ptr": "*fp32", "part_ptr": "*fp32", "M": "i32",
            "V": "i32", "v_offset": "i32", "inv_temp": "fp32", "softcap": "fp32", "HAS_ROW_IDX": "constexpr",
            "HAS_SOFTCAP": "constexpr", "HAS_SEQ": "constexpr", "HAS_SQ": "constexpr", "PARTIAL": "constexpr",
            "BLOCK_M": "constexpr", "BLOCK_V": "constexpr",
        },
        "constexprs": {"HAS_ROW_IDX": has_row_idx, "HAS_SOFTCAP": has_softcap, "HAS_SEQ": has_seq,
                       "HAS_SQ": has_sq, "PARTIAL": partial, "BLOCK_M": BLOCK_M, "BLOCK_V": BLOCK_V},
        "num_warps": warps, "num_stages": stages,
    }


COMPILE_SPECS = _compile_specs()
