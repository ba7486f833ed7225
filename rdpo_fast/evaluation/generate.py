"""`rdpo-fast generate`: a model's answers to an evaluation prompt set, batched through transformers'
generate with the chat template (rdpo_fast.lm.generation), written in AlpacaEval's model-outputs
layout so alpaca_eval and `rdpo-fast eval` both read it.

Each record: instruction, output, generator, dataset (AlpacaEval's fields), then id, task, language,
finished (False: cut off by max_new_tokens; the answer is kept, and counted by eval) and num_tokens,
any other fields of the input record, and `generation`: the model, sampling settings, seed, system
message, date and package version that produced it.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import os
from typing import TYPE_CHECKING

import torch

from rdpo_fast.lm.chat import DEFAULT_SYSTEM, user_turn
from rdpo_fast.lm.generation import GenerationSettings, generate
from rdpo_fast.lm.inference import load_with_tokenizer
from rdpo_fast.models import loading as modeling

from .tasks import EvalPrompt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def package_version() -> str:
    """The installed rdpo_fast's version (its distribution metadata: this layer does not import the
    package root); "unknown" for a source tree that was never installed."""
    try:
        return importlib.metadata.version("rdpo_fast")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def generator_name(model: str) -> str:
    """A readable generator name for a model path: its last folder name (or the alias)."""
    if model in modeling.DEFAULT_ALIASES:
        return "SmolLM2-135M-Instruct"
    path = os.path.abspath(os.path.expanduser(model)).rstrip(os.sep)
    parts = path.split(os.sep)
    # A training run's weights sit in RUN/final (a pipeline's in RUN/roundN/train/final): name the run.
    if parts[-1] == "final" and len(parts) > 1:
        return "/".join(parts[-3:] if len(parts) > 2 and parts[-2] == "train" else parts[-2:])
    return os.path.splitext(parts[-1])[0]


def generate_answers(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[EvalPrompt],
                     settings: GenerationSettings, *, model_name: str, generator: str | None = None,
                     system: str | None = DEFAULT_SYSTEM) -> list[dict]:
    """One answer per prompt, as AlpacaEval-layout records (see the module docstring)."""
    s = settings.validate()
    if not prompts:
        raise ValueError("no prompts to answer")
    convs = [p.messages if p.messages else user_turn(p.instruction, system=system) for p in prompts]
    samples = generate(model, tokenizer, convs, settings=s, desc=f"generate ({generator or model_name})")
    meta = {"model": model_name, "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "max_new_tokens": s.max_new_tokens, "temperature": s.temperature,
            "top_p": s.top_p if s.temperature > 0 else None, "do_sample": s.temperature > 0, "seed": s.seed,
            "batch_size": s.batch_size, "system": system,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "rdpo_fast_version": package_version()}
    gen = generator or generator_name(model_name)
    out = []
    for p, [sample] in zip(prompts, samples):
        rec = {"instruction": p.instruction, "output": sample.text, "generator": gen, "dataset": p.dataset,
               "id": p.id, "task": p.task, "language": p.language, "finished": sample.finished,
               "num_tokens": sample.num_tokens}
        if p.messages:
            rec["messages"] = p.messages
        rec.update({k: v for k, v in p.extra.items() if k not in rec})
        rec["generation"] = meta
        out.append(rec)
    return out


def load_and_generate(model_name: str, prompts: list[EvalPrompt], settings: GenerationSettings, *,
                      dtype: str = "auto", **kw) -> list[dict]:
    model, tok = load_with_tokenizer(model_name, dtype=dtype)
    return generate_answers(model, tok, prompts, settings, model_name=model_name, **kw)
