"""ORPO (Hong et al. 2024) as Liger's LigerFusedLinearORPOLoss: the odds-ratio term of the
length-averaged log-probs, -beta log sigmoid(log odds(chosen) - log odds(rejected)) per pair, plus the
chosen NLL (alpha 1), reference-free; on the fused head's 'orpo' loss type."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .dropin import LigerDropIn, averaged, check_nll_target


class FusedLinearORPOLoss(LigerDropIn):
    """Drop-in for liger_kernel.chunked_loss.LigerFusedLinearORPOLoss: same constructor (defaults
    included), forward(lin_weight, _input, target, bias=None, nll_target=None) and return:
    (loss, (chosen_logps, rejected_logps, chosen_logits_mean, rejected_logits_mean, nll_loss,
    chosen_rewards, rejected_rewards, log_odds_ratio, log_odds_chosen)), log-probs length-averaged.
    logits/* means are over completion tokens (TRL's definition; Liger averages every padded position).
    `compiled`, `chunk_size`: accepted, no effect."""

    LIGER_ARGS = ("ignore_index", "beta", "compute_nll_loss", "compiled", "chunk_size")

    def __init__(self, ignore_index: int = -100, beta: float = 0.1, compute_nll_loss: bool = True,
                 compiled: bool = True, chunk_size: int = 1, *, workspace_budget=None, dw_accumulation="fp32"):
        super().__init__()
        self._setup(dict(ignore_index=ignore_index, beta=beta, compute_nll_loss=compute_nll_loss,
                         compiled=compiled, chunk_size=chunk_size, workspace_budget=workspace_budget,
                         dw_accumulation=dw_accumulation))

    def settings(self) -> dict:
        return dict(loss_type="orpo", use_ref_model=False, ignore_index=self.ignore_index, beta=self.beta,
                    compute_nll_loss=self.compute_nll_loss, workspace_budget=self.workspace_budget,
                    dw_accumulation=self.dw_accumulation)

    def forward(self, lin_weight: torch.Tensor, _input: torch.Tensor, target: torch.Tensor,
                bias: torch.Tensor | None = None, nll_target: torch.Tensor | None = None) -> tuple:
        inner = self._inner()
        check_nll_target(nll_target, target, self.ignore_index)
        loss, aux = inner(lin_weight, _input, target, bias)
        B = target.shape[0] // 2
        chosen = averaged(aux[0], target, self.ignore_index, slice(0, B))
        rejected = averaged(aux[1], target, self.ignore_index, slice(B, None))
        with torch.no_grad():
            a, b = chosen.double(), rejected.double()
            log_odds = (a - b) - (torch.log(-torch.expm1(a)) - torch.log(-torch.expm1(b)))
            log_odds_ratio = F.logsigmoid(log_odds).mean().float()
            log_odds_chosen = log_odds.mean().float()
        return loss, (chosen, rejected, *aux[2:], log_odds_ratio, log_odds_chosen)
