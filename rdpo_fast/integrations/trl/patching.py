"""What TRL's fused trainers (dpo.py, cpo.py) share: refusing a setting by name, finding the transformers
model under its wrappers, and the forward mode that hands the decoder's last hidden states and the
lm_head parameters to the fused loss, so the model never computes logits."""
from __future__ import annotations

import functools
import types
from typing import Any, NoReturn


class UnsupportedSetting(ValueError):
    """A TRL setting the fused trainer cannot honour; the message names it."""


def refuse(trainer: str, name: str, value: Any, why: str) -> NoReturn:
    """Raises UnsupportedSetting naming the trainer, the setting and its value, and why."""
    raise UnsupportedSetting(f"{trainer}: {name}={value!r} is not supported: {why}")


def unwrap(model: Any) -> Any:
    """The transformers model under DDP / DeepSpeed / torch.compile / PEFT wrappers (a DeepSpeed engine
    forwards attribute lookups to its module, so the test is the type, not the attributes)."""
    from transformers import PreTrainedModel

    while not isinstance(model, PreTrainedModel):
        if hasattr(model, "get_base_model"):
            inner = model.get_base_model()
        else:
            inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None or inner is model:
            raise ValueError(f"cannot find the transformers model inside {type(model).__name__}")
        model = inner
    return model


def _head(model):
    """(weight [V, H], bias or None) of the lm_head, full tensors (an FSDP2 DTensor shard is gathered,
    differentiably)."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embedding (lm_head) to fuse")
    weight, bias = head.weight, getattr(head, "bias", None)
    if hasattr(weight, "full_tensor"):
        weight = weight.full_tensor()
        bias = None if bias is None else bias.full_tensor()
    return weight, bias


def install_fused_forward(model: Any) -> None:
    """Gives the transformers model under `model` a forward mode that runs the decoder only and hands its
    last hidden states [B, T, H], the labels [B, T] (unshifted) and the lm_head parameters to a callable,
    inside the model's own forward (so DDP, FSDP2 and ZeRO-3 hooks run as for any forward). Without
    `rdpo_fused` the forward is the previous one (TRL's fused head, or the model's own), so generation
    and TRL's own paths are unchanged."""
    base = unwrap(model)
    if getattr(base, "_rdpo_fused_forward", False):
        return
    previous = base.forward

    @functools.wraps(type(base).forward)
    def forward(self, *args, rdpo_fused=None, labels=None, **kwargs):
        if rdpo_fused is None:
            if labels is not None:
                kwargs["labels"] = labels
            return previous(*args, **kwargs)
        kwargs["use_cache"] = False
        for unused in ("num_items_in_batch", "fused_lm_head"):
            kwargs.pop(unused, None)
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        weight, bias = _head(self)
        from trl.trainer.utils import maybe_gather_lm_head_ctx

        with maybe_gather_lm_head_ctx(weight, bias):
            return rdpo_fused(self, hidden, labels.to(hidden.device), weight, bias)

    base.forward = types.MethodType(forward, base)
    base._rdpo_fused_forward = True
