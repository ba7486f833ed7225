"""TRL's CPOTrainer (trl.experimental.cpo in TRL 1.16) on the fused loss: `FusedCPOTrainer`, for
loss_type "simpo" (SimPO: length-averaged, reference-free, margin simpo_gamma), "sigmoid" and "hinge"
(CPO: reference-free DPO on summed log-probs), with cpo_alpha's NLL term on the chosen tokens.

The same numbers as CPOTrainer for the same batch: loss = mean per-pair loss + cpo_alpha * NLL (mean
over chosen tokens), and its metrics rewards/*, logps/* (length-averaged for simpo), nll_loss and
logits/*. CPOTrainer's logits/* is the mean of the model's logits over every position of the padded
batch (prompt and padding included); without a softcap that mean is linear in the logits, so it is
computed from the hidden states and the column sums of the lm_head weight, exactly and without logits.
With a final-logit softcap it is not linear, and logits/* is not logged (never estimated).

Refused by name: loss_type "ipo" (CPOTrainer logs rewards CPO computes differently from ours; use
FusedDPOTrainer's ipo), AlphaPO's alpha != 0, label_smoothing with hinge, MoE auxiliary losses,
encoder-decoder models. TRL's DPOTrainer 1.16 has no SimPO loss type: SimPO runs here.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # TRL warns that the experimental namespace may change
    from trl.experimental.cpo import CPOTrainer

from rdpo_fast.losses.fused import FusedLinearPreferenceLoss
from rdpo_fast.models import loading as modeling

from .patching import UnsupportedSetting, install_fused_forward, refuse, unwrap

CPO_LOSS_TYPES = {"simpo": "simpo", "sigmoid": "sigmoid", "hinge": "hinge", "ipo": None}


def _refuse(name, value, why):
    refuse("FusedCPOTrainer", name, value, why)


def cpo_loss_options(args: Any) -> dict:
    name = args.loss_type
    if name not in CPO_LOSS_TYPES:
        raise UnsupportedSetting(f"FusedCPOTrainer: unknown loss_type {name!r}")
    if CPO_LOSS_TYPES[name] is None:
        _refuse("loss_type", name, "CPOTrainer's ipo is not fused; use FusedDPOTrainer with loss_type='ipo'")
    if getattr(args, "alpha", 0.0):
        _refuse("alpha", args.alpha, "AlphaPO's reward shaping is not in the fused loss")
    eps = float(args.label_smoothing)
    if eps and name == "hinge":
        _refuse("label_smoothing", eps, "CPOTrainer ignores it with loss_type 'hinge'")
    opts = dict(loss_type=CPO_LOSS_TYPES[name], beta=float(args.beta), label_smoothing=eps, use_ref_model=False,
                autocast="follow")
    if name == "simpo":
        opts["gamma"] = float(args.simpo_gamma)
    if args.cpo_alpha:
        opts.update(compute_nll_loss=True, alpha=float(args.cpo_alpha))
    return opts


class FusedCPOTrainer(CPOTrainer):
    """trl.experimental.cpo.CPOTrainer with rdpo_fast's fused loss (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        given = kwargs.get("args", args[1] if len(args) > 1 else None)
        if given is not None:
            cpo_loss_options(given)
        super().__init__(*args, **kwargs)
        if self.is_encoder_decoder:
            raise UnsupportedSetting("FusedCPOTrainer: encoder-decoder models are not supported")
        if self.aux_loss_enabled:
            _refuse("output_router_logits", True, "the MoE auxiliary loss is not computed on the fused path")
        base = unwrap(self.model)
        self._rdpo_transform = modeling.logit_transform(base)
        self._rdpo_loss = FusedLinearPreferenceLoss(**cpo_loss_options(self.args),
                                                    **self._rdpo_transform.kernel_args())
        self._rdpo_calls = 0

    def get_batch_loss_metrics(self, model: torch.nn.Module, batch: dict, train_eval: str = "train"
                               ) -> tuple[torch.Tensor, dict[str, float]]:
        cb = self.concatenated_inputs(batch, is_encoder_decoder=False, padding_value=self.pad_token_id,
                                      device=self.accelerator.device)
        input_ids, labels = cb["concatenated_input_ids"], cb["concatenated_labels"]
        n_chosen = batch["chosen_labels"].shape[0]
        loss_fn, transform = self._rdpo_loss, self._rdpo_transform
        extra = {}

        def fused(module, hidden, labels_, weight, bias):
            out = loss_fn(weight, hidden[:, :-1], labels_[:, 1:], bias)
            if transform.softcap is None:
                with torch.no_grad():  # mean logit over all positions: linear, so from column sums
                    per_row = hidden.float().sum(1) @ weight.float().sum(0) * transform.scale
                    if bias is not None:
                        per_row = per_row + hidden.shape[1] * bias.float().sum() * transform.scale
                    denom = hidden.shape[1] * weight.shape[0]
                    extra["logits"] = (per_row[:n_chosen].mean() / denom, per_row[n_chosen:].mean() / denom)
            return out

        install_fused_forward(model)
        loss, aux = model(input_ids=input_ids, attention_mask=cb["concatenated_attention_mask"], labels=labels,
                          use_cache=False, rdpo_fused=fused)
        self._rdpo_calls += 1
        chosen_logps, rejected_logps, _, _, nll, _, _ = aux
        if loss_fn.cfg.loss_type == "simpo":  # CPOTrainer's simpo scores length-averaged log-probs
            counts = (labels[:, 1:] != -100).sum(1).float()
            chosen_logps, rejected_logps = chosen_logps / counts[:n_chosen], rejected_logps / counts[n_chosen:]
        chosen_rew, rejected_rew = self.beta * chosen_logps.detach(), self.beta * rejected_logps.detach()
        g = self.accelerator.gather_for_metrics
        prefix = "eval_" if train_eval == "eval" else ""
        metrics = {
            f"{prefix}rewards/chosen": g(chosen_rew).mean().item(),
            f"{prefix}rewards/rejected": g(rejected_rew).mean().item(),
            f"{prefix}rewards/accuracies": g((chosen_rew > rejected_rew).float()).mean().item(),
            f"{prefix}rewards/margins": g(chosen_rew - rejected_rew).mean().item(),
            f"{prefix}logps/rejected": g(rejected_logps.detach()).mean().item(),
            f"{prefix}logps/chosen": g(chosen_logps.detach()).mean().item(),
        }
        if "logits" in extra:
            c, r = extra["logits"]
            metrics[f"{prefix}logits/rejected"] = g(r).mean().item()
            metrics[f"{prefix}logits/chosen"] = g(c).mean().item()
        metrics[f"{prefix}nll_loss"] = g(nll.detach()).mean().item()
        return loss, metrics


__all__ = ["CPO_LOSS_TYPES", "FusedCPOTrainer", "cpo_loss_options"]
