"""Batched sampling from a causal LM with the KV cache (transformers `generate`) over chat prompts.

Prompts are rendered with the chat template, left-padded (a decoder-only model continues from the
right edge) and batched in order of length, so a batch wastes little on padding. Each sample records
whether it ended with an end-of-sequence token or ran into max_new_tokens (truncated): pipelines drop
or count truncated samples, they never mistake them for complete answers.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .chat import prompt_text, require_template

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class Sample:
    text: str  # decoded up to (not including) the first end-of-sequence token
    num_tokens: int  # generated tokens, the end-of-sequence token included when there is one
    finished: bool  # False: cut off by max_new_tokens

    @property
    def truncated(self) -> bool:
        return not self.finished


@dataclass
class GenerationSettings:
    max_new_tokens: int = 64
    temperature: float = 0.8  # 0: greedy
    top_p: float = 0.95
    batch_size: int = 16  # sequences per generate call (prompts x samples)
    seed: int = 0
    progress: bool = True

    def validate(self) -> GenerationSettings:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        return self


def sampling_settings(settings: GenerationSettings | None, num_samples: int) -> GenerationSettings:
    """The validated settings of a request for num_samples samples per prompt (both generators')."""
    s = (settings or GenerationSettings()).validate()
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if num_samples > 1 and s.temperature == 0:
        raise ValueError(f"{num_samples} greedy samples per prompt would all be the same; sample with temperature > 0")
    return s


def eos_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token that ends a turn: the tokenizer's EOS and the model's generation EOS ids."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen is not None:
        ids.update(int(i) for i in ([gen] if isinstance(gen, int) else gen))
    if not ids:
        raise ValueError("the tokenizer and model define no end-of-sequence token; generation could never stop")
    return sorted(ids)


@torch.inference_mode()
def generate(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict]], *,
             num_samples: int = 1, settings: GenerationSettings | None = None, desc: str = "generate",
             answer_prefix: str = "") -> list[list[Sample]]:
    """num_samples samples for each conversation (chat messages ending with a user turn). answer_prefix:
    text the assistant's answer is forced to start with; it is not part of the returned text."""
    s = sampling_settings(settings, num_samples)
    if not conversations:
        return []
    require_template(tokenizer, "generation")
    stop = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    texts = [prompt_text(tokenizer, c) + answer_prefix for c in conversations]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    per_batch = max(1, s.batch_size // num_samples)
    out: list[list[Sample] | None] = [None] * len(texts)
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    torch.manual_seed(s.seed)
    kw = dict(max_new_tokens=s.max_new_tokens, num_return_sequences=num_samples, use_cache=True,
              pad_token_id=pad, eos_token_id=stop)
    if s.temperature > 0:
        kw.update(do_sample=True, temperature=s.temperature, top_p=s.top_p)
    else:  # unset the sampling knobs a model's generation_config may carry, or generate warns about them
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    batches = [order[i: i + per_batch] for i in range(0, len(order), per_batch)]
    bar = None
    if s.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(texts) * num_samples, desc=desc, dynamic_ncols=True, file=sys.stderr)
    try:
        for idx in batches:
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            gen = model.generate(**enc, **kw)[:, enc["input_ids"].shape[1]:].cpu()
            for j, i in enumerate(idx):
                out[i] = [_sample(tokenizer, gen[j * num_samples + k], stop) for k in range(num_samples)]
            if bar is not None:
                bar.update(len(idx) * num_samples)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
        if bar is not None:
            bar.close()
    return out  # type: ignore[return-value]


def _sample(tokenizer, ids: torch.Tensor, stop: list[int]) -> Sample:
    hits = torch.isin(ids, torch.tensor(stop)).nonzero()
    if len(hits):
        end = int(hits[0])
        return Sample(tokenizer.decode(ids[:end], skip_special_tokens=True), end + 1, True)
    return Sample(tokenizer.decode(ids, skip_special_tokens=True), len(ids), False)
