"""The implicit reward of a candidate equals the oracle's sum of policy log-probs minus reference
log-probs (float64, full logits), whatever the batching; and batched generation with the KV cache."""
import pytest
import torch

from rdpo_fast.lm.chat import assistant, completion_text, user_turn
from rdpo_fast.lm.generation import GenerationSettings, generate
from rdpo_fast.models import loading as modeling
from rdpo_fast.oracle import ref_sequence_logprobs
from rdpo_fast.pipelines.implicit import ImplicitReward, encode, length_batches


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tiny import build_model, build_tokenizer

    tok = build_tokenizer()
    return build_model(tok, seed=0).eval(), build_model(tok, seed=1).eval(), tok


PROMPTS = [user_turn("How do I bake bread?"), user_turn("Is the Moon made of cheese? I think so.", system=None),
           user_turn("Name a colour."), user_turn("Say hi.")]
RESPONSES = ["Mix flour, water, yeast and salt, knead, let it rise, then bake it.", "No, it is made of rock.",
             "Blue.", "Hi there! How can I help you today? I am happy to answer any question you have."]


def oracle_logps(model, tokenizer, prompt, response):
    """Sum of log p(token) over the completion, one sequence at a time, from full float64 logits."""
    p = tokenizer(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True),
                  add_special_tokens=False)["input_ids"]
    c = tokenizer(completion_text(tokenizer, prompt, response), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
        hidden = modeling.decoder(model)(input_ids=ids).last_hidden_state
        weight = modeling.output_weight(model).detach()
    logp = logits.log_softmax(-1)
    direct = sum(float(logp[len(p) - 1 + j, t]) for j, t in enumerate(c))
    labels = torch.full((1, ids.shape[1]), -100)
    labels[0, len(p) - 1: ids.shape[1] - 1] = torch.tensor(c)
    sums, counts = ref_sequence_logprobs(hidden.double(), weight.double(), labels)
    assert float(sums[0]) == pytest.approx(direct, abs=1e-6) and int(counts[0]) == len(c)
    return direct, len(c)


@pytest.mark.parametrize("batch_size,max_tokens", [(1, None), (3, None), (8, 60)])
def test_implicit_reward_equals_the_oracle(models, batch_size, max_tokens):
    pol, ref, tok = models
    reward = ImplicitReward(pol, ref, tok, batch_size=batch_size, max_batch_tokens=max_tokens)
    s = reward(PROMPTS, RESPONSES)
    st = reward.stats  # the pass reports its tokens and throughput
    assert st["sequences"] == 4 and st["forward_tokens"] > 0 and st["tokens_per_s"] > 0
    assert st["padded_tokens"] >= st["forward_tokens"] and (batch_size > 1 or st["padding"] == 0)
    assert s.reward.dtype == torch.float64
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        lp, n = oracle_logps(pol, tok, p, r)
        lr, _ = oracle_logps(ref, tok, p, r)
        assert float(s.policy_logps[i]) == pytest.approx(lp, abs=2e-3)
        assert float(s.reference_logps[i]) == pytest.approx(lr, abs=2e-3)
        assert float(s.reward[i]) == pytest.approx(lp - lr, abs=3e-3)
        assert int(s.num_tokens[i]) == n


def test_token_budgeted_batches():
    lengths = [30, 5, 12, 12, 40, 7, 100, 3]
    for size, budget in [(8, None), (3, None), (8, 40), (2, 25), (8, 1)]:
        batches = length_batches(lengths, size, budget)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        flat = [lengths[i] for b in batches for i in b]
        assert flat == sorted(lengths)  # in order of length: little padding
        for b in batches:
            assert len(b) <= size
            if budget is not None and len(b) > 1:
                assert len(b) * max(lengths[i] for i in b) <= budget
    assert length_batches(lengths, 8, 40) == [[7, 1, 5], [2, 3], [0], [4], [6]]
    with pytest.raises(ValueError, match="max_batch_tokens"):
        length_batches(lengths, 8, 0)


def test_encoding_matches_training_tokenisation(models):
    # The scored completion is exactly what rdpo_fast.data.records trains on for the same chat record.
    import json
    import tempfile

    from rdpo_fast.data.records import load_preference_data

    _, _, tok = models
    items = encode(tok, PROMPTS[:2], RESPONSES[:2])
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for p, r, o in zip(PROMPTS[:2], RESPONSES[:2], RESPONSES[1::-1]):
            f.write(json.dumps({"prompt": p, "chosen": assistant(r), "rejected": assistant(o)}) + "\n")
    data = load_preference_data(f.name, tok, max_length=512)
    for e, pair in zip(items, data.pairs):
        assert e.prompt == pair.prompt and e.completion == pair.chosen


def test_implicit_reward_rejects_mismatched_models(models, tmp_path):
    pol, _, tok = models
    from tiny import build_model, build_tokenizer

    small = build_model(build_tokenizer(vocab_size=300))
    with pytest.raises(ValueError, match="vocabular"):
        ImplicitReward(pol, small, tok)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        encode(tok, PROMPTS[:2], RESPONSES[:1])


def test_batched_generation_with_kv_cache(models):
    pol, _, tok = models
    s = GenerationSettings(max_new_tokens=6, temperature=1.0, batch_size=4, progress=False)
    out = generate(pol, tok, PROMPTS, num_samples=3, settings=s)
    assert len(out) == 4 and all(len(o) == 3 for o in out)
    assert all(x.num_tokens <= 6 and (x.finished or x.num_tokens == 6) for o in out for x in o)
    assert len({x.text for x in out[0]}) > 1  # sampled
    assert [[x.text for x in o] for o in generate(pol, tok, PROMPTS, num_samples=3, settings=s)] == \
        [[x.text for x in o] for o in out]  # seeded
    # Greedy: left padding in a batch does not change a prompt's continuation.
    g = GenerationSettings(max_new_tokens=6, temperature=0.0, batch_size=4, progress=False)
    batched = generate(pol, tok, PROMPTS, settings=g)
    alone = generate(pol, tok, PROMPTS[1:2], settings=g)
    assert batched[1][0].text == alone[0][0].text
    assert tok.padding_side == "right"  # restored
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(pol, tok, PROMPTS, settings=GenerationSettings(max_new_tokens=0))
    with pytest.raises(ValueError, match="greedy"):
        generate(pol, tok, PROMPTS, num_samples=2, settings=g)
