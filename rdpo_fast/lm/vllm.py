"""Sampling through vLLM (`--generator vllm`, the optional `[vllm]` extra, GPU only).

The same contract as generation.generate: K samples per chat prompt, each a Sample that says whether
it ended with an end-of-turn token or ran into max_new_tokens. Prompts are rendered with the same
chat-template path (chat.prompt_text) and handed to vLLM as token ids, so vLLM adds no BOS or template
of its own and a candidate is tokenised the same way when it is sampled, scored and trained on. The
model is a Hugging Face directory (the run's exported safetensors: a policy of round r is
roundR/train/final, a GGUF start model is materialised into models/ first).

vLLM's own offline API (LLM, SamplingParams with n, temperature, top_p, max_tokens, seed) does the
batching; one engine per call, shut down afterwards so the training stage that follows gets the GPU.
"""
from __future__ import annotations

import gc
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .chat import prompt_text, require_template
from .generation import GenerationSettings, Sample, eos_ids, sampling_settings

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class VllmSettings:
    gpu_memory_utilization: float = 0.5  # the training stage in the same process needs the rest
    dtype: str = "auto"
    max_model_len: int | None = None
    enforce_eager: bool = False

    def validate(self) -> VllmSettings:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"vllm gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        return self


def require_vllm() -> types.ModuleType:
    """The vllm module, or a clear error naming the extra to install."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise ValueError("--generator vllm needs vLLM (a GPU): pip install 'rdpo_fast[vllm]'; "
                         "the default --generator transformers runs everywhere") from None
    return vllm


def _config_eos(model_dir: str) -> list[int]:
    """End-of-sequence ids of the model directory's generation config (what generation.eos_ids reads
    from a loaded model)."""
    from transformers import GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:
        return []
    if gen is None:
        return []
    return [int(i) for i in ([gen] if isinstance(gen, int) else gen)]


class _ModelStub:
    """What eos_ids needs of a model (its generation config), without loading the weights."""

    def __init__(self, eos):
        self.generation_config = type("G", (), {"eos_token_id": eos})()


def generate_vllm(model_dir: str, tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict]], *,
                  num_samples: int = 1, settings: GenerationSettings | None = None,
                  vllm_settings: VllmSettings | None = None, desc: str = "generate (vLLM)") -> list[list[Sample]]:
    """num_samples samples for each conversation, through vLLM; the same records as generation.generate."""
    s = sampling_settings(settings, num_samples)
    v = (vllm_settings or VllmSettings()).validate()
    if not conversations:
        return []
    vllm = require_vllm()
    require_template(tokenizer, "generation")
    stop = eos_ids(_ModelStub(_config_eos(model_dir)), tokenizer)
    texts = [prompt_text(tokenizer, c) for c in conversations]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    kw = dict(model=model_dir, tokenizer=model_dir, seed=s.seed, dtype=v.dtype,
              gpu_memory_utilization=v.gpu_memory_utilization, enforce_eager=v.enforce_eager)
    if v.max_model_len:
        kw["max_model_len"] = v.max_model_len
    llm = vllm.LLM(**kw)
    try:
        params = [vllm.SamplingParams(n=num_samples, temperature=s.temperature,
                                      top_p=s.top_p if s.temperature > 0 else 1.0, max_tokens=s.max_new_tokens,
                                      seed=s.seed + i, stop_token_ids=stop, skip_special_tokens=True)
                  for i in range(len(ids))]
        outputs = llm.generate([{"prompt_token_ids": list(p)} for p in ids], params, use_tqdm=s.progress)
        return [[to_sample(o, stop) for o in out.outputs] for out in outputs]
    finally:
        shutdown(llm)


def to_sample(output: Any, stop: list[int]) -> Sample:
    """A vLLM CompletionOutput as a Sample: finished when it stopped on an end-of-turn token ('stop'),
    truncated when it ran into max_tokens ('length'); num_tokens counts the end-of-turn token whether
    or not vLLM keeps it in token_ids, as generation.generate does."""
    tokens = list(output.token_ids)
    finished = output.finish_reason == "stop"
    if output.finish_reason not in ("stop", "length"):
        raise ValueError(f"vLLM finished a sample with reason {output.finish_reason!r}; expected 'stop' or 'length'")
    n = len(tokens)
    if finished and not (tokens and tokens[-1] in stop):
        n += 1
    return Sample(output.text, n, finished)


def shutdown(llm: Any) -> None:
    """Frees the engine's GPU memory for the stages that follow in this process."""
    try:
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()
    except (ImportError, AttributeError, AssertionError, RuntimeError):
        pass  # vLLM versions differ in what they set up; the engine's own teardown below still runs
    engine = getattr(llm, "llm_engine", None)
    if engine is not None and hasattr(engine, "shutdown"):
        engine.shutdown()
    del llm
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
