"""Backward epilogue: turns logits into dZ = g * (onehot(label) - softmax(z)) * dz/dlogit, where g is
each row's upstream gradient and the row's logsumexp is already known. Writes in place when the output
is the logits workspace itself (each element is read before it is written, by the same program), or
into another buffer. The block may be a vocabulary slice: its column j is vocabulary entry v_offset + j."""
import triton
import triton.language as tl

from .logits_math import grad_tile


@triton.jit
def logprob_bwd_kernel(
    z_ptr, stride_z, out_ptr, stride_out, row_idx_ptr, labels_ptr, lse_ptr, g_ptr,
    M, V, v_offset, inv_temp, softcap,
    HAS_ROW_IDX: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < M
    if HAS_ROW_IDX:
        rows = tl.load(row_idx_ptr + offs_m, mask=row_ok, other=0).to(tl.int64)
    else:
        rows = offs_m.to(tl.int64)
    z_base = z_ptr + rows * stride_z
    out_base = out_ptr + rows * stride_out
    labels = tl.load(labels_ptr + offs_m, mask=row_ok, other=0).to(tl.int64) - v_offset
    lse = tl.load(lse_ptr + offs_m, mask=row_ok, other=0.0)
    g = tl.load(g_ptr + offs_m, mask=row_ok, other=0.0)
    cols0 = tl.arange(0, BLOCK_V)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + cols0
        mask = row_ok[:, None] & (cols < V)[None, :]
        raw = tl.load(z_base[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dz = grad_tile(raw, cols, labels, lse, g, inv_temp, softcap, HAS_SOFTCAP)
        tl.store(out_base[:, None] + cols[None, :], dz.to(out_ptr.dtype.element_ty), mask=mask)


def bwd_blocks(V: int, interpreted: bool):
    if interpreted:
        return 64, min(triton.next_power_of_2(V), 4096), 1, 1
    return 1, 2048, 8, 3


def logprob_backward(z, labels, lse, g, *, out=None, row_idx=None, v_offset=0, temperature=1.0,
                     softcap=None, interpreted=False):
    """dZ for the M rows given (see logprob_forward for row_idx). out=None writes in place into z.
    z may hold the vocabulary slice starting at v_offset; lse is over the whole vocabulary."""
    out = z if out is None else out
    M = labels.numel()
    if M == 0:
        return out
    V = z.shape[1]
    BLOCK_M, BLOCK_V, warps, stages = bwd_blocks(V, interpreted)
    grid = (triton.cdiv(M, BLOCK_M),)
    logprob_bwd_kernel[grid](
        z, z.stride(0), out, out.stride(0), row_idx if row_idx is not None else labels, labels, lse, g,
        M, V, v_offset, 1.0 / temperature, 1.0 if softcap is None else float(softcap),
        HAS_ROW_IDX=row_idx is not None, HAS_SOFTCAP=softcap is not None,
        BLOCK_M=BLOCK_M, BLOCK_V=BLOCK_V, num_warps=warps, num_stages=stages,
    )
    return out


def _compile_specs():
    """Every variant the GPU launcher can produce, for ahead-of-time compilation checks (sm_80/sm_90)."""
    BLOCK_M, BLOCK_V, warps, stages = bwd_blocks(1 << 17, interpreted=False)
    specs = []
    for zt in ("bf16", "fp16", "fp32"):
        for has_row_idx in (False, True):
            for has_softcap in (False, True):
                specs.append({
                    "fn": logprob_bwd_kernel,
                    "name": f"logprob_bwd[{zt},row_idx={has_row_idx},softcap={has_softcap}]",
                    "signature": {
                        "z_ptr": f"*{zt}", "stride_z": "i32", "out_ptr": f"*{zt}", "stride_out": "i32",
                        "row_idx_ptr": "*i64", "labels_ptr": "*i64", "lse_ptr": "*fp32", "g_ptr": "*fp32",
                        "M": "i32", "V": "i32", "v_offset": "i32", "inv_temp": "fp32", "softcap": "fp32",
                        "HAS_ROW_IDX": "constexpr", "HAS_SOFTCAP": "constexpr",
                        "BLOCK_M": "constexpr", "BLOCK_V": "constexpr",
                    },
                    "constexprs": {"HAS_ROW_IDX": has_row_idx, "HAS_SOFTCAP": has_softcap,
                                   "BLOCK_M": BLOCK_M, "BLOCK_V": BLOCK_V},
                    "num_warps": warps, "num_stages": stages,
                })
    return specs


COMPILE_SPECS = _compile_specs()
