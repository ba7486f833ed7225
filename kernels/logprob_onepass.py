"""One-pass epilogue (FusedLinearPreferenceLoss(epilogue="one_pass")): the forward epilogue's statistics
of a block of rows (logprob_forward's row_sweep and store_stats: logsumexp, log p(label), per-sequence
sums, optionally log sum p^2), then a second sweep over the same rows that overwrites the logits in
place with

    S = (onehot(label) - softmax) * d transform / dz        (with no softcap: (onehot - p) / T)

which is dZ with the upstream gradient g left out. The gradient pass then never reads the logits again:
dZ = diag(g) S, so g becomes a row scale of the dX GEMM's output and of the hidden rows fed to the dW
GEMM (rdpo_fast.losses.fused_pass). The onehot stays inside S on purpose: stored as p alone, the label
column's 1 - p would be formed after the rounding of p to the logits dtype, which in bf16 loses all of it
for a confident token (p = 0.999 is stored to within 2e-3).

The second sweep saves HBM traffic only if it finds the rows still in L2 (one row of a 128k bf16
vocabulary is 256 KiB). So the grid is persistent: a few programs take the row blocks in turn, and
onepass_programs sizes it so that the rows in flight fit in half the L2. The label's logit is read
before the first sweep: the second one overwrites it, and the first sweep's cross-warp reductions order
that read before any warp's store.
"""
import itertools

import torch
import triton
import triton.language as tl

from .logits_math import grad_tile
from .logprob_forward import row_sweep, store_stats


@triton.jit
def logprob_onepass_kernel(
    z_ptr, stride_z, labels_ptr, seq_ptr,
    lse_ptr, logp_ptr, seq_logp_ptr, seq_logit_ptr, sq_ptr, seq_sq_ptr,
    M, V, inv_temp, softcap,
    HAS_SOFTCAP: tl.constexpr, HAS_SQ: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr,
):
    cols0 = tl.arange(0, BLOCK_V)
    for blk in range(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.num_programs(0)):
        offs_m = blk * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = offs_m < M
        row_base = z_ptr + offs_m.to(tl.int64) * stride_z
        labels = tl.load(labels_ptr + offs_m, mask=row_ok, other=0).to(tl.int64)
        target = tl.load(row_base + labels, mask=row_ok, other=0.0).to(tl.float32)
        run_max, run_sum, run_sq, logit_sum = row_sweep(row_base, row_ok, V, inv_temp, softcap, HAS_SOFTCAP,
                                                        HAS_SQ, BLOCK_M, BLOCK_V)
        lse = run_max + tl.log(run_sum)
        store_stats(target, lse, run_sum, run_sq, logit_sum, offs_m, row_ok, seq_ptr, lse_ptr, logp_ptr,
                    seq_logp_ptr, seq_logit_ptr, sq_ptr, seq_sq_ptr, inv_temp, softcap, HAS_SOFTCAP, True, HAS_SQ)
        ones = tl.full([BLOCK_M], 1.0, tl.float32)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + cols0
            mask = row_ok[:, None] & (cols < V)[None, :]
            ptrs = row_base[:, None] + cols[None, :]
            raw = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
            s = grad_tile(raw, cols, labels, lse, ones, inv_temp, softcap, HAS_SOFTCAP)
            tl.store(ptrs, s.to(z_ptr.dtype.element_ty), mask=mask)


def onepass_blocks(V: int, interpreted: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_V, num_warps, num_stages). On the GPU one row per step, in the widest tiles the
    two-pass kernels' H100 sweep found as fast as any (bench/results/*-tune-epilogue.json): with about one
    program per SM, each program must keep more bytes in flight than the two-pass kernels' many small
    ones. Unmeasured for this kernel: bench/tune_epilogue.py sweeps it. Under the interpreter: many rows
    and the whole (small) vocabulary per step."""
    if interpreted:
        return 64, min(triton.next_power_of_2(V), 4096), 1, 1
    return 1, 4096, 8, 3


# Share of L2 the rows in flight may fill: the rest holds the GEMMs' and atomics' lines.
L2_SHARE = 0.5


def onepass_programs(n_blocks: int, row_bytes: int, device: torch.device) -> int:
    """Programs of the persistent grid: as many as there are SMs, more while the rows in flight
    (programs x row_bytes) still fit in L2_SHARE of the L2, never more than the row blocks. At V = 128256
    in bf16 (256 KiB a row) an H100's 50 MiB L2 gives 100 rows: the grid is then one program per SM."""
    props = torch.cuda.get_device_properties(device)
    l2 = getattr(props, "L2_cache_size", 0) or 50 * 2**20
    return max(1, min(n_blocks, max(props.multi_processor_count, int(l2 * L2_SHARE) // max(row_bytes, 1))))


def logprob_onepass(z: torch.Tensor, labels: torch.Tensor, *, seq_ids: torch.Tensor, seq_logp: torch.Tensor,
                    seq_logit: torch.Tensor, temperature: float = 1.0, softcap: float | None = None,
                    interpreted: bool = False, log_sum_sq: torch.Tensor | None = None,
                    seq_sq: torch.Tensor | None = None, programs: int | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """logprob_forward's outputs and accumulations for the first M = labels.numel() rows of z (compacted
    rows, with per-sequence sums: seq_ids [M], seq_logp / seq_logit fp32 accumulators; log_sum_sq /
    seq_sq as there), then S written over those rows in place (module docstring). Returns (lse [M],
    logp [M]) in fp32. programs: the persistent grid's size (None: onepass_programs)."""
    M, V = labels.numel(), z.shape[1]
    lse, logp = torch.empty(2, M, device=z.device, dtype=torch.float32)  # two rows of one allocation
    if M == 0:
        return lse, logp
    has_sq = log_sum_sq is not None or seq_sq is not None
    if has_sq and log_sum_sq is None:
        log_sum_sq = torch.empty_like(lse)
    BLOCK_M, BLOCK_V, warps, stages = onepass_blocks(V, interpreted)
    n_blocks = triton.cdiv(M, BLOCK_M)
    if programs is None:
        programs = n_blocks if interpreted else onepass_programs(n_blocks, BLOCK_M * V * z.element_size(), z.device)
    logprob_onepass_kernel[(programs,)](
        z, z.stride(0), labels, seq_ids, lse, logp, seq_logp, seq_logit,
        log_sum_sq if has_sq else lse, seq_sq if seq_sq is not None else lse,
        M, V, 1.0 / temperature, 1.0 if softcap is None else float(softcap),
        HAS_SOFTCAP=softcap is not None, HAS_SQ=has_sq, BLOCK_M=BLOCK_M, BLOCK_V=BLOCK_V,
        num_warps=warps, num_stages=stages,
    )
    return lse, logp


def _compile_specs():
    """Every variant the GPU launcher can produce, for ahead-of-time compilation checks (sm_80/sm_90)."""
    BLOCK_M, BLOCK_V, warps, stages = onepass_blocks(1 << 17, interpreted=False)
    # Argument types by name; every other pointer is an fp32 output or accumulator.
    types = {"stride_z": "i32", "M": "i32", "V": "i32", "inv_temp": "fp32", "softcap": "fp32",
             "labels_ptr": "*i64", "seq_ptr": "*i64"}
    specs = []
    for zt, has_softcap, has_sq in itertools.product(("bf16", "fp16", "fp32"), (False, True), (False, True)):
        consts = {"HAS_SOFTCAP": has_softcap, "HAS_SQ": has_sq, "BLOCK_M": BLOCK_M, "BLOCK_V": BLOCK_V}
        typed = {**types, "z_ptr": f"*{zt}"}
        specs.append({"fn": logprob_onepass_kernel, "name": f"logprob_onepass[{zt},softcap={has_softcap},sq={has_sq}]",
                      "signature": {n: "constexpr" if n in consts else typed.get(n, "*fp32")
                                    for n in logprob_onepass_kernel.arg_names},
                      "constexprs": consts, "num_warps": warps, "num_stages": stages})
    return specs


COMPILE_SPECS = _compile_specs()
