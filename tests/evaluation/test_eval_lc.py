"""AlpacaEval 2's length-controlled win rate: rdpo_fast.evaluation.lc against numbers computed by the
alpaca-eval package itself (tests/fixtures/lc_glm.json, made by tests/fixtures/make_lc_glm.py)."""
import json

import pytest
import torch
from paths import FIXTURES

from rdpo_fast.evaluation import lc
from rdpo_fast.evaluation.compare import win_stats

FIXTURE = str(FIXTURES / "lc_glm.json")
CASES = json.load(open(FIXTURE))["cases"]


@pytest.mark.parametrize("glm", ["length_controlled_minimal", "length_controlled_noreg"])
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_lc_glm_matches_alpaca_eval(case, glm):
    items, ref = case["items"], case["alpaca_eval"][glm]
    p = [it["preference"] for it in items]
    lm, lb = [it["model_length"] for it in items], [it["baseline_length"] for it in items]
    diff = [it["difficulty"] for it in items] if glm == "length_controlled_noreg" else None
    got = lc.length_controlled_winrate(p, lm, lb, difficulty=diff)
    assert got["glm"] == glm
    assert got["C"] == pytest.approx(ref["C"], rel=1e-12)  # the same cross-validated C
    # The same optimisation problem, solved to double precision here while liblinear stops at its
    # tolerance (tol=1e-4): our optimum never has a worse objective than alpaca-eval's weights ...
    X, _ = lc._features(lm, lb, diff)
    pt = torch.tensor(p, dtype=torch.float64)
    ours = lc._loss(X, pt, torch.tensor(list(got["weights"].values()), dtype=torch.float64), ref["C"])
    theirs = lc._loss(X, pt, torch.tensor(ref["coef"], dtype=torch.float64), ref["C"])
    assert ours <= theirs
    # ... and the weights and LC win rate agree to that tolerance's size.
    assert list(got["weights"].values()) == pytest.approx(ref["coef"], abs=3e-4)
    assert got["length_controlled_winrate"] == pytest.approx(ref["length_controlled_winrate"], abs=5e-3)
    if diff is not None:
        assert got["lc_standard_error"] == pytest.approx(ref["lc_standard_error"], abs=5e-3)
    # the raw head-to-head figures, AlpacaEval's win_rate and standard_error
    w = win_stats(p)
    assert w["win_rate"] == pytest.approx(ref["win_rate"], abs=1e-9)
    assert w["standard_error"] == pytest.approx(ref["standard_error"], abs=1e-9)


def test_lc_of_ties_is_exactly_50():
    # every preference 0.5: the optimum is w = 0 whatever the lengths
    for lengths in ([100, 100, 100, 100], [50, 300, 120, 80]):
        r = lc.length_controlled_winrate([0.5] * 4, lengths, [100, 100, 100, 100])
        assert r["length_controlled_winrate"] == 50.0 and all(v == 0.0 for v in r["weights"].values())


def test_lc_removes_a_pure_length_effect():
    # The model's answer is longer on 3 of 4 prompts and wins exactly there (p = 0.9, else 0.1): raw win
    # rate 70%, all of it explained by length, so the length-controlled rate is 50%. With preferences that
    # do not depend on length (0.75 everywhere) the length weight is 0 and LC equals the raw rate.
    lm = [150, 150, 150, 50] * 10
    prefs = [0.9, 0.9, 0.9, 0.1] * 10
    assert win_stats(prefs)["win_rate"] == pytest.approx(70)
    r = lc.length_controlled_winrate(prefs, lm, [100] * 40)
    assert r["weights"]["length"] < -1 and r["length_controlled_winrate"] == pytest.approx(50, abs=0.1)
    r = lc.length_controlled_winrate([0.75] * 40, lm, [100] * 40)
    assert r["weights"]["length"] == pytest.approx(0, abs=1e-9)
    assert r["length_controlled_winrate"] == pytest.approx(75, abs=0.1)


def test_lc_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        lc.length_controlled_winrate([0.7], [1], [1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        lc.length_controlled_winrate([0.7, 1.2], [1, 2], [1, 2])
    with pytest.raises(ValueError, match="one value per item"):
        lc.length_controlled_winrate([0.7, 0.2], [1, 2], [1])
