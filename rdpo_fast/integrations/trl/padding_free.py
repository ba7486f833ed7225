"""Padding-free (packed) batches for FusedDPOTrainer's `padding_free=True`, which TRL 1.16 itself turns off
for DPO: each batch's 2B chosen and rejected sequences become one row with no padding, and the fused loss
reads them through its segment ids.

The batch keeps TRL's padding-free conventions (its SFT collator's): `input_ids`, `completion_mask`,
`position_ids` restarting at 0 per sequence, `cu_seq_lens_q/k` and `max_length_q/k` (the sequence
boundaries flash-attention's varlen kernel reads, computed here on the host so no layer syncs to derive
them) and `seq_idx` (each token's sequence, for linear-attention layers), and no `attention_mask`:
transformers keeps attention within each sequence only without one. With sdpa, eager and flex attention,
transformers (5.25, checked by tests/integrations/test_trl_padding_free.py) builds that packed-sequence mask itself
from position_ids, where the position restarts, provided no cache is passed (the fused forward runs with
use_cache=False). Sequence k of the row is chosen k for k < B and rejected k - B after that (TRL's
collator order), so `seq_idx` is also the fused loss's segment_ids. The batch also carries
`completion_counts` (host ints, one per sequence: the completion tokens the loss scores, all but one at a
sequence's first position), which the fused loss needs with segment ids: the ids alone cannot say how many
sequences a row holds when the last ones score no token.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# What the packed batch adds for the model (all but seq_idx are read by the attention only).
PACKED_MODEL_KEYS = ("position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")
# Attention implementations that keep a packed row's sequences apart: a packed-sequence mask built from
# position_ids (transformers' masking_utils), or flash attention's varlen kernels (checked apart).
MASKED_ATTENTION = ("eager", "sdpa", "flex_attention")


def pack_preference_batch(batch: dict[str, Any], pad_token_id: int, pad_to_multiple_of: int | None = None
                          ) -> dict[str, Any]:
    """TRL's right-padded preference batch ([2B, T] input_ids, attention_mask, completion_mask, and the
    reference columns if any) as one packed row [1, N]. pad_to_multiple_of: N is padded up to a multiple of
    it, as TRL's SFT collator does (each pad token a sequence of its own at position 0, never scored)."""
    mask = batch["attention_mask"].bool()
    lengths = mask.sum(1)
    T = mask.shape[1]
    # Only right padding packs into the same token positions (transformers numbers a padded row's tokens
    # from 0 at its first column, whatever the mask says).
    if not torch.equal(mask, torch.arange(T)[None, :] < lengths[:, None]):
        raise ValueError("padding_free packs right-padded batches (each attention_mask row ones, then zeros); "
                         "this batch has left padding or holes")
    if bool((lengths == 0).any()):
        raise ValueError("padding_free: a sequence of the batch has no tokens")
    n_seq = mask.shape[0]
    input_ids = batch["input_ids"][mask]
    completion = batch["completion_mask"][mask]
    position_ids = torch.cat([torch.arange(int(n)) for n in lengths])
    seq_idx = torch.repeat_interleave(torch.arange(n_seq), lengths)
    # A token is scored when it is a completion token predicted from within its sequence (loss_layout).
    scored = (completion != 0) & (position_ids > 0)
    completion_counts = torch.bincount(seq_idx[scored], minlength=n_seq).tolist()
    n_pad = (-input_ids.numel()) % pad_to_multiple_of if pad_to_multiple_of else 0
    if n_pad:
        input_ids = torch.cat([input_ids, input_ids.new_full((n_pad,), pad_token_id)])
        completion = torch.cat([completion, completion.new_zeros(n_pad)])
        position_ids = torch.cat([position_ids, position_ids.new_zeros(n_pad)])
        seq_idx = torch.cat([seq_idx, n_seq + torch.arange(n_pad)])
    starts = (position_ids == 0).nonzero().flatten()
    cu_seq_lens = torch.cat([starts, torch.tensor([position_ids.numel()])]).to(torch.int32)
    max_length = int(cu_seq_lens.diff().max())
    out = {"input_ids": input_ids[None], "completion_mask": completion[None], "position_ids": position_ids[None],
           "cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens, "max_length_q": max_length,
           "max_length_k": max_length, "seq_idx": seq_idx.to(torch.int32)[None], "completion_counts": completion_counts}
    for key in ("ref_chosen_logps", "ref_rejected_logps"):
        if key in batch:
            out[key] = batch[key]
    return out


class PackedPreferenceCollator:
    """Wraps TRL's DataCollatorForPreference (its truncation and column handling stay TRL's) and packs each
    batch it makes (pack_preference_batch)."""

    def __init__(self, padded: Callable[[list[dict]], dict], pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.padded = padded
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: list[dict]) -> dict[str, Any]:
        return pack_preference_batch(self.padded(examples), self.pad_token_id, self.pad_to_multiple_of)


def is_packed(inputs: dict[str, Any]) -> bool:
    return "seq_idx" in inputs


def loss_layout(hidden: torch.Tensor, labels: torch.Tensor, inputs: dict[str, Any]
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(hidden, target, extra keywords) in the fused loss's layout, position t predicting token t + 1.
    Packed: a sequence's last token would predict the next sequence's first, so the target is ignored
    where the next position restarts at 0, and the segment ids come along."""
    if not is_packed(inputs):
        return hidden[:, :-1], labels[:, 1:], {}
    restart = inputs["position_ids"][:, 1:] == 0
    target = labels[:, 1:].masked_fill(restart.to(labels.device), -100)
    return hidden[:, :-1], target, {"segment_ids": inputs["seq_idx"][:, :-1].to(labels.device),
                                    "host_counts": list(inputs["completion_counts"])}


def sequence_starts(inputs: dict[str, Any], column: torch.Tensor) -> torch.Tensor:
    """A per-token column at each sequence's first token ([2B], or one per packed sequence)."""
    if not is_packed(inputs):
        return column[:, 0]
    return column[inputs["position_ids"] == 0]


def real_tokens(inputs: dict[str, Any], n_seq: int) -> torch.Tensor:
    """The batch's tokens that are not padding (TRL's num_tokens count, attention_mask.sum() when padded)."""
    if not is_packed(inputs):
        return inputs["attention_mask"].sum()
    return (inputs["seq_idx"] < n_seq).sum()
