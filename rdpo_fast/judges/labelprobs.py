"""log P(continuation string | prompt) of a causal LM for a few short continuations per prompt, in one
batched forward pass, without generating.

Each continuation (a verdict label such as "A", " A", "7]]", "-5]]") is scored as a string, through the
tokens the tokenizer gives the whole text prompt + continuation. Where that tokenisation changes the
prompt's own last tokens (BPE merges across the boundary: "[[" + "-5" becomes "[", "[-", "5"), the string
probability is P(new tail | shared prefix) / P(prompt's tail | shared prefix), so every label is read on
the tokenisation the model was trained on, not on a path it never saw.

One forward per batch of prompts: the shared prefixes are left-padded, and after them every
continuation's tokens (all but its last) are packed into the same row as branches of a tree: a 4D
attention mask lets each branch see the prefix and its own earlier tokens only, and position ids
continue from the prefix, so each branch is scored exactly as if it were alone. The next-token
distribution at the prefix's last position scores every branch's first token. With single-token labels
and no boundary merge there are no branch inputs and the forward is the plain prompt batch.

Identical prompts are scored once, and batches are formed in a fixed order (length, then text), so the
same set of prompts always gives bit-identical numbers however the caller ordered them.
"""
from __future__ import annotations

import inspect
import sys
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Attention implementations that accept a custom 4D mask (the branches' tree).
TREE_ATTENTION = ("sdpa", "eager")


class LabelProbError(ValueError):
    """Prompts or continuations that cannot be scored as asked."""


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class _Plan:
    """One prompt's shared prefix and its branches: branch 0 is the prompt's own tail (when a merge cut the
    prefix short), then one branch per continuation."""

    __slots__ = ("prefix", "branches", "has_base", "packed_len")

    def __init__(self, prompt_ids: list[int], cont_ids: list[list[int]]):
        cut = len(prompt_ids)
        for full in cont_ids:
            k = _common_prefix(prompt_ids, full)
            if k == len(full):
                raise LabelProbError("a continuation adds no token to the prompt")
            cut = min(cut, k)
        if cut == 0:
            raise LabelProbError("a continuation re-tokenises the whole prompt; nothing is left to condition on")
        self.prefix = prompt_ids[:cut]
        self.has_base = cut < len(prompt_ids)
        self.branches = ([prompt_ids[cut:]] if self.has_base else []) + [full[cut:] for full in cont_ids]
        self.packed_len = sum(len(b) - 1 for b in self.branches)


def _tree_inputs(plans: list[_Plan], pad_id: int):
    """input_ids, position_ids and segment ids [B, P+L] of a batch; P = longest prefix, L = longest
    packed branch region; prefixes are left-padded, branch regions right-padded. Segment 0 is a prefix
    token, k >= 1 a token of branch k-1, -1 padding."""
    B = len(plans)
    P = max(len(p.prefix) for p in plans)
    L = max(p.packed_len for p in plans)
    ids = torch.full((B, P + L), pad_id, dtype=torch.long)
    pos = torch.zeros((B, P + L), dtype=torch.long)
    seg = torch.full((B, P + L), -1, dtype=torch.long)
    offsets = []
    for r, plan in enumerate(plans):
        n = len(plan.prefix)
        ids[r, P - n:P] = torch.tensor(plan.prefix)
        pos[r, P - n:P] = torch.arange(n)
        seg[r, P - n:P] = 0
        row_offsets, o = [], P
        for k, br in enumerate(plan.branches, 1):
            m = len(br) - 1  # inputs: every token but the last
            row_offsets.append(o)
            if m:
                ids[r, o:o + m] = torch.tensor(br[:-1])
                pos[r, o:o + m] = n + torch.arange(m)
                seg[r, o:o + m] = k
            o += m
        offsets.append(row_offsets)
    return ids, pos, seg, offsets, P


def _tree_mask(seg: torch.Tensor, attn: str, dtype: torch.dtype) -> torch.Tensor:
    """The 4D mask [B, 1, S, S]: a token sees earlier prefix tokens and earlier tokens of its own branch."""
    S = seg.shape[1]
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    qi, kj = seg[:, :, None], seg[:, None, :]
    allow = causal & (qi >= 0) & (kj >= 0) & ((kj == 0) | (kj == qi))
    allow |= torch.eye(S, dtype=torch.bool)  # padding attends to itself only: no empty softmax row (NaN)
    if attn == "sdpa":
        return allow[:, None]
    # eager adds the mask to the scores
    return torch.zeros(allow.shape, dtype=dtype).masked_fill_(~allow, torch.finfo(dtype).min)[:, None]


def _forward_last(model, ids, mask, pos, keep: int) -> torch.Tensor:
    kw = dict(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        return model(**kw, logits_to_keep=keep).logits[:, -keep:]
    return model(**kw).logits[:, -keep:]


@torch.inference_mode()
def continuation_logprobs(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                          continuations: list[str], *, batch_size: int = 8, progress: bool = False,
                          desc: str = "judge") -> torch.Tensor:
    """[len(prompts), len(continuations)] float64: log P(continuation | prompt) for every pair. The model
    scores through its own forward, so a logit scale or final-logit softcap it defines is applied."""
    if batch_size < 1:
        raise LabelProbError(f"batch_size must be >= 1, got {batch_size}")
    if not continuations or any(not c for c in continuations):
        raise LabelProbError(f"continuations must be non-empty strings, got {continuations!r}")
    if not prompts:
        return torch.zeros((0, len(continuations)), dtype=torch.float64)
    distinct = sorted(set(prompts))
    enc = tokenizer(distinct, add_special_tokens=False)["input_ids"]
    flat = [p + c for p in distinct for c in continuations]
    full = tokenizer(flat, add_special_tokens=False)["input_ids"]
    C = len(continuations)
    plans = []
    for i, ids in enumerate(enc):
        if not ids:
            raise LabelProbError("a judge prompt tokenises to nothing")
        plans.append(_Plan(list(ids), [list(f) for f in full[i * C:(i + 1) * C]]))
    attn = getattr(model.config, "_attn_implementation", None) or "eager"
    if any(p.packed_len for p in plans) and attn not in TREE_ATTENTION:
        raise LabelProbError(f"these verdict labels span several tokens, which the judge scores as branches of "
                             f"one forward with a custom attention mask; attn_implementation={attn!r} does not take "
                             f"one: load the judge with attn_implementation='sdpa' (or 'eager')")
    order = sorted(range(len(plans)), key=lambda i: (len(plans[i].prefix) + plans[i].packed_len, distinct[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad = 0 if pad is None else int(pad)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out = torch.empty((len(plans), C), dtype=torch.float64)
    was_training = model.training
    model.eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plans), desc=desc, dynamic_ncols=True, file=sys.stderr)
    try:
        for s in range(0, len(order), batch_size):
            idx = order[s: s + batch_size]
            batch = [plans[i] for i in idx]
            ids, pos, seg, offsets, P = _tree_inputs(batch, pad)
            L = ids.shape[1] - P
            # no branch inputs: the plain left-padded prompt batch and its 2D padding mask
            mask = _tree_mask(seg, attn, dtype) if L else (seg == 0).long()
            logits = _forward_last(model, ids.to(device), mask.to(device), pos.to(device), L + 1).float()
            # Every branch token's log-prob, gathered where the logits are: (row, kept position, token).
            # Position 0 is the prefix's last token; branch token j >= 1 is predicted at its packed input
            # j-1, kept position o - P + j.
            rows, cols, toks, owner = [], [], [], []
            for r, plan in enumerate(batch):
                for b, (br, o) in enumerate(zip(plan.branches, offsets[r])):
                    for j, t in enumerate(br):
                        rows.append(r)
                        cols.append(0 if j == 0 else o - P + j)
                        toks.append(t)
                        owner.append((r, b))
            rows_t, cols_t = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
            picked = logits[rows_t, cols_t, torch.tensor(toks, device=device)]
            lse = torch.logsumexp(logits, dim=-1)[rows_t, cols_t]
            token_lp = (picked - lse).double().cpu().tolist()
            sums: dict = {}
            for key, v in zip(owner, token_lp):
                sums[key] = sums.get(key, 0.0) + v
            for r, (i, plan) in enumerate(zip(idx, batch)):
                scores = torch.tensor([sums[(r, b)] for b in range(len(plan.branches))], dtype=torch.float64)
                out[i] = scores[1:] - scores[0] if plan.has_base else scores
            if bar is not None:
                bar.update(len(idx))
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    row = {p: i for i, p in enumerate(distinct)}
    return out[[row[p] for p in prompts]]
