"""A model and its tokenizer loaded for inference (generation, judging): eval mode, on the GPU when there
is one, bfloat16 there and float32 on the CPU unless a dtype is named."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rdpo_fast.models import loading as modeling

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_for_inference(name: str, *, dtype: str = "auto", attn: str | None = None) -> torch.nn.Module:
    """The model of `name` (see models.loading.resolve) in eval mode, on CUDA when available; dtype "auto"
    is bfloat16 on CUDA and float32 on CPU."""
    cuda = torch.cuda.is_available()
    if dtype != "auto" and dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    dt = (torch.bfloat16 if cuda else torch.float32) if dtype == "auto" else DTYPES[dtype]
    model = modeling.load_model(name, dtype=dt, attn=attn).eval()
    return model.to("cuda") if cuda else model


def load_with_tokenizer(name: str, *, dtype: str = "auto",
                        attn: str | None = None) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """(model, tokenizer) of `name` for inference; a model that is not there fails before anything loads."""
    modeling.resolve(name)
    tokenizer = modeling.load_tokenizer(name)
    return load_for_inference(name, dtype=dtype, attn=attn), tokenizer
