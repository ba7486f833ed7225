"""Preference data: JSONL reading and validation, tokenisation, and collation into the loss's layout.

Records follow TRL's conventions (SPEC section 5): "prompt", "chosen", "rejected", each a string or a
list of chat messages ({"role", "content"}), plus optional "chosen_score"/"rejected_score",
"soft_label", "ref_chosen_logps"/"ref_rejected_logps". Other fields are ignored. An optional field must
be on every record or on none, so a half-labelled file fails loudly instead of training on defaults.

Chat messages go through the tokenizer's chat template; the completion is whatever the template adds
after the generation prompt, so the assistant's end-of-turn token is learnt. Plain strings are
tokenised as they are, with EOS appended to each completion. Prompt tokens are never supervised.

Batches put the B chosen sequences first, then the B rejected ones ([2B, T], the fused loss's layout);
target[t] is the token at t+1 where that token is part of the completion, else IGNORE. The packed
(padding-free) layout runs the model on one [1, N] row whose position_ids restart per sequence, and
carries the flat index of each packed token in the padded [2B, T] grid for the scatter before the loss.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from rdpo_fast import io as textfile

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE = -100
OPTIONAL_FIELDS = ("chosen_score", "rejected_score", "soft_label", "ref_chosen_logps", "ref_rejected_logps")


class DataError(ValueError):
    """A bad data file or record; the message names the file and line."""


# ---------------------------------------------------------------------------------------- reading
def read_jsonl(path: str, normalise: Callable[[Any, str], Any] | None = None) -> list[tuple[int, dict]]:
    """[(line number, record)] of a JSONL file, blank lines skipped; every record validated, after
    normalise(record, "file:line") where given (rdpo_fast.data.sources: column names, implicit prompts)."""
    if not os.path.isfile(path):
        raise DataError(f"data file not found: {path}")
    records = []
    for lineno, rec in textfile.read_jsonl(path, DataError):
        if normalise is not None:
            rec = normalise(rec, f"{path}:{lineno}")
        validate_record(rec, f"{path}:{lineno}")
        records.append((lineno, rec))
    if not records:
        raise DataError(f"{path}: no records (the file is empty); a preference dataset needs at least one pair")
    check_optional_fields(records, path)
    return records


def check_optional_fields(records: list[tuple[int | str, dict]], source: str) -> None:
    """An optional field is on every record or on none, and the paired ones (chosen_score and
    rejected_score, ref_chosen_logps and ref_rejected_logps) come together. records: [(location, record)],
    a location a line number or a dataset's "row i"."""
    def at(loc):
        return f"line {loc}" if isinstance(loc, int) else loc

    for name in OPTIONAL_FIELDS:
        have = [loc for loc, r in records if name in r]
        if have and len(have) != len(records):
            missing = next(loc for loc, r in records if name not in r)
            raise DataError(f"{source}:{missing}: field {name!r} is missing, but other records (first at "
                            f"{at(have[0])}) have it; give it on every record or on none")
    first = records[0][1]
    for a, b in (("chosen_score", "rejected_score"), ("ref_chosen_logps", "ref_rejected_logps")):
        if (a in first) != (b in first):
            raise DataError(f"{source}: {a} and {b} come together; only one is given")


def validate_record(rec: Any, where: str) -> None:
    """A DataError naming `where` ("file:line") unless rec is a preference record in TRL's fields (see the
    module docstring)."""
    if not isinstance(rec, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(rec).__name__}")
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in rec]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(map(repr, missing))} (need 'prompt', 'chosen', "
                        "'rejected')")
    kinds = {k: _kind(rec[k], k, where) for k in ("prompt", "chosen", "rejected")}
    if len(set(kinds.values())) != 1:
        raise DataError(f"{where}: prompt, chosen and rejected must all be strings or all be chat messages, "
                        f"got {kinds}")
    if kinds["prompt"] == "text" and not rec["prompt"]:
        raise DataError(f"{where}: empty prompt")
    for k in OPTIONAL_FIELDS:
        if k in rec:
            v = rec[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise DataError(f"{where}: {k} must be a finite number, got {v!r}")
    if "soft_label" in rec and not 0.0 <= rec["soft_label"] <= 1.0:
        raise DataError(f"{where}: soft_label must lie in [0, 1], got {rec['soft_label']}")


def _kind(v, name, where):
    if isinstance(v, str):
        return "text"
    if isinstance(v, list) and v:
        for m in v:
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise DataError(f"{where}: {name} must be a string or a list of {{'role': str, 'content': str}} "
                                f"messages; got element {m!r}")
        return "messages"
    raise DataError(f"{where}: {name} must be a non-empty string or list of chat messages, got {v!r}")


# ---------------------------------------------------------------------------------------- tokenising
@dataclass
class Pair:
    prompt: list[int]
    chosen: list[int]  # completion tokens only
    rejected: list[int]
    source: str  # "file:line", for error messages
    soft_label: float | None = None
    ref_chosen: float | None = None
    ref_rejected: float | None = None


@dataclass
class PreferenceData:
    pairs: list[Pair]
    path: str
    num_truncated: int = 0  # pairs whose prompt or a completion was cut to fit
    has_soft_labels: bool = False
    has_ref_logps: bool = False
    max_seq_len: int = 0

    def __len__(self):
        return len(self.pairs)


def load_preference_data(path: str, tokenizer: PreTrainedTokenizerBase, *, max_length: int,
                         max_prompt_length: int | None = None, score_temperature: float = 1.0,
                         records: list | None = None) -> PreferenceData:
    """Reads, validates and tokenises a JSONL file (or `records`, [(location, record)] already read and
    validated from `path` by rdpo_fast.data.sources). Prompts longer than max_prompt_length keep their end;
    completions are cut to fit max_length (prompt + completion); both are counted in num_truncated. A
    prompt that leaves no room for a completion is an error. Scores become soft labels
    p = sigmoid((chosen_score - rejected_score) / score_temperature) where no soft_label is given."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (a prompt token and a completion token), got {max_length}")
    if max_prompt_length is not None and not 1 <= max_prompt_length < max_length:
        raise ValueError(f"max_prompt_length must be in [1, max_length={max_length}), got {max_prompt_length}")
    if score_temperature <= 0:
        raise ValueError(f"score_temperature must be > 0, got {score_temperature}")
    records = read_jsonl(path) if records is None else records
    eos = tokenizer.eos_token_id
    chat = isinstance(records[0][1]["prompt"], list)
    if chat and not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{path}: records are chat messages but the tokenizer has no chat template")
    if not chat and eos is None:
        raise DataError(f"{path}: string completions get EOS appended, but the tokenizer has no eos_token")
    prompts, chosen, rejected = [], [], []
    for lineno, rec in records:
        where = f"{path}:{lineno}"
        if isinstance(rec["prompt"], list) != chat:
            raise DataError(f"{where}: mixes string and chat-message records; use one format per file")
        p, c, r = _render(tokenizer, rec, where) if chat else (rec["prompt"], rec["chosen"], rec["rejected"])
        prompts.append(p)
        chosen.append(c)
        rejected.append(r)
    # One batched call per field: fast tokenizers do the whole file at once.
    p_ids = tokenizer(prompts, add_special_tokens=not chat)["input_ids"]
    c_ids = tokenizer(chosen, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(rejected, add_special_tokens=False)["input_ids"]
    pairs, n_trunc = [], 0
    for i, (lineno, rec) in enumerate(records):
        where = f"{path}:{lineno}"
        p, c, r = list(p_ids[i]), list(c_ids[i]), list(r_ids[i])
        if not chat:
            c, r = c + [eos], r + [eos]
        if not p:
            raise DataError(f"{where}: the prompt tokenises to nothing")
        cut = False
        if max_prompt_length is not None and len(p) > max_prompt_length:
            p, cut = p[-max_prompt_length:], True
        room = max_length - len(p)
        if room < 1:
            raise DataError(f"{where}: prompt has {len(p)} tokens, which leaves no room for the completion "
                            f"within max_length={max_length}; raise max_length or set max_prompt_length "
                            "to truncate prompts")
        if len(c) > room or len(r) > room:
            c, r, cut = c[:room], r[:room], True
        n_trunc += cut
        soft = rec.get("soft_label")
        if soft is None and "chosen_score" in rec:
            soft = 1.0 / (1.0 + math.exp(-(rec["chosen_score"] - rec["rejected_score"]) / score_temperature))
        pairs.append(Pair(p, c, r, where, soft, rec.get("ref_chosen_logps"), rec.get("ref_rejected_logps")))
    first = records[0][1]
    return PreferenceData(
        pairs, path, n_trunc,
        has_soft_labels="soft_label" in first or "chosen_score" in first,
        has_ref_logps="ref_chosen_logps" in first,
        max_seq_len=max(len(q.prompt) + max(len(q.chosen), len(q.rejected)) for q in pairs))


def _render(tokenizer, rec, where):
    """Chat records as text: (prompt with the generation prompt, chosen completion, rejected completion)."""
    prompt = tokenizer.apply_chat_template(rec["prompt"], tokenize=False, add_generation_prompt=True)
    out = [prompt]
    for key in ("chosen", "rejected"):
        full = tokenizer.apply_chat_template(rec["prompt"] + rec[key], tokenize=False)
        if not full.startswith(prompt):
            raise DataError(f"{where}: the chat template renders prompt+{key} with a different prefix than the "
                            "prompt alone, so the completion cannot be split off")
        out.append(full[len(prompt):])
    return tuple(out)


# ---------------------------------------------------------------------------------------- batching
@dataclass
class Batch:
    """One micro-batch of B pairs in the loss's layout; tensors on CPU until .to(device)."""
    input_ids: torch.Tensor  # [2B, T] padded, or [1, N] packed
    target: torch.Tensor  # [2B, T] next-token labels, IGNORE on prompt and pad
    attention_mask: torch.Tensor | None  # [2B, T] (padded only)
    position_ids: torch.Tensor | None  # [1, N] (packed only), restarting at 0 per sequence
    scatter_index: torch.Tensor | None  # [N] flat index into the [2B, T] grid (packed only)
    pair_index: torch.Tensor  # [B] positions of the pairs in their dataset
    soft_labels: torch.Tensor | None = None
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None
    # Completion tokens per row of target, as host ints (the collator knows them): the fused loss takes
    # them as host_counts and then reads nothing back from the device before its kernels run.
    host_counts: tuple[int, ...] | None = None

    @property
    def num_pairs(self) -> int:
        return self.target.shape[0] // 2

    @property
    def num_chosen_tokens(self) -> int:
        if self.host_counts is not None:
            return sum(self.host_counts[: self.num_pairs])
        return int((self.target[: self.num_pairs] != IGNORE).sum())

    def to(self, device: torch.device | str) -> Batch:
        moved = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                 for k, v in self.__dict__.items()}
        return Batch(**moved)


def collate(data: PreferenceData, indices: Iterable[int], *, pad_id: int, packed: bool = False,
            ref_logps: tuple[torch.Tensor, torch.Tensor] | None = None) -> Batch:
    """Batch of the pairs at `indices`. ref_logps: per-pair reference log-probs for the whole dataset
    (a cached reference pass); otherwise the records' own ref logps are used where they have them."""
    idx = [int(i) for i in indices]
    if not idx:
        raise ValueError("collate needs at least one pair")
    pairs = [data.pairs[i] for i in idx]
    seqs = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    plens = [len(p.prompt) for p in pairs] * 2
    T = max(len(s) for s in seqs)
    n = len(seqs)
    target = torch.full((n, T), IGNORE, dtype=torch.int64)
    for s, (ids, pl) in enumerate(zip(seqs, plens)):
        # Position t predicts token t+1: completion tokens start at index pl, predicted from pl-1.
        target[s, pl - 1: len(ids) - 1] = torch.tensor(ids[pl:], dtype=torch.int64)
    if packed:
        input_ids = torch.tensor([t for s in seqs for t in s], dtype=torch.int64).unsqueeze(0)
        position_ids = torch.cat([torch.arange(len(s), dtype=torch.int64) for s in seqs]).unsqueeze(0)
        scatter = torch.cat([s * T + torch.arange(len(ids), dtype=torch.int64) for s, ids in enumerate(seqs)])
        attention_mask = None
    else:
        input_ids = torch.full((n, T), pad_id, dtype=torch.int64)
        attention_mask = torch.zeros((n, T), dtype=torch.int64)
        for s, ids in enumerate(seqs):
            input_ids[s, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
            attention_mask[s, : len(ids)] = 1
        position_ids = scatter = None
    batch = Batch(input_ids, target, attention_mask, position_ids, scatter, torch.tensor(idx, dtype=torch.int64),
                  host_counts=tuple(len(ids) - pl for ids, pl in zip(seqs, plens)))
    if data.has_soft_labels:
        batch.soft_labels = torch.tensor([p.soft_label for p in pairs], dtype=torch.float32)
    if ref_logps is not None:
        sel = batch.pair_index
        batch.ref_chosen, batch.ref_rejected = ref_logps[0][sel].float(), ref_logps[1][sel].float()
    elif data.has_ref_logps:
        batch.ref_chosen = torch.tensor([p.ref_chosen for p in pairs], dtype=torch.float32)
        batch.ref_rejected = torch.tensor([p.ref_rejected for p in pairs], dtype=torch.float32)
    return batch


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    """The pair order of one epoch: a function of (seed, epoch) only, so a resumed run replays it."""
    if not shuffle:
        return torch.arange(n, dtype=torch.int64)
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)


def step_batches(order: torch.Tensor, step_in_epoch: int, *, batch_size: int, grad_accum: int, rank: int,
                 world: int) -> list[torch.Tensor]:
    """This rank's micro-batches (pair indices) of one optimizer step. A step takes
    batch_size * grad_accum * world consecutive pairs of the epoch order; rank r gets its contiguous share,
    cut into grad_accum micro-batches."""
    per_step = batch_size * grad_accum * world
    start = step_in_epoch * per_step
    mine = order[start + rank * batch_size * grad_accum: start + (rank + 1) * batch_size * grad_accum]
    return list(mine.split(batch_size))


def steps_per_epoch(n: int, *, batch_size: int, grad_accum: int, world: int) -> int:
    """Whole optimizer steps per epoch; the last incomplete global batch is dropped (its pairs change
    every epoch with the shuffle)."""
    return n // (batch_size * grad_accum * world)
