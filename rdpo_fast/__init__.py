"""rdpo_fast: Triton kernels for DPO-family preference training (fused log-probs without N x V logits,
per-sequence reductions, the generalized DPO head) and the pipelines built on them.

The public API (SPEC section 3) is re-exported here; the README's "Code map" says where each layer lives."""
from . import compat
from .losses import (
                     LOSS_TYPES,
                     FusedLinearCPOLoss,
                     FusedLinearKTOLoss,
                     FusedLinearORPOLoss,
                     FusedLinearPreferenceLoss,
                     FusedLinearSimPOLoss,
                     preference_loss,
)
from .ops import linear_logprobs, logprobs, sequence_logprobs

compat.install()  # the flat layout's module paths (rdpo_fast.fused_loss, rdpo_fast.modeling, ...) still import

__version__ = "0.1.0"

__all__ = ["FusedLinearCPOLoss", "FusedLinearKTOLoss", "FusedLinearORPOLoss", "FusedLinearPreferenceLoss",
           "FusedLinearSimPOLoss", "LOSS_TYPES", "linear_logprobs", "logprobs", "preference_loss", "sequence_logprobs"]
