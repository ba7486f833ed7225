"""The preference losses: the loss table (table.py), the generalized DPO head (head.py), the fused
lm_head + log-prob + head loss (fused.py: the Module and its checks; fused_pass.py: the chunk schedule;
pair_pass.py: the autograd op over pairs) and TRL's metric names for its outputs (metrics.py), and the
named drop-ins for Liger's chunked losses (orpo.py, cpo.py, simpo.py on dropin.py; kto.py, unpaired),
with the same constructors, defaults, forward signatures and return layouts as liger_kernel 0.8.5's."""
from .cpo import FusedLinearCPOLoss
from .fused import FusedLinearPreferenceLoss
from .head import LOSS_TYPES, preference_loss
from .kto import FusedLinearKTOLoss, kto_kl_baseline
from .orpo import FusedLinearORPOLoss
from .simpo import FusedLinearSimPOLoss

__all__ = ["FusedLinearCPOLoss", "FusedLinearKTOLoss", "FusedLinearORPOLoss", "FusedLinearPreferenceLoss",
           "FusedLinearSimPOLoss", "LOSS_TYPES", "kto_kl_baseline", "preference_loss"]
