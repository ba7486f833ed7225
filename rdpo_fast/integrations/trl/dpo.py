"""TRL integration: `FusedDPOTrainer`, a `trl.DPOTrainer` whose loss is rdpo_fast's fused preference loss,
and `patch_dpo_trainer()`, the one-line switch that makes every `trl.DPOTrainer` built afterwards one.

    from rdpo_fast.integrations.trl import patch_dpo_trainer
    patch_dpo_trainer()

Tested against TRL 1.16.0 (the `trl` extra pins it). The policy runs its decoder only; its last hidden
states and the lm_head weight (the input embedding when tied; gathered first under FSDP2 / ZeRO-3) go
to FusedLinearPreferenceLoss, which never holds [tokens, vocab] logits (6NHV: logits, dX, dW GEMMs per
chunk of whole pairs, against TRL 1.16's chunked head at 8NHV). The reference is scored by the same
fused op, forward only: a `ref_model`, the policy with its PEFT adapters off (or TRL's "ref" adapter),
or TRL's precomputed column, which is read from the batch (the policy never scores itself as the
reference). Every log-prob uses the model's own logit transform (logit scale, final-logit softcap; see
rdpo_fast.models.loading.logit_transform). Under an enabled autocast (TRL's bf16/fp16) the lm_head GEMMs run
in the autocast dtype, as TRL's head does, with dW accumulated in fp32.

Loss normalisation is TRL's: each micro-batch's loss is the mean over its pairs (plus the NLL term's mean
over its chosen tokens), and transformers' Trainer divides it by gradient_accumulation_steps; DDP
averages gradients over ranks. Metrics are TRL's names and values for the same batch, gathered the same
way: rewards/{chosen,rejected,accuracies,margins}, logps/{chosen,rejected}, logits/{chosen,rejected}
(mean transformed logit over completion tokens), entropy, mean_token_accuracy, num_tokens.

DPOConfig settings (TRL 1.16), each honoured or refused by name at construction:

    loss_type        every TRL 1.16 loss type, fused: sigmoid, hinge, ipo, exo_pair, nca_pair, robust,
                     bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, apo_down, discopop, sft,
                     sigmoid_norm, alone or as a list (MPO, RPO: ["sigmoid", "bco_pair", "sft"]). sft is
                     the chosen tokens' mean NLL over the micro-batch, as TRL's. aot / aot_unpaired sort
                     the log-ratios within each micro-batch (TRL does too: under gradient accumulation the
                     ranking never spans micro-batches) and cost up to 8NHV (the fused loss's two phases)
    loss_weights     honoured: the weighted sum of the members' mean losses, as TRL's
    beta, discopop_tau, ld_alpha
                     honoured (ld_alpha on the policy and on every reference path)
    label_smoothing  honoured where TRL 1.16 reads it: robust, exo_pair, aot, aot_unpaired (and lists of
                     them with other members). Refused when a list holds none of those (TRL would ignore
                     it) or holds sigmoid (TRL's sigmoid ignores it; ours would be cDPO). Out of our
                     range (robust [0, 0.5), exo_pair (0, 0.5], aot [0, 1]) refused
    f_divergence_type, f_alpha_divergence_coef
                     honoured: reverse_kl, forward_kl, js_divergence, alpha_divergence, for the loss types
                     TRL allows them with (sigmoid, sigmoid_norm, hinge, ipo, exo_pair, robust, discopop,
                     sft); f_alpha_divergence_coef away from 0.5 without alpha_divergence refused (TRL
                     would ignore it)
    use_weighting    (WPO) honoured: TRL's per-pair weights from the policy's own token probabilities,
                     computed in the fused pass, without gradient. Refused with aot / aot_unpaired (TRL
                     refuses them too) and with sft (TRL 1.16 fails on it: its in-place product on the
                     expanded batch NLL). With hinge TRL 1.16 computes the weighted loss but fails in
                     backward (the in-place product on relu's saved output); ours trains on the exact
                     gradient of that loss
    precompute_ref_log_probs, precompute_ref_batch_size
                     honoured: TRL's precompute pass runs through our fused forward-only scorer (its cache
                     keyed apart from TRL's own), and training reads the stored column
    ref_model, PEFT  a ref_model, TRL's copy of the policy, or the PEFT policy with adapters off (TRL's
                     "ref" adapter when the policy came with one); prompt-learning PEFT refused
    sync_ref_model, ref_model_mixup_alpha, ref_model_sync_steps
                     honoured (TRL's callback updates the reference model we score with)
    max_length, truncation_mode, pad_to_multiple_of
                     TRL's collator builds the batch
    padding_free     honoured (TRL 1.16 turns it off for DPO): TRL's collator's batch is packed into one row,
                     no padding, position_ids restarting per sequence, flash-attention's cu_seq_lens (see
                     padding_free.py); the policy, every reference path (the precompute pass included) and
                     the fused loss (through its segment ids) run packed, with the padded step's losses,
                     gradients and metrics. pad_to_multiple_of then pads the packed row, as TRL's SFT does.
                     Refused with it: a custom data_collator, compute_metrics (its logits would be one
                     packed row), accelerator_config split_batches / dispatch_batches (they split batches
                     along dim 0), and an attention implementation other than eager, sdpa, flex_attention
                     or a flash attention (the ones that keep each packed sequence to itself)
    disable_dropout, activation_offloading, gradient_checkpointing, model_init_kwargs, dataset_num_proc,
    trust_remote_code, precompute_ref_batch_size
                     honoured (TRL's own code)
    router_aux_loss_coef
                     refused where it turns on an MoE auxiliary loss (set it to 0.0)
    bf16, fp16       the lm_head GEMMs follow the autocast dtype, dW accumulated in fp32
    torch_compile    refused (the fused op syncs with the host once per call)
    rpo_alpha, reference_free, use_logits_to_keep (TRL 0.2x)
                     not DPOConfig fields in TRL 1.16 (RPO is loss_type=[..., "sft"]); TRL 0.2x itself
                     is not supported

Under FSDP2 the lm_head weight is read inside the model's own forward (the root has unsharded it) and a
DTensor shard is gathered with full_tensor(); under ZeRO-3 TRL's maybe_gather_lm_head_ctx gathers it.
Neither runs in CI here (accelerate enables FSDP and DeepSpeed on GPUs only); DDP does.

Vision-language models are refused (text-only causal LMs). `compute_metrics` keeps TRL 1.16's deprecated
behaviour: the logits it receives come from an extra full forward at evaluation, as in TRL.

TRL's CPOTrainer (trl.experimental.cpo in TRL 1.16): `FusedCPOTrainer` runs its loss_type="simpo" (and
"sigmoid") through the fused loss; see that class.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch

try:
    import trl
    from trl.trainer.dpo_trainer import DPOTrainer
except ImportError as e:  # pragma: no cover - exercised by a subprocess test without trl
    raise ImportError(f"rdpo_fast.integrations.trl needs TRL ({e}): pip install 'rdpo_fast[trl]'") from e

from packaging.version import Version

from rdpo_fast.losses import table as lt
from rdpo_fast.losses.fused import LENGTH_NORMALISED, FusedLinearPreferenceLoss
from rdpo_fast.losses.metrics import pair_values, token_means
from rdpo_fast.models import loading as modeling

from .padding_free import MASKED_ATTENTION, PackedPreferenceCollator, loss_layout, real_tokens, sequence_starts
from .patching import UnsupportedSetting, install_fused_forward, refuse, unwrap

TESTED_TRL_VERSION = "1.16.0"
if Version(trl.__version__).major < 1:
    raise ImportError(f"rdpo_fast.integrations.trl supports TRL 1.x (tested: {TESTED_TRL_VERSION}); TRL "
                      f"{trl.__version__} computes DPO through dpo_loss_fn / concatenated_forward, which this "
                      "integration does not patch: pip install 'rdpo_fast[trl]'")

# TRL 1.16 loss_type -> FusedLinearPreferenceLoss loss_type: every one is fused, under TRL's name.
TRL_LOSS_TYPES = {n: n for n in (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")}
# The loss types TRL 1.16 reads label_smoothing in.
_READS_LABEL_SMOOTHING = ("robust", "exo_pair", "aot", "aot_unpaired")
_NON_MODEL_KEYS = {"completion_mask", "completion_counts", "ref_chosen_logps", "ref_rejected_logps"}


def _refuse(name, value, why):
    refuse("FusedDPOTrainer", name, value, why)


# ---------------------------------------------------------------------------------------- settings
def loss_options(args: Any) -> dict:
    """FusedLinearPreferenceLoss keywords for a DPOConfig, or UnsupportedSetting naming the setting."""
    names = [args.loss_type] if isinstance(args.loss_type, str) else list(args.loss_type)
    for name in names:
        if name not in TRL_LOSS_TYPES:
            raise UnsupportedSetting(f"FusedDPOTrainer: unknown loss_type {name!r}; TRL's are "
                                     f"{', '.join(TRL_LOSS_TYPES)}")
    shown = names[0] if len(names) == 1 else names
    eps = float(args.label_smoothing)
    if eps:
        # TRL's sigmoid ignores label_smoothing, ours is cDPO with it; a list with no member that reads
        # it would ignore it in TRL. Both refused, naming the setting.
        if "sigmoid" in names:
            _refuse("label_smoothing", eps, f"TRL 1.16's sigmoid ignores it (rdpo_fast's would be cDPO); with "
                    f"loss_type {shown!r} the two would train differently")
        if not set(names) & set(_READS_LABEL_SMOOTHING):
            _refuse("label_smoothing", eps, f"TRL 1.16 reads it only in loss_type "
                    f"{', '.join(_READS_LABEL_SMOOTHING)}; with {shown!r} it would be ignored")
    alpha = float(args.f_alpha_divergence_coef)
    if args.f_divergence_type != "alpha_divergence" and alpha != lt.DEFAULT_F_ALPHA:
        _refuse("f_alpha_divergence_coef", alpha, "it is read only with f_divergence_type='alpha_divergence' "
                f"(TRL would ignore it with {args.f_divergence_type!r})")
    if args.use_weighting:
        unweighted = [n for n in names if not lt.LOSSES[TRL_LOSS_TYPES[n]].weighting]
        if unweighted:
            _refuse("use_weighting", True, f"WPO weighting is not defined for {', '.join(unweighted)}: TRL 1.16 "
                    "refuses it for aot / aot_unpaired (sorting would misalign the per-pair weights) and cannot "
                    "compute it for sft (its in-place product on the batch NLL fails)")
    opts = dict(loss_type=[TRL_LOSS_TYPES[n] for n in names] if len(names) > 1 else TRL_LOSS_TYPES[names[0]],
                loss_weights=None if args.loss_weights is None else [float(w) for w in args.loss_weights],
                beta=float(args.beta), label_smoothing=eps, ld_alpha=args.ld_alpha,
                use_weighting=bool(args.use_weighting), f_divergence_type=args.f_divergence_type,
                f_alpha_divergence_coef=alpha, autocast="follow")
    if "discopop" in names:
        opts["tau"] = float(args.discopop_tau)
    try:  # the fused loss's own checks (ranges, f-divergence against the list, ...), before any data work
        FusedLinearPreferenceLoss(**opts)
    except ValueError as e:
        raise UnsupportedSetting(f"FusedDPOTrainer: {e}") from e
    return opts


def check_training_args(args: Any) -> None:
    """TrainingArguments that change the loss or the log-probs and that the fused path cannot honour."""
    if getattr(args, "torch_compile", False):
        _refuse("torch_compile", True, "the fused loss syncs with the host once per call; compile the model "
                "yourself outside the trainer if you need to")


def check_padding_free(args: Any, data_collator: Any = None, compute_metrics: Any = None) -> None:
    """What padding_free=True cannot be combined with, refused by name."""
    if not getattr(args, "padding_free", False):
        return
    if data_collator is not None:
        _refuse("data_collator", type(data_collator).__name__, "with padding_free=True the trainer packs TRL's "
                "own collator's batches (as TRL's SFTTrainer, it takes no custom collator then)")
    if compute_metrics is not None:
        _refuse("compute_metrics", getattr(compute_metrics, "__name__", type(compute_metrics).__name__),
                "with padding_free=True the logits it would receive are one packed row, not TRL's [2B, T] "
                "layout of chosen then rejected rows")
    acc = getattr(args, "accelerator_config", None)
    for name in ("split_batches", "dispatch_batches"):
        if getattr(acc, name, None):
            _refuse(f"accelerator_config.{name}", True, "it splits batches along their first dimension across "
                    "processes, and a padding-free batch is a single packed row")


def check_packed_attention(model: Any, role: str) -> None:
    """padding_free=True needs an attention that keeps each packed sequence to itself."""
    from transformers.utils.generic import is_flash_attention_requested

    config = unwrap(model).config.get_text_config()
    impl = config._attn_implementation
    if impl in MASKED_ATTENTION or is_flash_attention_requested(config):
        return
    _refuse(f"attn_implementation ({role})", impl, "with padding_free=True attention must stay within each packed "
            f"sequence: {', '.join(MASKED_ATTENTION)} (transformers' packed-sequence mask from position_ids) or "
            "a flash attention (its varlen kernel)")


# ---------------------------------------------------------------------------------------- scoring
def _score_sequences(module, hidden, labels, weight, bias, ld_alpha, inputs):
    """(chosen, rejected) sums of the next-token log-probs of `labels` (hidden states and labels
    unshifted, padded or packed as `inputs` says) under the module's logit transform (with ld_alpha,
    LD-DPO's weighting), forward only. Scored by the fused loss itself, reference-free and under no_grad,
    so a reference pass over the policy's own weights gives bit for bit the policy's sums (the first
    step's rewards are then exactly 0, as in TRL)."""
    scorer = FusedLinearPreferenceLoss(loss_type="sigmoid", beta=1.0, use_ref_model=False, ld_alpha=ld_alpha,
                                       autocast="follow", **modeling.logit_transform(module).kernel_args())
    x, target, layout = loss_layout(hidden, labels, inputs)
    with torch.no_grad():
        _, aux = scorer(weight, x, target, bias, **layout)
    return aux[0], aux[1]


# ---------------------------------------------------------------------------------------- the trainer
class FusedDPOTrainer(DPOTrainer):
    """trl.DPOTrainer with rdpo_fast's fused preference loss (see the module docstring for what is
    honoured and refused). Same constructor as DPOTrainer."""

    def __init__(self, *args, **kwargs):
        def given(name, position):
            return kwargs.get(name, args[position] if len(args) > position else None)

        config = given("args", 2)
        if config is not None:
            # Settings first, so a refused one fails before any dataset is tokenised or reference scored.
            loss_options(config)
            check_training_args(config)
            check_padding_free(config, given("data_collator", 3), given("compute_metrics", 7))
        if Version(trl.__version__) != Version(TESTED_TRL_VERSION):
            warnings.warn(f"rdpo_fast's TRL integration is tested with TRL {TESTED_TRL_VERSION}; you have "
                          f"{trl.__version__}", stacklevel=2)
        self._rdpo_model_checked = False
        self._rdpo_padding_free = bool(config is not None and config.padding_free)
        # TRL 1.16 would warn that padding_free is disabled and fall back to padding: the packing is ours
        # (_rdpo_pack_batches), so TRL sees it off while it builds its padded collator.
        if self._rdpo_padding_free:
            config.padding_free = False
        try:
            super().__init__(*args, **kwargs)
        finally:
            if self._rdpo_padding_free:
                config.padding_free = True
        self.padding_free = self._rdpo_padding_free
        self._rdpo_pack_batches()
        self._rdpo_check_model()
        self._rdpo_loss = FusedLinearPreferenceLoss(**loss_options(self.args),
                                                    **modeling.logit_transform(unwrap(self.model)).kernel_args())
        self._rdpo_calls = 0  # fused loss calls, for tests and users who want to see it ran

    def _rdpo_check_model(self):
        if self._rdpo_model_checked:
            return
        if getattr(self, "_is_vlm", False):
            raise UnsupportedSetting("FusedDPOTrainer: vision-language models are not supported (text-only "
                                     "causal LMs); use trl.DPOTrainer for them")
        if getattr(self, "aux_loss_enabled", False):
            _refuse("router_aux_loss_coef", self.router_aux_loss_coef, "the MoE load-balancing loss is not "
                    "computed on the fused path; set router_aux_loss_coef=0.0 to train without it")
        peft_cfg = getattr(self.model, "peft_config", None)
        if peft_cfg and any(getattr(c, "is_prompt_learning", False) for c in peft_cfg.values()):
            raise UnsupportedSetting("FusedDPOTrainer: prompt-learning PEFT (virtual tokens) is not "
                                     "supported; use LoRA-style adapters")
        if self._rdpo_padding_free:
            check_packed_attention(self.model, "model")
            if self.ref_model is not None:
                check_packed_attention(self.ref_model, "ref_model")
        self._rdpo_model_checked = True

    def _rdpo_pack_batches(self):
        """padding_free=True: TRL's collator's batches packed into one row each. Installed before TRL's
        precompute pass (which runs inside DPOTrainer.__init__) and again after __init__ (idempotent)."""
        collator = self.data_collator
        if self._rdpo_padding_free and not isinstance(collator, PackedPreferenceCollator):
            self.data_collator = PackedPreferenceCollator(collator, collator.pad_token_id,
                                                          self.args.pad_to_multiple_of)

    # -- the reference ------------------------------------------------------------------------------
    def _rdpo_score(self, model, model_kwargs, labels, inputs):
        """(chosen, rejected) sequence log-probs of `model`, forward only, through the fused op. inputs:
        the whole batch (a packed one's layout and completion_counts are read from it)."""
        install_fused_forward(model)

        def score(module, hidden, labels, weight, bias):
            return _score_sequences(module, hidden, labels, weight, bias, self.ld_alpha, inputs)

        with torch.no_grad():
            return model(**model_kwargs, labels=labels, rdpo_fused=score)

    def _rdpo_adapter_context(self):
        from accelerate.utils import is_peft_model
        from trl.trainer.utils import use_adapter

        if self.ref_model is None and is_peft_model(self.model):
            unwrapped = self.accelerator.unwrap_model(self.model)
            return use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        return contextlib.nullcontext()

    def compute_ref_log_probs(self, model: torch.nn.Module,
                              inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """TRL's precompute pass (and ours): the reference's sequence log-probs of one padded batch."""
        from trl.models.utils import disable_gradient_checkpointing

        self._rdpo_check_model()
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        with (disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
              self._rdpo_adapter_context(), self.accelerator.autocast()):
            return self._rdpo_score(model, model_kwargs, labels, inputs)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        # TRL caches the precomputed column under (dataset, model hash) alone: a column computed by
        # TRL's own head, or with another ld_alpha, would be reused silently. Key ours apart.
        from datasets.fingerprint import Hasher

        self._rdpo_pack_batches()  # the reference runs packed too
        model_hash = self._precompute_model_hash
        self._precompute_model_hash = Hasher.hash((model_hash, "rdpo_fast.FusedDPOTrainer", self.ld_alpha))
        try:
            return super()._precompute_ref_logps(dataset, name, batch_size)
        finally:
            self._precompute_model_hash = model_hash

    def _rdpo_reference(self, inputs, model_kwargs, labels):
        if self.precompute_ref_logps:
            # The stored column (TRL's precompute pass, run through compute_ref_log_probs above).
            dev = labels.device
            return inputs["ref_chosen_logps"].to(dev).float(), inputs["ref_rejected_logps"].to(dev).float()
        from trl.models.utils import disable_gradient_checkpointing

        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            if self.ref_model is None:  # PEFT: the policy with its adapters off (or TRL's "ref" adapter)
                with self._rdpo_adapter_context():
                    return self._rdpo_score(self.model, model_kwargs, labels, inputs)
            return self._rdpo_score(self.ref_model, model_kwargs, labels, inputs)

    # -- the loss -----------------------------------------------------------------------------------
    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        normalising = [n for n, _ in self._rdpo_loss.cfg.members if n in LENGTH_NORMALISED]
        if normalising and bool(sequence_starts(inputs, completion_mask).any()):
            # TRL counts a completion that starts at position 0 one token longer than the tokens it scores.
            raise ValueError("FusedDPOTrainer: an example has an empty prompt; with loss_type "
                             f"{normalising[0]!r} TRL's length would count a token no model scores")
        ref_chosen, ref_rejected = self._rdpo_reference(inputs, model_kwargs, labels)
        loss_fn = self._rdpo_loss

        def fused(module, hidden, labels, weight, bias):
            x, target, layout = loss_layout(hidden, labels, inputs)
            return loss_fn(weight, x, target, bias, ref_chosen_logps=ref_chosen, ref_rejected_logps=ref_rejected,
                           return_token_stats=True, **layout)

        install_fused_forward(model)
        loss, aux, stats = model(**model_kwargs, labels=labels, rdpo_fused=fused)
        self._rdpo_calls += 1
        self._rdpo_log(mode, inputs, aux, stats)
        if return_outputs:
            warnings.warn("`return_outputs=True` (compute_metrics) recomputes the full logits with an extra "
                          "forward, as TRL 1.16 does", FutureWarning, stacklevel=2)
            with torch.no_grad():
                outputs = model(**model_kwargs)
            return loss, outputs
        return loss

    def _rdpo_log(self, mode, inputs, aux, stats):
        """TRL 1.16's metrics for this batch, gathered across processes as TRL gathers them."""
        acc = self.accelerator
        m = self._metrics[mode]
        dev = aux[0].device
        n_tok = torch.tensor(float(stats["num_tokens"]), device=dev)
        n_chosen = torch.tensor(float(stats["num_chosen_tokens"]), device=dev)
        n_rejected = n_tok - n_chosen

        entropy_sum = acc.gather_for_metrics(stats["entropy_sum"].detach()).sum()
        total = acc.gather_for_metrics(n_tok).sum()
        m["entropy"].append((entropy_sum / total).item() if total > 0 else 0.0)
        if mode == "train":
            n_seq = 2 * aux[0].numel()
            self._total_train_tokens += acc.gather_for_metrics(real_tokens(inputs, n_seq)).sum().item() \
                // self._tp_size
        m["num_tokens"] = [self._total_train_tokens]
        for (key, mean), count in zip(token_means(aux).items(), (n_chosen, n_rejected)):
            logit_total = acc.gather_for_metrics((mean * count).detach()).sum().item()
            tokens = acc.gather_for_metrics(count).sum().item()
            m[key].append(logit_total / tokens if tokens > 0 else 0.0)
        correct = acc.gather_for_metrics(stats["chosen_top1"].detach()).sum()
        chosen_total = acc.gather_for_metrics(n_chosen).sum()
        m["mean_token_accuracy"].append((correct / chosen_total).item() if chosen_total > 0 else 0.0)
        for key, values in pair_values([t.detach() for t in aux]).items():
            m[key].append(acc.gather(values).mean().item())


# ---------------------------------------------------------------------------------------- the switch
_PATCH = {"on": False}


def _fused_new(cls, *args, **kwargs):
    # Only DPOTrainer itself is redirected: a user's own subclass keeps its class.
    return object.__new__(FusedDPOTrainer if _PATCH["on"] and cls is DPOTrainer else cls)


def patch_dpo_trainer() -> None:
    """Every `trl.DPOTrainer(...)` built from now on is a FusedDPOTrainer (the same constructor), however
    DPOTrainer was imported. Idempotent; undo with unpatch_dpo_trainer()."""
    if "__new__" in DPOTrainer.__dict__ and DPOTrainer.__dict__["__new__"] is not _fused_new:
        raise RuntimeError("trl.DPOTrainer already has its own __new__; patch_dpo_trainer cannot redirect it")
    # Installed once and left in place (inert when off): CPython cannot cleanly delete a class's __new__.
    DPOTrainer.__new__ = _fused_new
    _PATCH["on"] = True


def unpatch_dpo_trainer() -> None:
    _PATCH["on"] = False


def is_patched() -> bool:
    return _PATCH["on"]


__all__ = ["FusedDPOTrainer", "TESTED_TRL_VERSION", "TRL_LOSS_TYPES", "UnsupportedSetting", "check_training_args",
           "is_patched", "loss_options", "patch_dpo_trainer", "unpatch_dpo_trainer"]

