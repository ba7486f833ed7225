"""In-place scaling of a gradient buffer by a scalar that lives on the device: x *= s, with s read by the
kernel itself, so the host never waits to learn it. The fused losses make their gradients in forward
and scale them by the upstream gradient in backward; when s is exactly 1 (the usual loss.backward())
every program returns after reading s, and the launch costs no pass over the [V, H] gradient.

The product is formed as torch forms `x * s.to(x.dtype)`: s rounded to x's dtype, the product in fp32,
rounded once to x's dtype (round to nearest even), so the result is bit-identical to that expression.
The grid is capped and the programs stride over the buffer: an early return then costs at most 2048
programs, not one per block of a 10^9-element gradient.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _to_f32(v):
    # bf16 widened by its bits (exact): the interpreter's own bf16 conversions mishandle subnormals.
    if v.dtype == tl.bfloat16:
        return (v.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        return v.to(tl.float32)


@triton.jit
def _from_f32(v, DTYPE: tl.constexpr):
    # fp32 -> DTYPE rounded to nearest even, as torch rounds. For bf16 by the bits, as torch's CPU
    # conversion does it (NaN kept a NaN): the interpreter's own conversion truncates, or rounds ties
    # away from zero, and compiled code then gives the same bits as the interpreter.
    if DTYPE == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        bits = tl.where(v != v, 0x7FC0, bits)
        return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return v.to(DTYPE)


@triton.jit
def grad_scale_kernel(x_ptr, s_ptr, n, BLOCK: tl.constexpr):
    s = tl.load(s_ptr)
    if s != 1.0:
        s_x = _to_f32(_from_f32(s, x_ptr.dtype.element_ty))
        step = tl.num_programs(0).to(tl.int64) * BLOCK
        for start in range(tl.program_id(0).to(tl.int64) * BLOCK, n, step):
            offs = start + tl.arange(0, BLOCK)
            ok = offs < n
            x = _to_f32(tl.load(x_ptr + offs, mask=ok, other=0.0))
            tl.store(x_ptr + offs, _from_f32(x * s_x, x_ptr.dtype.element_ty), mask=ok)


def scale_blocks(interpreted: bool) -> tuple[int, int, int]:
    """(BLOCK, most programs, num_warps): the interpreter pays per program and loop step, not per element."""
    if interpreted:
        return 1 << 16, 2, 1
    return 2048, 2048, 4


def grad_scale(x: torch.Tensor, s: torch.Tensor, *, interpreted: bool = False) -> torch.Tensor:
    """x *= s in place. x: a contiguous float tensor; s: a one-element fp32 tensor on x's device."""
    n = x.numel()
    if n == 0:
        return x
    BLOCK, most, warps = scale_blocks(interpreted)
    grid = (min(triton.cdiv(n, BLOCK), most),)
    grad_scale_kernel[grid](x, s, n, BLOCK=BLOCK, num_warps=warps)
    return x


COMPILE_SPECS = [
    {"fn": grad_scale_kernel, "name": f"grad_scale[{dt}]",
     "signature": {"x_ptr": f"*{dt}", "s_ptr": "*fp32", "n": "i64", "BLOCK": "constexpr"},
     "constexprs": {"BLOCK": scale_blocks(False)[0]}, "num_warps": scale_blocks(False)[2]}
    for dt in ("bf16", "fp16", "fp32")
]
