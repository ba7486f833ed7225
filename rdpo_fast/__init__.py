"""rdpo_fast: Triton kernels for DPO-family preference training (fused log-probs without N x V logits,
per-sequence reductions, the generalized DPO head) and the pipelines built on them."""
from .fused_loss import FusedLinearPreferenceLoss
from .losses import FusedLinearCPOLoss, FusedLinearKTOLoss, FusedLinearORPOLoss, FusedLinearSimPOLoss
from .ops import linear_logprobs, logprobs, sequence_logprobs
from .preference import LOSS_TYPES, preference_loss

__version__ = "0.1.0"

__all__ = ["FusedLinearCPOLoss", "FusedLinearKTOLoss", "FusedLinearORPOLoss", "FusedLinearPreferenceLoss",
           "FusedLinearSimPOLoss", "LOSS_TYPES", "linear_logprobs", "logprobs", "preference_loss", "sequence_logprobs"]
