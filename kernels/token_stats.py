"""Per-token statistics TRL logs besides the log-probs, from a block of ready logits whose logsumexp is
known: the entropy of the (transformed) softmax, H = lse - sum_v p_v z_v, and whether the label is the
argmax (ties go to the lowest token id, as torch.argmax decides them). One read of the block; used by the
fused preference loss when the caller asks for TRL's `entropy` and `mean_token_accuracy` metrics.
"""
import torch
import triton
import triton.language as tl

from .logits_math import transform


@triton.jit
def token_stats_kernel(
    z_ptr, stride_z, labels_ptr, lse_ptr, entropy_ptr, top1_ptr,
    M, V, inv_temp, softcap,
    HAS_SOFTCAP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < M
    row_base = z_ptr + offs_m.to(tl.int64) * stride_z
    labels = tl.load(labels_ptr + offs_m, mask=row_ok, other=0).to(tl.int64)
    lse = tl.load(lse_ptr + offs_m, mask=row_ok, other=0.0)

    p_z = tl.zeros([BLOCK_M], tl.float32)
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    before = tl.full([BLOCK_M], float("-inf"), tl.float32)  # max over token ids below the label
    cols0 = tl.arange(0, BLOCK_V)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + cols0
        mask = row_ok[:, None] & (cols < V)[None, :]
        z = tl.load(row_base[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        z = transform(z, inv_temp, softcap, HAS_SOFTCAP)
        p = tl.where(mask, tl.exp(z - lse[:, None]), 0.0)
        p_z += tl.sum(p * tl.where(mask, z, 0.0), axis=1)
        zm = tl.where(mask, z, float("-inf"))
        row_max = tl.maximum(row_max, tl.max(zm, axis=1))
        before = tl.maximum(before, tl.max(tl.where(cols[None, :] < labels[:, None], zm, float("-inf")), axis=1))
    target = tl.load(row_base + labels, mask=row_ok, other=0.0).to(tl.float32)
    target = transform(target, inv_temp, softcap, HAS_SOFTCAP)
    top1 = ((target >= row_max) & (target > before)).to(tl.float32)
    tl.store(entropy_ptr + offs_m, lse - p_z, mask=row_ok)
    tl.store(top1_ptr + offs_m, top1, mask=row_ok)


def stats_blocks(V: int, interpreted: bool):
    """(BLOCK_M, BLOCK_V, num_warps, num_stages): the forward epilogue's shapes (same access pattern)."""
    if interpreted:
        return 64, min(triton.next_power_of_2(V), 4096), 1, 1
    return 1, 2048, 4, 3


def token_stats(z, labels, lse, *, temperature=1.0, softcap=None, interpreted=False):
    """z: [rows, V] logits (first M rows used, M = labels.numel()); lse: [M] fp32 logsumexp of the
    transformed rows. Returns (entropy [M] fp32, top1 [M] fp32 in {0, 1})."""
    M = labels.numel()
    V = z.shape[1]
    entropy = torch.empty(M, device=z.device, dtype=torch.float32)
    top1 = torch.empty_like(entropy)
    if M == 0:
        return entropy, top1
    BLOCK_M, BLOCK_V, warps, stages = stats_blocks(V, interpreted)
    token_stats_kernel[(triton.cdiv(M, BLOCK_M),)](
        z, z.stride(0), labels, lse, entropy, top1, M, V, 1.0 / temperature,
        1.0 if softcap is None else float(softcap), HAS_SOFTCAP=softcap is not None,
        BLOCK_M=BLOCK_M, BLOCK_V=BLOCK_V, num_warps=warps, num_stages=stages)
    return entropy, top1


def _compile_specs():
    BLOCK_M, BLOCK_V, warps, stages = stats_blocks(1 << 17, interpreted=False)
    specs = []
    for zt in ("bf16", "fp16", "fp32"):
        for has_softcap in (False, True):
            specs.append({
                "fn": token_stats_kernel,
                "name": f"token_stats[{zt},softcap={has_softcap}]",
                "signature": {
                    "z_ptr": f"*{zt}", "stride_z": "i32", "labels_ptr": "*i64", "lse_ptr": "*fp32",
                    "entropy_ptr": "*fp32", "top1_ptr": "*fp32", "M": "i32", "V": "i32", "inv_temp": "fp32",
                    "softcap": "fp32", "HAS_SOFTCAP": "constexpr", "BLOCK_M": "constexpr", "BLOCK_V": "constexpr",
                },
                "constexprs": {"HAS_SOFTCAP": has_softcap, "BLOCK_M": BLOCK_M, "BLOCK_V": BLOCK_V},
                "num_warps": warps, "num_stages": stages,
            })
    return specs


COMPILE_SPECS = _compile_specs()
