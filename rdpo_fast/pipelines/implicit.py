"""The implicit reward of a (policy, reference) pair: r(x, y) = log pi(y|x) - log pi_ref(y|x), summed over
the response's tokens (SPEC sections 1 and 5; DICE and cross-lingual rewarding score with it).

Both models run forward only, under no_grad, through the fused op rdpo_fast.ops.sequence_logprobs on the
decoder's last hidden states and the lm_head weight, so the [tokens x vocabulary] logits are never
materialised. Candidates are tokenised exactly as training tokenises chat records (rdpo_fast.data.records):
the chat template's prompt with the generation prompt, then the assistant turn with its end-of-turn
token, which is part of the scored completion.

Batching: candidates are sorted by length, so each batch holds sequences of similar length and
wastes little on padding; a batch holds at most `batch_size` sequences and, with `max_batch_tokens`,
at most that many padded tokens (rows x longest row), so many short candidates share one forward
and long ones never blow up the activations. Each pass reports its tokens, padding and tokens/s.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from rdpo_fast.lm.chat import completion_text, prompt_text, require_template
from rdpo_fast.models import loading as modeling
from rdpo_fast.ops import sequence_logprobs

IGNORE = -100


@dataclass
class Encoded:
    prompt: list[int]
    completion: list[int]


def encode(tokenizer, prompts: list[list[dict]], responses: list[str]) -> list[Encoded]:
    """Token ids of each (chat prompt, response) as training sees them."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    require_template(tokenizer, "implicit-reward scoring")
    p_text = [prompt_text(tokenizer, p) for p in prompts]
    c_text = [completion_text(tokenizer, p, r) for p, r in zip(prompts, responses)]
    p_ids = tokenizer(p_text, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(c_text, add_special_tokens=False)["input_ids"]
    out = []
    for i, (p, c) in enumerate(zip(p_ids, c_ids)):
        if not p or not c:
            raise ValueError(f"candidate {i}: the prompt or the response tokenises to nothing")
        out.append(Encoded(list(p), list(c)))
    return out


def collate(items: list[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, target) right-padded; target[t] is the token at t+1 where that token
    belongs to the completion, else IGNORE (the layout of rdpo_fast.data.records.collate)."""
    seqs = [e.prompt + e.completion for e in items]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(seqs), T), dtype=torch.int64)
    target = torch.full((len(seqs), T), IGNORE, dtype=torch.int64)
    for i, (e, s) in enumerate(zip(items, seqs)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        target[i, len(e.prompt) - 1: len(s) - 1] = torch.tensor(e.completion)
    return ids, mask, target


def length_batches(lengths: list[int], batch_size: int, max_batch_tokens: int | None = None) -> list[list[int]]:
    """Indices grouped into batches in order of length: each batch has at most batch_size rows and,
    when max_batch_tokens is set, rows x (its longest row) <= max_batch_tokens (a row longer than the
    budget gets a batch of its own)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_batch_tokens is not None and max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, cur = [], []
    for i in order:
        # Sorted ascending: the new row is the batch's longest.
        if cur and (len(cur) >= batch_size or
                    (max_batch_tokens is not None and (len(cur) + 1) * lengths[i] > max_batch_tokens)):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


@torch.no_grad()
def sequence_logps(model, items: list[Encoded], *, pad_id: int, batch_size: int = 8,
                   workspace_mb: float | None = None, max_batch_tokens: int | None = None,
                   stats: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of completion-token log-probs [N] float64, completion token counts [N] int64) under `model`.
    `stats`, when given, is filled with the pass's sequences, tokens, padded tokens and seconds."""
    device = next(model.parameters()).device
    sums = torch.zeros(len(items), dtype=torch.float64)
    counts = torch.zeros(len(items), dtype=torch.int64)
    lengths = [len(e.prompt) + len(e.completion) for e in items]
    batches = length_batches(lengths, batch_size, max_batch_tokens)
    budget = None if workspace_mb is None else int(workspace_mb * 2**20)
    transform = modeling.logit_transform(model).kernel_args()  # e.g. Gemma 2's final-logit softcap
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    padded = 0
    try:
        for idx in batches:
            ids, mask, target = collate([items[i] for i in idx], pad_id)
            padded += ids.numel()
            hidden = modeling.decoder(model)(input_ids=ids.to(device), attention_mask=mask.to(device),
                                             use_cache=False).last_hidden_state
            weight = modeling.output_weight(model)
            s, c = sequence_logprobs(hidden, weight.to(hidden.dtype), target.to(device),
                                     ignore_index=IGNORE, workspace_budget=budget, **transform)
            sums[idx] = s.double().cpu()
            counts[idx] = c.cpu()
    finally:
        model.train(was_training)
    if stats is not None:
        stats.update(sequences=len(items), batches=len(batches), tokens=sum(lengths), padded_tokens=padded,
                     seconds=time.perf_counter() - t0)
    return sums, counts


@dataclass
class ImplicitScores:
    reward: torch.Tensor  # [N] float64: policy_logps - reference_logps
    policy_logps: torch.Tensor
    reference_logps: torch.Tensor
    num_tokens: torch.Tensor  # [N] completion tokens (the end-of-turn token included)


class ImplicitReward:
    """Scores responses with log pi(y|x) - log pi_ref(y|x). The two models must share the tokenizer's
    vocabulary (the same token ids mean the same tokens)."""

    def __init__(self, policy, reference, tokenizer, *, batch_size: int = 8, workspace_mb: float | None = None,
                 max_batch_tokens: int | None = None):
        for name, m in (("policy", policy), ("reference", reference)):
            V = modeling.output_weight(m).shape[0]
            if V < len(tokenizer):
                raise ValueError(f"the {name} model's vocabulary ({V}) is smaller than the tokenizer's "
                                 f"({len(tokenizer)}): not the tokenizer of this model")
        vp, vr = modeling.output_weight(policy).shape[0], modeling.output_weight(reference).shape[0]
        if vp != vr:
            raise ValueError(f"policy and reference vocabularies differ ({vp} vs {vr}); the implicit reward "
                             "needs two models over the same tokens")
        self.policy, self.reference, self.tokenizer = policy, reference, tokenizer
        self.batch_size, self.workspace_mb, self.max_batch_tokens = batch_size, workspace_mb, max_batch_tokens
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self.stats: dict = {}

    def __call__(self, prompts: list[list[dict]], responses: list[str]) -> ImplicitScores:
        items = encode(self.tokenizer, prompts, responses)
        kw = dict(pad_id=self.pad_id, batch_size=self.batch_size, workspace_mb=self.workspace_mb,
                  max_batch_tokens=self.max_batch_tokens)
        sp, sr = {}, {}
        pol, n = sequence_logps(self.policy, items, stats=sp, **kw)
        ref, _ = sequence_logps(self.reference, items, stats=sr, **kw)
        self.stats = throughput(sp, sr)
        return ImplicitScores(pol - ref, pol, ref, n)


def throughput(*passes: dict) -> dict:
    """Tokens (real and padded) and tokens/s over forward passes (policy + reference: each token is
    counted once per model that read it)."""
    tokens = sum(p.get("tokens", 0) for p in passes)
    padded = sum(p.get("padded_tokens", 0) for p in passes)
    secs = sum(p.get("seconds", 0.0) for p in passes)
    return {"sequences": passes[0].get("sequences", 0) if passes else 0, "forward_tokens": tokens,
            "padded_tokens": padded, "padding": round(1 - tokens / padded, 4) if padded else 0.0,
            "seconds": round(secs, 3), "tokens_per_s": round(tokens / secs, 1) if secs > 0 else None}
