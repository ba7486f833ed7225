"""Named drop-ins for Liger's chunked losses, on rdpo_fast's fused log-prob path: the same
constructors, defaults, forward signatures and return layouts as liger_kernel.chunked_loss's
LigerFusedLinearORPOLoss, LigerFusedLinearCPOLoss, LigerFusedLinearSimPOLoss and LigerFusedLinearKTOLoss
(0.8.5). The paired ones are FusedLinearPreferenceLoss with Liger's settings; KTO (unpaired) has its own
schedule over whole sequences."""
from .cpo import FusedLinearCPOLoss
from .kto import FusedLinearKTOLoss, kto_kl_baseline
from .orpo import FusedLinearORPOLoss
from .simpo import FusedLinearSimPOLoss

__all__ = ["FusedLinearCPOLoss", "FusedLinearKTOLoss", "FusedLinearORPOLoss", "FusedLinearSimPOLoss",
           "kto_kl_baseline"]
