"""SimPO (Meng et al. 2024) as Liger's LigerFusedLinearSimPOLoss: reference-free sigmoid of
beta (c/|y_w| - r/|y_l|) - gamma with label smoothing, plus alpha times the chosen NLL; Liger's
defaults (gamma 0.5, NLL on); on the fused head's 'simpo' loss type."""
from __future__ import annotations

import torch

from .dropin import LigerDropIn, averaged


class FusedLinearSimPOLoss(LigerDropIn):
    """Drop-in for liger_kernel.chunked_loss.LigerFusedLinearSimPOLoss: same constructor (defaults
    included: gamma=0.5, compute_nll_loss=True), forward(lin_weight, _input, target, bias=None) and
    return (loss, (chosen_logps, rejected_logps, chosen_logits_mean, rejected_logits_mean, nll_loss,
    chosen_rewards, rejected_rewards)), log-probs length-averaged as Liger reports them. alpha with
    compute_nll_loss=False is refused (Liger multiplies it by a zero NLL). logits/* means are over
    completion tokens. `compiled`, `chunk_size`: accepted, no effect."""

    LIGER_ARGS = ("ignore_index", "beta", "alpha", "label_smoothing", "compute_nll_loss", "compiled", "gamma",
                  "chunk_size")

    def __init__(self, ignore_index: int = -100, beta: float = 0.1, alpha: float = 1.0, label_smoothing: float = 0.0,
                 compute_nll_loss: bool = True, compiled: bool = True, gamma: float = 0.5, chunk_size: int = 1, *,
                 workspace_budget=None, dw_accumulation="fp32"):
        super().__init__()
        self._setup(dict(ignore_index=ignore_index, beta=beta, alpha=alpha, label_smoothing=label_smoothing,
                         compute_nll_loss=compute_nll_loss, compiled=compiled, gamma=gamma, chunk_size=chunk_size,
                         workspace_budget=workspace_budget, dw_accumulation=dw_accumulation))

    def settings(self) -> dict:
        # The head divides the token sums by the lengths itself (average_log_prob stays off).
        return dict(loss_type="simpo", use_ref_model=False, ignore_index=self.ignore_index, beta=self.beta,
                    alpha=self.alpha, label_smoothing=self.label_smoothing, compute_nll_loss=self.compute_nll_loss,
                    gamma=self.gamma, workspace_budget=self.workspace_budget, dw_accumulation=self.dw_accumulation)

    def forward(self, lin_weight: torch.Tensor, _input: torch.Tensor, target: torch.Tensor,
                bias: torch.Tensor | None = None) -> tuple:
        loss, aux = self._inner()(lin_weight, _input, target, bias)
        B = target.shape[0] // 2
        chosen = averaged(aux[0], target, self.ignore_index, slice(0, B))
        rejected = averaged(aux[1], target, self.ignore_index, slice(B, None))
        return loss, (chosen, rejected, *aux[2:])
