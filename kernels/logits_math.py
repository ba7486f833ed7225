"""Device helpers shared by the log-prob kernels: the logit transform (softcap, then temperature) and
its derivative. Written with tl.exp only, because libdevice (tanh) does not run under the interpreter."""
import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    # 1 - 2 / (exp(2x) + 1) saturates cleanly at +-1: exp overflow gives inf -> 1, underflow -> -1.
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def transform(z, inv_temp, softcap, HAS_SOFTCAP: tl.constexpr):
    """Raw fp32 logits -> the logits the softmax sees."""
    if HAS_SOFTCAP:
        z = softcap * _tanh(z / softcap)
    return z * inv_temp


@triton.jit
def transform_grad(z, inv_temp, softcap, HAS_SOFTCAP: tl.constexpr):
    """d transform(z) / dz for raw fp32 logits z."""
    if HAS_SOFTCAP:
        t = _tanh(z / softcap)
        return inv_temp * (1.0 - t * t)
    return tl.full(z.shape, 1.0, tl.float32) * inv_temp


@triton.jit
def grad_tile(raw, cols, labels, lse, g, inv_temp, softcap, HAS_SOFTCAP: tl.constexpr):
    """g (onehot(label) - softmax) d transform / dz of a [BLOCK_M, BLOCK_V] tile of raw fp32 logits: cols
    are the tile's columns, labels (int64 [BLOCK_M]) in the same column numbering, lse and g per row. With
    g = 1 it is the one-pass epilogue's S, which the gradient pass scales by g row by row instead."""
    p = tl.exp(transform(raw, inv_temp, softcap, HAS_SOFTCAP) - lse[:, None])
    onehot = (cols[None, :] == labels[:, None]).to(tl.float32)
    return g[:, None] * (onehot - p) * transform_grad(raw, inv_temp, softcap, HAS_SOFTCAP)
