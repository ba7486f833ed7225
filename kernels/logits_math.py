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
