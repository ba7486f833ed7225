"""rdpo_fast: Triton kernels for DPO-family preference training (fused log-probs without N x V logits,
per-sequence reductions, the generalized DPO head) and the pipelines built on them."""
from .ops import linear_logprobs, logprobs, sequence_logprobs

__version__ = "0.1.0"

__all__ = ["linear_logprobs", "logprobs", "sequence_logprobs"]
