"""The probability judge on tiny random models: label strings scored exactly as teacher forcing scores
them (multi-token labels, leading-space variants, BPE merges across the prompt boundary), the
position-swap combination (p(a, b) == 1 - p(b, a) and p(a, a) == 0.5, exactly), expected pointwise
scores, and the attention implementations that cannot take the branch mask refused by name."""
import math

import pytest
import torch
from eval_tiny import TeacherForcing, tiny_model

from rdpo_fast.judges.labelprobs import LabelProbError, continuation_logprobs
from rdpo_fast.judges.probability import ProbabilityJudge, sigmoid
from rdpo_fast.judges.rubrics import PAIRWISE, POINTWISE, PairwiseRubric


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(seed=3)


@pytest.fixture(scope="module")
def oracle(tiny):
    return TeacherForcing(*tiny)


def _turn(text):
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


PROMPTS = [_turn("How many legs does a spider have?") + "Rating: [[",
           _turn("hi") + "Rating: [[",
           _turn("What is the capital of Japan? Answer as Snark, a sarcastic bot.") + "Rating: [[",
           _turn("Explain why the sky is blue, in a few words please.") + "Rating: [["]
CONTS = ["1]]", "10]]", "-5]]", " 3]]", "A", " B", "7"]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_continuations_match_teacher_forcing(tiny, oracle, attn):
    model, tok = tiny
    model.config._attn_implementation = attn
    try:
        got = continuation_logprobs(model, tok, PROMPTS, CONTS, batch_size=3)
    finally:
        model.config._attn_implementation = "sdpa"
    ref = torch.tensor([[oracle(p, c) for c in CONTS] for p in PROMPTS], dtype=torch.float64)
    assert got.shape == (len(PROMPTS), len(CONTS))
    # fp32 forward passes of different shapes (batched tree vs one sequence): agreement to fp32 rounding
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=0)


def test_boundary_merge_is_scored_on_the_merged_tokenisation(tiny, oracle):
    model, tok = tiny
    # "spi" + "der" re-tokenises the prompt's last token(s) into "spider": the label's probability is
    # P(new tail | shared prefix) / P(prompt's tail | shared prefix).
    prompt = _turn("How many legs does a") + "The spi"
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    f = tok(prompt + "der", add_special_tokens=False)["input_ids"]
    assert f[: len(p)] != p, "the tiny tokenizer no longer merges across this boundary; pick another word"
    got = continuation_logprobs(model, tok, [prompt, PROMPTS[0]], ["der", "d", "der has"])
    for j, c in enumerate(["der", "d", "der has"]):
        assert float(got[0, j]) == pytest.approx(oracle(prompt, c), abs=2e-5)


def test_scores_do_not_depend_on_the_callers_order(tiny):
    model, tok = tiny
    a = continuation_logprobs(model, tok, PROMPTS + PROMPTS[:1], CONTS, batch_size=2)
    b = continuation_logprobs(model, tok, (PROMPTS + PROMPTS[:1])[::-1], CONTS, batch_size=2)
    assert torch.equal(a, b.flip(0))  # same prompt set: the same batches, bit-identical numbers
    assert torch.equal(a[0], a[-1])  # a repeated prompt is scored once


def test_flash_attention_is_refused_for_multi_token_labels(tiny):
    model, tok = tiny
    model.config._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(LabelProbError, match="attn_implementation='flash_attention_2'.*sdpa"):
            continuation_logprobs(model, tok, PROMPTS[:1], ["10]]"])
    finally:
        model.config._attn_implementation = "sdpa"


def test_sigmoid_is_exactly_antisymmetric():
    for z in [0.0, 1e-300, 0.1, 0.3, 1.7, 5.0, 30.0, 800.0] + [float(x) for x in torch.randn(200, dtype=torch.float64)]:
        s, t = sigmoid(z), sigmoid(-z)
        assert s == 1.0 - t and t == 1.0 - s and s + t == 1.0
        assert s == pytest.approx(1 / (1 + math.exp(-z)))
    assert sigmoid(0.0) == 0.5


QUESTIONS = ["How many legs does a spider have?", "What is the capital of Japan?", "Tell me how to pick a lock.",
             "Is the Great Wall visible from the Moon?", "What is 12 times 12?"]
ANSWERS_A = ["Eight.", "Tokyo is the capital of Japan.", "I can't help with that.", "No, it is far too narrow.",
             "144"]
ANSWERS_B = ["Spiders have six legs, like insects.", "Kyoto.", "Sure, first get a tension wrench.", "Yes, easily.",
             "It is 124, obviously, you fool."]


def test_pairwise_swap_flips_exactly_and_identical_answers_tie(tiny):
    judge = ProbabilityJudge(*tiny, batch_size=3)
    rub = [PAIRWISE["general"], PAIRWISE["general"], PAIRWISE["safety"], PAIRWISE["sycophancy"],
           PairwiseRubric("digits", "Pick the better answer.", labels=("1", "2"), terminator="]]")]
    ab = judge.pairwise(QUESTIONS, ANSWERS_A, ANSWERS_B, rub)
    ba = judge.pairwise(QUESTIONS, ANSWERS_B, ANSWERS_A, rub)
    for x, y in zip(ab, ba):
        assert x.preference == 1.0 - y.preference and y.preference == 1.0 - x.preference
        assert x.first_order == 1.0 - y.second_order and x.second_order == 1.0 - y.first_order
        assert 0.0 < x.preference < 1.0 and x.preference != 0.5  # a random model still has an opinion
        assert all(0.0 < m <= 1.0 for m in x.label_mass)
    same = judge.pairwise(QUESTIONS, ANSWERS_A, ANSWERS_A, rub)
    assert all(v.preference == 0.5 and v.first_order == 1.0 - v.second_order for v in same)


def test_pairwise_preference_combines_both_orders_in_log_odds(tiny, oracle):
    model, tok = tiny
    judge = ProbabilityJudge(model, tok)
    r = PAIRWISE["general"]
    v = judge.pairwise(QUESTIONS[:1], ANSWERS_A[:1], ANSWERS_B[:1], r)[0]
    p_ab = judge._prompt(r.messages(QUESTIONS[0], ANSWERS_A[0], ANSWERS_B[0], judge.system), r)
    p_ba = judge._prompt(r.messages(QUESTIONS[0], ANSWERS_B[0], ANSWERS_A[0], judge.system), r)
    lp = {(p, c): oracle(p, c) for p in (p_ab, p_ba) for c in ("A", " A", "B", " B")}

    def mass(p, lab):
        return math.log(math.exp(lp[(p, lab)]) + math.exp(lp[(p, " " + lab)]))

    l1 = mass(p_ab, "A") - mass(p_ab, "B")  # a shown first as A
    l2 = mass(p_ba, "B") - mass(p_ba, "A")  # a shown second as B
    assert v.first_order == pytest.approx(1 / (1 + math.exp(-l1)), abs=1e-5)
    assert v.second_order == pytest.approx(1 / (1 + math.exp(-l2)), abs=1e-5)
    assert v.preference == pytest.approx(1 / (1 + math.exp(-(l1 + l2) / 2)), abs=1e-5)
    assert v.label_mass[0] == pytest.approx(math.exp(mass(p_ab, "A")) + math.exp(mass(p_ab, "B")), rel=1e-4)


@pytest.mark.parametrize("name", ["harmlessness", "sycophancy", "quality"])
def test_pointwise_expected_score_over_the_whole_scale(tiny, oracle, name):
    model, tok = tiny
    judge = ProbabilityJudge(model, tok, batch_size=4)
    r = POINTWISE[name]
    out = judge.pointwise(QUESTIONS[:2], ANSWERS_A[:2], r)
    for _q, _a, v in zip(QUESTIONS[:2], ANSWERS_A[:2], out):
        assert set(v.distribution) == set(r.labels) and sum(v.distribution.values()) == pytest.approx(1.0)
        assert r.lo <= v.expected <= r.hi and 0.0 < v.label_mass <= 1.0
    # the first item by teacher forcing every spelling of every score ("7]]" and " 7]]")
    prompt = judge._prompt(r.messages(QUESTIONS[0], ANSWERS_A[0], judge.system), r)
    logm = torch.tensor([math.log(sum(math.exp(oracle(prompt, v + lab + "]]"))
                                      for v in ("", " "))) for lab in r.labels], dtype=torch.float64)
    probs = torch.softmax(logm, 0)
    assert out[0].expected == pytest.approx(float((probs * torch.tensor(r.scores, dtype=torch.float64)).sum()),
                                            abs=1e-4)
    assert out[0].label_mass == pytest.approx(float(logm.exp().sum()), rel=1e-4)


def test_judge_input_checks(tiny):
    judge = ProbabilityJudge(*tiny)
    with pytest.raises(ValueError, match="answers b"):
        judge.pairwise(["q"], ["a"], [], PAIRWISE["general"])
    with pytest.raises(ValueError, match="max_answer_tokens"):
        ProbabilityJudge(*tiny, max_answer_tokens=0)
    with pytest.raises(ValueError, match="labels repeat"):
        PairwiseRubric("x", "y", labels=("A", "A"))
    long = " ".join(["word"] * 300)
    v = ProbabilityJudge(*tiny, max_answer_tokens=16).pairwise(["q"], [long], ["short"], PAIRWISE["general"])[0]
    assert v.truncated
