"""CPO (Xu et al. 2024) as Liger's LigerFusedLinearCPOLoss: reference-free sigmoid of beta (c - r)
with label smoothing (cDPO form), plus alpha times the chosen NLL; on the fused head's 'cpo' loss type."""
from __future__ import annotations

import torch

from .dropin import LigerDropIn


class FusedLinearCPOLoss(LigerDropIn):
    """Drop-in for liger_kernel.chunked_loss.LigerFusedLinearCPOLoss: same constructor (defaults
    included), forward(lin_weight, _input, target, bias=None) and return (loss, (chosen_logps,
    rejected_logps, chosen_logits_mean, rejected_logits_mean, nll_loss, chosen_rewards, rejected_rewards)).
    alpha with compute_nll_loss=False is refused (Liger multiplies it by a zero NLL). logits/* means are
    over completion tokens. `compiled`, `chunk_size`: accepted, no effect."""

    LIGER_ARGS = ("ignore_index", "beta", "alpha", "label_smoothing", "compute_nll_loss", "compiled",
                  "average_log_prob", "chunk_size")

    def __init__(self, ignore_index: int = -100, beta: float = 0.1, alpha: float = 1.0, label_smoothing: float = 0.0,
                 compute_nll_loss: bool = True, compiled: bool = True, average_log_prob: bool = False,
                 chunk_size: int = 1, *, workspace_budget=None, dw_accumulation="fp32"):
        super().__init__()
        self._setup(dict(ignore_index=ignore_index, beta=beta, alpha=alpha, label_smoothing=label_smoothing,
                         compute_nll_loss=compute_nll_loss, compiled=compiled, average_log_prob=average_log_prob,
                         chunk_size=chunk_size, workspace_budget=workspace_budget, dw_accumulation=dw_accumulation))

    def settings(self) -> dict:
        return dict(loss_type="cpo", use_ref_model=False, ignore_index=self.ignore_index, beta=self.beta,
                    alpha=self.alpha, label_smoothing=self.label_smoothing, compute_nll_loss=self.compute_nll_loss,
                    average_log_prob=self.average_log_prob, workspace_budget=self.workspace_budget,
                    dw_accumulation=self.dw_accumulation)

    def forward(self, lin_weight: torch.Tensor, _input: torch.Tensor, target: torch.Tensor,
                bias: torch.Tensor | None = None) -> tuple:
        return self._inner()(lin_weight, _input, target, bias)
