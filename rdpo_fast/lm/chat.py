"""Chat rendering shared by generation and scoring, so a response is tokenised the same way when it
is sampled, scored and trained on: the prompt is the chat template with the generation prompt, the
completion is whatever the template adds after it for the assistant's turn (its end-of-turn token
included), exactly as rdpo_fast.data.records renders chat records."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_SYSTEM = "You are a helpful assistant."
# The sampling pipelines drop answers cut off by max_new_tokens; asking for brevity keeps most samples
# complete at CPU-friendly lengths (SmolLM2-135M at 64 tokens: 9 of 32 truncated instead of 24 of 32).
BRIEF_SYSTEM = "You are a helpful assistant. Keep your answers short: one to three sentences."


class ChatError(ValueError):
    """A tokenizer or conversation the chat rendering cannot handle."""


def require_template(tokenizer: PreTrainedTokenizerBase, what: str) -> None:
    """A ChatError unless the tokenizer has a chat template (`what` names who needs it)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ChatError(f"{what} needs a tokenizer with a chat template; this one has none")


def user_turn(text: str, system: str | None = DEFAULT_SYSTEM) -> list[dict]:
    """A conversation of one user message, after the system message when there is one."""
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": text}]


def prompt_text(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> str:
    """The conversation rendered by the chat template, ending with the generation prompt."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def completion_text(tokenizer: PreTrainedTokenizerBase, messages: list[dict], response: str) -> str:
    """The text the chat template adds after the generation prompt for an assistant turn `response`."""
    prompt = prompt_text(tokenizer, messages)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(prompt):
        raise ChatError("the chat template renders prompt+response with a different prefix than the prompt "
                        "alone, so the response cannot be split off")
    return full[len(prompt):]


def as_messages(prompt: str | list[dict]) -> list[dict]:
    """A TRL prompt (a string or chat messages) as chat messages."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def as_text(completion: str | list[dict]) -> str:
    """A TRL completion (a string or assistant messages) as the response text."""
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion if m.get("role") == "assistant")


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def last_user_text(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m["role"] == "user":
            return m["content"]
    raise ChatError("a prompt without a user message")
