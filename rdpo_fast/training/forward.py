"""One forward of the model being trained: the fused loss the run's settings ask for, and the module
that feeds it the policy's last hidden states and lm_head weight (never logits) with the reference in
whichever form the run has it. The training steps, the held-out evaluation and the reference pass all
run through it."""
from __future__ import annotations

import torch

from rdpo_fast.data.records import Batch, PreferenceData
from rdpo_fast.losses.fused import FusedLinearPreferenceLoss
from rdpo_fast.models import loading as modeling

from .config import TrainConfig


def training_loss(cfg: TrainConfig, model: torch.nn.Module, *, use_ref_model: bool) -> FusedLinearPreferenceLoss:
    """The run's preference loss, under the model's logit transform."""
    return FusedLinearPreferenceLoss(
        loss_type=cfg.loss_type, beta=cfg.beta, label_smoothing=cfg.label_smoothing,
        alpha=cfg.nll_alpha if cfg.nll_alpha > 0 else 1.0, compute_nll_loss=cfg.nll_alpha > 0,
        use_ref_model=use_ref_model, average_log_prob=cfg.average_log_prob, gamma=cfg.gamma, tau=cfg.tau,
        ld_alpha=cfg.ld_alpha, workspace_budget=cfg.workspace_budget(), **modeling.logit_transform(model).kernel_args())


def sequence_scorer(cfg: TrainConfig, model: torch.nn.Module) -> FusedLinearPreferenceLoss:
    """The loss's own sequence log-probs (length-averaged / LD-weighted as configured, under the model's
    logit transform): its aux outputs under no_grad with no reference, so a cached reference matches
    the in-pass one exactly."""
    return FusedLinearPreferenceLoss(loss_type="sigmoid", beta=1.0, use_ref_model=False,
                                     average_log_prob=cfg.average_log_prob, ld_alpha=cfg.ld_alpha,
                                     workspace_budget=cfg.workspace_budget(),
                                     **modeling.logit_transform(model).kernel_args())


class PreferenceStep(torch.nn.Module):
    """Policy forward + fused loss as one module, so DDP and FSDP2 wrap a single forward; inside it the
    FSDP2 root has unsharded the lm_head/embedding weight, so the loss reads the full matrix.

    compute_dtype: the autocast dtype of the forward (rdpo_fast.training.optim.Precision.compute: bf16
    or fp16), in which the loss's GEMMs then take their inputs too; None computes in the weights' dtype."""

    def __init__(self, model: torch.nn.Module, loss_fn: torch.nn.Module, *, adapters_reference: bool = False,
                 compute_dtype: torch.dtype | None = None, tensor_parallel: bool = False):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.adapters_reference = adapters_reference
        self.compute_dtype = compute_dtype
        self.tensor_parallel = tensor_parallel  # the lm_head's vocabulary shards go to the loss as they are

    def _device_type(self):
        return next(self.model.parameters()).device.type

    def _hidden(self, batch):
        with torch.autocast(self._device_type(), dtype=self.compute_dtype or torch.float32,
                            enabled=self.compute_dtype is not None):
            return modeling.hidden_states(self.model, batch)

    def _cast(self, t):
        # The loss runs outside autocast; under bf16/fp16 its GEMMs take low-precision inputs (fp32 dW accumulation).
        return t if self.compute_dtype is None else t.to(self.compute_dtype)

    def forward(self, batch: Batch, num_pairs: int, num_chosen_tokens: int, ref_hidden: torch.Tensor | None = None,
                ref_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(loss, aux) of the fused loss on the batch, with the step's totals for exact accumulation."""
        kw = {}
        if self.adapters_reference:
            with torch.no_grad(), self.model.disable_adapter():
                kw["ref_input"] = self._cast(self._hidden(batch))
                kw["ref_weight"] = self._cast(modeling.output_weight(self.model))
        elif ref_hidden is not None:
            kw["ref_input"], kw["ref_weight"] = self._cast(ref_hidden), self._cast(ref_weight)
        elif batch.ref_chosen is not None and self.loss_fn.cfg.use_ref_model:
            kw["ref_chosen_logps"], kw["ref_rejected_logps"] = batch.ref_chosen, batch.ref_rejected
        hidden = self._cast(self._hidden(batch))
        weight = self._cast(modeling.output_weight(self.model, keep_vocab_shards=self.tensor_parallel))
        if batch.host_counts is not None and isinstance(self.loss_fn, FusedLinearPreferenceLoss):
            kw["host_counts"] = list(batch.host_counts)  # no device read-back before the loss's kernels
        with torch.autocast(self._device_type(), enabled=False):
            return self.loss_fn(weight, hidden, batch.target, soft_labels=batch.soft_labels,
                                num_pairs=num_pairs, num_chosen_tokens=num_chosen_tokens, **kw)


@torch.no_grad()
def reference_inputs(ref_model: torch.nn.Module | None, batch: Batch) -> dict:
    """PreferenceStep's keyword arguments for a frozen reference copy (reference mode "copy"): its hidden
    states and lm_head weight for the batch; none for the other modes."""
    if ref_model is None:
        return {}
    return {"ref_hidden": modeling.hidden_states(ref_model, batch), "ref_weight": modeling.output_weight(ref_model)}


def length_sorted(data: PreferenceData, idx: torch.Tensor) -> torch.Tensor:
    """`idx` ordered by pair length, so the no-grad passes (reference, evaluation) batch similar lengths
    together and pad less."""
    lens = torch.tensor([len(data.pairs[i].prompt) + max(len(data.pairs[i].chosen), len(data.pairs[i].rejected))
                         for i in idx.tolist()])
    return idx[torch.argsort(lens, stable=True)]
