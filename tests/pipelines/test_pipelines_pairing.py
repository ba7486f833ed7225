"""Pairing of scored candidates: the length-debiasing alpha sweep and argmax/argmin pairing against a
brute-force reference, skip counting, and experience replay (counts, prompt disjointness)."""
import random

import pytest
from candidates import candidate_group

from rdpo_fast.pipelines.pairing import ALPHA_GRID, choose_alpha, mix_replay, prompt_key, replay_count, select_pairs
from rdpo_fast.pipelines.rounds import pair_groups


def brute_pick(r, l, alpha):
    adj = [x - alpha * y for x, y in zip(r, l)]
    best = max(range(len(adj)), key=lambda k: (adj[k], -k))  # first index among equal maxima
    worst = min(range(len(adj)), key=lambda k: (adj[k], k))
    return best, worst


def brute_alpha(rewards, lengths):
    best_a, best_d = None, None
    for step in range(1001):
        a = step / 1000
        diffs = []
        for r, l in zip(rewards, lengths):
            b, w = brute_pick(r, l, a)
            diffs.append(l[b] - l[w])
        d = sum(diffs) / len(diffs)
        if best_d is None or abs(d) < abs(best_d):
            best_a, best_d = a, d
    return best_a, best_d


def random_case(rng, prompts, k_max, ties=False):
    rewards, lengths = [], []
    for _ in range(prompts):
        k = rng.randint(2, k_max)
        lengths.append([rng.randint(1, 400) for _ in range(k)])
        if ties:
            rewards.append([float(rng.randint(-3, 3)) for _ in range(k)])
        else:
            # Longer answers get higher rewards on average: the bias the sweep removes.
            rewards.append([0.05 * n + rng.gauss(0, 5) for n in lengths[-1]])
    return rewards, lengths


@pytest.mark.parametrize("seed,ties", [(0, False), (1, False), (2, True), (3, False)])
def test_alpha_sweep_matches_brute_force(seed, ties):
    rng = random.Random(seed)
    rewards, lengths = random_case(rng, prompts=rng.randint(1, 9), k_max=5, ties=ties)
    got = choose_alpha(rewards, lengths)
    a, d = brute_alpha(rewards, lengths)
    assert got.alpha == pytest.approx(a, abs=1e-12) and got.mean_length_diff == pytest.approx(d)
    assert abs(got.mean_length_diff) <= abs(got.mean_length_diff_at_0) + 1e-9
    for alpha in (0.0, got.alpha, 0.5, 1.0):
        picks = select_pairs(rewards, lengths, alpha)
        for (r, l), pick in zip(zip(rewards, lengths), picks):
            b, w = brute_pick(r, l, alpha)
            assert pick == (None if b == w else (b, w))


def test_alpha_sweep_removes_a_length_bias():
    # Reward grows with length: at alpha=0 chosen is always the longest; the sweep finds the penalty.
    rewards = [[0.1 * 100, 0.1 * 300, 0.1 * 200 + 1], [0.1 * 50, 0.1 * 250]]
    lengths = [[100, 300, 200], [50, 250]]
    got = choose_alpha(rewards, lengths)
    assert got.mean_length_diff_at_0 > 0 and abs(got.mean_length_diff) < got.mean_length_diff_at_0
    assert got.alpha == brute_alpha(rewards, lengths)[0] and len(ALPHA_GRID) == 1001


def test_pairing_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        choose_alpha([[1.0]], [[3]])
    with pytest.raises(ValueError, match="lengths"):
        select_pairs([[1.0, 2.0]], [[3]], 0.0)
    with pytest.raises(ValueError, match="non-finite"):
        choose_alpha([[1.0, float("nan")]], [[3, 4]])


def test_prompts_without_two_valid_candidates_are_skipped_and_counted():
    groups = [
        candidate_group("a", [("x" * 5, None, "truncated"), ("", None, "empty")]),  # no valid sample
        candidate_group("b", [("yy", 1.0, None), ("zz zz", None, "repetitive")]),  # one valid
        candidate_group("c", [("same", 1.0, None), ("same", 2.0, None)]),  # duplicates: one candidate left
        candidate_group("d", [("short", 2.0, None), ("a longer one", 0.5, None), ("mid len", 1.0, None)]),
        candidate_group("e", [("p", 1.0, None), ("q", 1.0, None)]),  # equal rewards, equal lengths: tied
    ]
    pairs, st = pair_groups(groups)
    assert st["skipped_no_valid"] == 1 and st["skipped_one_valid"] == 2 and st["skipped_tied"] == 1
    assert st["dropped_truncated"] == 1 and st["dropped_empty"] == 1 and st["dropped_repetitive"] == 1
    assert st["duplicate_candidates"] == 1 and st["pairs"] == 1 == len(pairs)
    assert pairs[0]["chosen"][0]["content"] == "short" and pairs[0]["rejected"][0]["content"] == "a longer one"
    none, st = pair_groups([candidate_group("a", [("x", None, "truncated"), ("y", None, "truncated")])])
    assert none == [] and st["pairs"] == 0 and st["alpha"] is None and st["skipped_no_valid"] == 1


@pytest.mark.parametrize("n_new,gamma,want", [(10, 0.5, 10), (10, 0.0, 0), (9, 0.25, 3), (4, 0.75, 12), (0, 0.5, 0)])
def test_replay_counts(n_new, gamma, want):
    assert replay_count(n_new, gamma) == want
    new = [{"prompt": f"new {i}", "chosen": "c", "rejected": "r"} for i in range(n_new)]
    offline = [{"prompt": f"old {i}", "chosen": "c", "rejected": "r"} for i in range(50)]
    mix = mix_replay(new, offline, gamma, seed=1)
    assert mix.offline == want == mix.wanted and len(mix.records) == n_new + want
    if n_new + want:
        assert mix.offline / len(mix.records) == pytest.approx(want / (n_new + want))


def test_replay_prompts_are_disjoint_and_draws_are_seeded():
    new = [{"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": f"Question {i}?"}],
            "chosen": "c", "rejected": "r"} for i in range(6)]
    # Offline pairs: half share a generated prompt (different case/spacing/system message), half do not.
    offline = [{"prompt": [{"role": "user", "content": f"  question   {i}?"}], "chosen": "c", "rejected": "r", "i": i}
               for i in range(3)]
    offline += [{"prompt": f"Other {i}", "chosen": "c", "rejected": "r", "i": 100 + i} for i in range(20)]
    mix = mix_replay(new, offline, 0.5, seed=7)
    assert mix.excluded_overlap == 3 and mix.offline == 6
    new_keys = {prompt_key(r["prompt"]) for r in mix.records if r["origin"] == "generated"}
    old_keys = [prompt_key(r["prompt"]) for r in mix.records if r["origin"] == "offline"]
    assert not new_keys & set(old_keys) and len(set(old_keys)) == len(old_keys)
    assert [r["i"] for r in mix_replay(new, offline, 0.5, seed=7).records[6:]] == [r["i"] for r in mix.records[6:]]
    assert [r["i"] for r in mix_replay(new, offline, 0.5, seed=8).records[6:]] != [r["i"] for r in mix.records[6:]]
    # Too few eligible offline pairs: all of them, and the shortfall is visible.
    short = mix_replay(new, offline[:5], 0.5, seed=0)
    assert short.offline == 2 and short.wanted == 6
    with pytest.raises(ValueError, match="gamma"):
        replay_count(3, 1.0)
