"""Data: the shipped splits, tokenisation and masking, truncation, collation (padded and packed), the
epoch order and step partition, and every kind of bad input with a message naming file and line."""
import json

import pytest
import torch
from tiny import build_tokenizer

from rdpo_fast.data.records import (
    IGNORE,
    DataError,
    collate,
    epoch_order,
    load_preference_data,
    read_jsonl,
    step_batches,
    steps_per_epoch,
)
from rdpo_fast.data.shipped import default_path


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def _chat(user="What is 2+2?", chosen="4.", rejected="5, obviously."):
    return {"prompt": [{"role": "user", "content": user}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def test_shipped_splits_are_held_out():
    train = [r for _, r in read_jsonl(default_path("train"))]
    held = [r for _, r in read_jsonl(default_path("eval"))]
    assert 300 <= len(train) + len(held) <= 600 and len(held) >= 50
    assert {r["task"] for r in train} == {r["task"] for r in held} == {"safety", "persona", "sycophancy"}
    # Held-out items are unseen: no held-out chosen answer appears among the training ones.
    train_chosen = {r["chosen"][0]["content"] for r in train}
    assert not any(r["chosen"][0]["content"] in train_chosen for r in held)
    assert all(r["chosen"] != r["rejected"] for r in train + held)


def test_chat_tokenisation_masks_prompt(tok, tmp_path):
    path = _write(tmp_path / "d.jsonl", [_chat(), _chat("Name a colour.", "Blue.", "No.")])
    data = load_preference_data(path, tok, max_length=256)
    p = data.pairs[0]
    text = tok.decode(p.prompt + p.chosen)
    assert text == tok.apply_chat_template(_chat()["prompt"] + _chat()["chosen"], tokenize=False)
    assert tok.decode(p.chosen).startswith("4.") and p.chosen[-2] == tok.eos_token_id  # <|im_end|> then "\n"
    b = collate(data, [0, 1], pad_id=tok.pad_token_id)
    assert b.input_ids.shape == b.target.shape and b.input_ids.shape[0] == 4
    for s, (prompt, comp) in enumerate([(q.prompt, c) for q, c in
                                        [(data.pairs[0], data.pairs[0].chosen), (data.pairs[1], data.pairs[1].chosen),
                                         (data.pairs[0], data.pairs[0].rejected),
                                         (data.pairs[1], data.pairs[1].rejected)]]):
        kept = (b.target[s] != IGNORE).nonzero().squeeze(1)
        # Hidden state at t predicts token t+1: the first completion token is predicted from the last
        # prompt position; nothing before is supervised, and pad is never.
        assert kept.tolist() == list(range(len(prompt) - 1, len(prompt) + len(comp) - 1))
        assert b.target[s, kept].tolist() == comp
        assert torch.equal(b.input_ids[s, kept + 1], b.target[s, kept])
        assert b.attention_mask[s].sum() == len(prompt) + len(comp)
    assert b.num_pairs == 2 and b.num_chosen_tokens == len(data.pairs[0].chosen) + len(data.pairs[1].chosen)


def test_string_records_get_eos(tok, tmp_path):
    path = _write(tmp_path / "s.jsonl", [{"prompt": "Q: sky colour?\nA:", "chosen": " blue", "rejected": " green"}])
    data = load_preference_data(path, tok, max_length=64)
    assert data.pairs[0].chosen[-1] == tok.eos_token_id and data.pairs[0].rejected[-1] == tok.eos_token_id
    assert tok.decode(data.pairs[0].prompt) == "Q: sky colour?\nA:"


def test_truncation_counts_and_keeps_prompt_end(tok, tmp_path):
    long_answer = "word " * 80
    rows = [_chat(), _chat("Tell me a long story " + "please " * 30, long_answer, "no"), _chat(chosen=long_answer)]
    path = _write(tmp_path / "t.jsonl", rows)
    data = load_preference_data(path, tok, max_length=60, max_prompt_length=30)
    assert data.num_truncated == 2
    for p in data.pairs:
        assert len(p.prompt) <= 30 and len(p.prompt) + max(len(p.chosen), len(p.rejected)) <= 60
    full = tok.apply_chat_template(rows[1]["prompt"], tokenize=False, add_generation_prompt=True)
    assert tok.decode(data.pairs[1].prompt) in full and full.endswith(tok.decode(data.pairs[1].prompt))
    assert data.max_seq_len <= 60


def test_packed_matches_padded_layout(tok, tmp_path):
    path = _write(tmp_path / "p.jsonl", [_chat(), _chat("Name a colour.", "Blue.", "No.")])
    data = load_preference_data(path, tok, max_length=256)
    pad = collate(data, [1, 0], pad_id=tok.pad_token_id)
    pk = collate(data, [1, 0], pad_id=tok.pad_token_id, packed=True)
    assert torch.equal(pad.target, pk.target)
    grid = torch.full(pad.input_ids.shape, -1, dtype=torch.int64).view(-1)
    grid[pk.scatter_index] = pk.input_ids[0]
    assert torch.equal(grid.view(pad.input_ids.shape)[pad.attention_mask.bool()],
                       pad.input_ids[pad.attention_mask.bool()])
    # position_ids restart at each sequence
    starts = (pk.position_ids[0] == 0).nonzero().squeeze(1)
    assert starts.numel() == 4 and pk.attention_mask is None


def test_soft_labels_scores_and_ref_logps_carried(tok, tmp_path):
    rows = [dict(_chat(), chosen_score=3.0, rejected_score=1.0, ref_chosen_logps=-5.0, ref_rejected_logps=-6.0),
            dict(_chat(), chosen_score=1.0, rejected_score=1.0, ref_chosen_logps=-7.0, ref_rejected_logps=-8.0)]
    data = load_preference_data(_write(tmp_path / "x.jsonl", rows), tok, max_length=64, score_temperature=2.0)
    b = collate(data, [0, 1], pad_id=0)
    assert torch.allclose(b.soft_labels, torch.tensor([torch.sigmoid(torch.tensor(1.0)).item(), 0.5]))
    assert b.ref_chosen.tolist() == [-5.0, -7.0] and b.ref_rejected.tolist() == [-6.0, -8.0]
    given = load_preference_data(_write(tmp_path / "y.jsonl", [dict(_chat(), soft_label=0.8)]), tok, max_length=64)
    assert collate(given, [0], pad_id=0).soft_labels.tolist() == pytest.approx([0.8])
    # A cached reference pass wins over nothing; index by dataset position.
    cached = (torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]))
    b = collate(data, [1], pad_id=0, ref_logps=cached)
    assert b.ref_chosen.tolist() == [2.0] and b.ref_rejected.tolist() == [4.0]


def test_epoch_order_and_step_partition():
    a, b = epoch_order(50, 7, 0), epoch_order(50, 7, 0)
    assert torch.equal(a, b) and not torch.equal(a, epoch_order(50, 7, 1))
    assert sorted(a.tolist()) == list(range(50))
    assert steps_per_epoch(50, batch_size=3, grad_accum=2, world=2) == 4
    # The ranks' micro-batches of one step are exactly that step's slice of the order.
    got = [step_batches(a, 2, batch_size=3, grad_accum=2, rank=r, world=2) for r in range(2)]
    assert all(len(m) == 2 and all(len(x) == 3 for x in m) for m in got)
    assert torch.cat([x for m in got for x in m]).tolist() == a[24:36].tolist()


@pytest.mark.parametrize("lines, message", [
    (['{"prompt": "a", "chosen": "b", "rejected": "c"}', '{"prompt": "a", "chosen": '], ":2: malformed JSON"),
    (['{"prompt": "a", "chosen": "b"}'], ":1: missing field(s) 'rejected'"),
    (['["not", "an", "object"]'], ":1: a record must be a JSON object"),
    (['{"prompt": "a", "chosen": [{"role": "assistant", "content": "b"}], "rejected": "c"}'],
     ":1: prompt, chosen and rejected must all be strings or all be chat messages"),
    (['{"prompt": [{"role": "user"}], "chosen": "b", "rejected": "c"}'], ":1: prompt must be a string or a list"),
    (['{"prompt": "", "chosen": "b", "rejected": "c"}'], ":1: empty prompt"),
    (['{"prompt": "a", "chosen": "b", "rejected": "c", "soft_label": 1.5}'], ":1: soft_label must lie in [0, 1]"),
    (['{"prompt": "a", "chosen": "b", "rejected": "c", "chosen_score": "high", "rejected_score": 1}'],
     ":1: chosen_score must be a finite number"),
    (['{"prompt": "a", "chosen": "b", "rejected": "c", "soft_label": 0.5}',
      '{"prompt": "a", "chosen": "b", "rejected": "c"}'],
     ":2: field 'soft_label' is missing"),
    (['{"prompt": "a", "chosen": "b", "rejected": "c", "chosen_score": 1}'], "come together"),
    (["", "   "], "no records (the file is empty)"),
    ([], "no records (the file is empty)"),
])
def test_bad_records(tmp_path, lines, message):
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as e:
        read_jsonl(path)
    assert message in str(e.value) and str(path) in str(e.value)


def test_bad_files_and_lengths(tok, tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        read_jsonl(str(tmp_path / "nope.jsonl"))
    long_prompt = _write(tmp_path / "long.jsonl", [_chat(), _chat("x " * 200)])
    with pytest.raises(DataError, match=r"long.jsonl:2: prompt has \d+ tokens, which leaves no room"):
        load_preference_data(long_prompt, tok, max_length=64)
    with pytest.raises(ValueError, match="max_prompt_length must be in"):
        load_preference_data(long_prompt, tok, max_length=64, max_prompt_length=64)
    mixed = _write(tmp_path / "mixed.jsonl", [_chat(), {"prompt": "a", "chosen": "b", "rejected": "c"}])
    with pytest.raises(DataError, match="mixed.jsonl:2: mixes string and chat-message records"):
        load_preference_data(mixed, tok, max_length=64)
    no_template = build_tokenizer()
    no_template.chat_template = None
    with pytest.raises(DataError, match="no chat template"):
        load_preference_data(_write(tmp_path / "c.jsonl", [_chat()]), no_template, max_length=64)
