"""The pipelines' paper settings (issue 11): DICE's early-stopping alpha walk against a brute-force walk
of the grid, the configurable grid, the minimum of valid samples per prompt, the same prompt pool
every round, the reward pair of later rounds, English scored without the language prefix, and the
loss/schedule/sampling settings reaching the training stage."""
import random

import pytest
from candidates import candidate_group

from rdpo_fast.pipelines.crosslingual import build_groups, language_prefix, scoring_instruction
from rdpo_fast.pipelines.driver import REWARD_PAIRS, reward_pair, round_indices
from rdpo_fast.pipelines.pairing import ALPHA_GRID, alpha_grid, choose_alpha
from rdpo_fast.pipelines.rounds import TrainSettings, default_min_valid, pair_groups


def brute_pick(r, l, alpha):
    adj = [x - alpha * y for x, y in zip(r, l)]
    best = max(range(len(adj)), key=lambda k: (adj[k], -k))  # first index among equal maxima
    worst = min(range(len(adj)), key=lambda k: (adj[k], k))
    return best, worst


def mean_diff(rewards, lengths, alpha):
    diffs = []
    for r, l in zip(rewards, lengths):
        b, w = brute_pick(r, l, alpha)
        diffs.append(l[b] - l[w])
    return sum(diffs) / len(diffs)


def brute_walk(rewards, lengths, grid):
    """DICE's search as its script runs it: walk the grid from the start, record each alpha's mean
    length difference, stop at the first one whose |difference| exceeds the smallest seen so far;
    the best recorded alpha wins (the first on ties)."""
    seen = []
    for a in grid:
        d = mean_diff(rewards, lengths, a)
        seen.append((a, d))
        if abs(d) > min(abs(x[1]) for x in seen):
            break
    best = min(range(len(seen)), key=lambda i: (abs(seen[i][1]), i))
    return seen[best][0], seen[best][1], len(seen)


def random_case(rng, prompts, k_max):
    rewards, lengths = [], []
    for _ in range(prompts):
        k = rng.randint(2, k_max)
        lengths.append([rng.randint(1, 400) for _ in range(k)])
        rewards.append([rng.choice([0.05, 0.2, -0.02]) * n + rng.gauss(0, 5) for n in lengths[-1]])
    return rewards, lengths


@pytest.mark.parametrize("seed", range(6))
def test_early_stop_matches_a_brute_force_walk(seed):
    rng = random.Random(seed)
    rewards, lengths = random_case(rng, prompts=rng.randint(1, 9), k_max=6)
    grid = [round(i * 0.002, 12) for i in range(501)] if seed % 2 else [i / 1000 for i in range(1001)]
    want_a, want_d, tried = brute_walk(rewards, lengths, grid)
    got = choose_alpha(rewards, lengths, grid=alpha_grid(0, 1, 0.002) if seed % 2 else ALPHA_GRID,
                       rule="early-stop", chunk=7)  # a small chunk: the walk crosses chunk borders
    assert got.alpha == pytest.approx(want_a, abs=1e-12) and got.mean_length_diff == pytest.approx(want_d)
    assert got.points_tried == tried and got.rule == "early-stop"
    assert got.mean_length_diff_at_0 == pytest.approx(mean_diff(rewards, lengths, 0.0))
    full = choose_alpha(rewards, lengths, grid=alpha_grid(0, 1, 0.002) if seed % 2 else ALPHA_GRID)
    assert abs(full.mean_length_diff) <= abs(got.mean_length_diff) + 1e-12 and full.points_tried == len(grid)


def test_early_stop_picks_the_argmin_alpha_with_fewer_points():
    # Raising alpha can only shorten the argmax and lengthen the argmin, so the mean difference falls
    # monotonically and DICE's walk stops just past the crossing of 0: the argmin's alpha, cheaper.
    rng = random.Random(7)
    for _ in range(20):
        rewards, lengths = random_case(rng, prompts=rng.randint(1, 12), k_max=8)
        early, full = choose_alpha(rewards, lengths, rule="early-stop"), choose_alpha(rewards, lengths)
        assert early.alpha == full.alpha and early.mean_length_diff == full.mean_length_diff
        assert early.points_tried <= full.points_tried == len(ALPHA_GRID)
        curve = [mean_diff(rewards, lengths, a) for a in (0.0, 0.01, 0.05, 0.2, 1.0)]
        assert curve == sorted(curve, reverse=True)


def test_alpha_grid_is_configurable_and_checked():
    assert alpha_grid().tolist() == ALPHA_GRID.tolist() == [i / 1000 for i in range(1001)]
    assert alpha_grid(0.1, 0.3, 0.1).tolist() == [0.1, 0.2, 0.3]  # stop included, decimal values
    assert alpha_grid(0, 1, 0.3).tolist() == [0.0, 0.3, 0.6, 0.9]
    for args, msg in [((0, 1, 0), "step must be > 0"), ((1, 0, 0.1), "below its start"),
                      ((0, 1, 1e-7), "at most")]:
        with pytest.raises(ValueError, match=msg):
            alpha_grid(*args)
    with pytest.raises(ValueError, match="unknown alpha rule"):
        choose_alpha([[1.0, 2.0]], [[1, 2]], rule="closest")


def test_prompts_below_min_valid_are_skipped_and_counted():
    ok = [("a" * n, r, None) for n, r in ((3, 1.0), (5, 4.0), (8, 2.0), (13, 3.0))]
    groups = [
        candidate_group("four valid", ok),
        candidate_group("three valid", ok[:3] + [("cut", None, "truncated")]),
        candidate_group("two valid", ok[:2] + [("x", None, "empty"), ("y", None, "truncated")]),
        candidate_group("three with a duplicate", ok[:2] + [ok[1]] + [("z", None, "truncated")]),
    ]
    pairs, st = pair_groups(groups, min_valid=3)
    assert st["min_valid"] == 3 and st["skipped_few_valid"] == 1 and st["pairs"] == 3
    assert {p["prompt"][0]["content"] for p in pairs} == {"four valid", "three valid", "three with a duplicate"}
    # DICE's 8 of 16 is half of K; K/2 is the default, never below 2.
    assert [default_min_valid(k) for k in (2, 3, 4, 16)] == [2, 2, 2, 8]
    pairs, st = pair_groups(groups, min_valid=4)
    assert st["skipped_few_valid"] == 3 and st["pairs"] == 1
    with pytest.raises(ValueError, match="min_valid must be >= 2"):
        pair_groups(groups, min_valid=1)


def test_same_prompt_pool_every_round_and_fresh_slices():
    assert [round_indices(10, r, 4, "same")[0] for r in (1, 2, 3)] == [[0, 1, 2, 3]] * 3
    assert [round_indices(10, r, 4, "fresh")[0] for r in (1, 2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert round_indices(10, 3, 4, "fresh") == ([8, 9, 0, 1], True)
    assert round_indices(5, 2, 0, "same") == ([0, 1, 2, 3, 4], False)  # 0: the whole pool
    with pytest.raises(ValueError, match="prompt pool"):
        round_indices(10, 1, 4, "shuffled")


def test_dice_rounds_sample_the_same_prompts_with_the_same_pool(tmp_path):
    from rdpo_fast.pipelines.dice import DiceRounds, DiceSettings

    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"question {i}" for i in range(7)) + "\n")
    texts = {}
    for mode in ("same", "fresh"):
        d = DiceRounds(DiceSettings(prompts=str(prompts), prompts_per_round=3, prompt_pool=mode), str(tmp_path / mode),
                       log=lambda *a: None)
        d.prepare()
        texts[mode] = [[g["prompt"][-1]["content"] for g in d.round_groups(r)] for r in (1, 2, 3)]
    assert texts["same"] == [["question 0", "question 1", "question 2"]] * 3
    assert texts["fresh"][1] == ["question 3", "question 4", "question 5"]
    assert texts["fresh"][2] == ["question 6", "question 0", "question 1"]


def test_the_three_reward_pairs():
    chain = [("pi0", "ref0")]
    assert {c: reward_pair(c, chain) for c in REWARD_PAIRS} == {c: ("pi0", "ref0") for c in REWARD_PAIRS}
    chain += [("pi1", "pi0"), ("pi2", "pi1")]
    assert reward_pair("previous", chain) == ("pi2", "pi1")  # (pi_{r-1}, ref_{r-1}), ref_{r-1} = pi_{r-2}
    assert reward_pair("initial", chain) == ("pi0", "ref0")
    assert reward_pair("previous-vs-initial", chain) == ("pi2", "ref0")
    with pytest.raises(ValueError, match="unknown reward pair"):
        reward_pair("latest", chain)


def test_english_is_scored_without_the_prefix():
    rows = [{"id": "q0", "en": "Name a colour.", "es": "Nombra un color.", "de": "Nenne eine Farbe."}]
    groups = {g["language"]: g for g in build_groups(rows, ("en", "es", "de"), None)}
    assert groups["en"]["score_prompt"] == groups["en"]["prompt"] == [{"role": "user", "content": "Name a colour."}]
    assert scoring_instruction("en", "Name a colour.") == "Name a colour."
    assert groups["es"]["score_prompt"][-1]["content"] == language_prefix("es") + "Name a colour."
    assert groups["es"]["prompt"][-1]["content"] == "Nombra un color."
    assert groups["de"]["score_prompt"][-1]["content"].startswith(
        "Please answer the following instruction using only German")


def test_loss_schedule_and_sampling_reach_the_training_config():
    cfg = TrainSettings(loss_type="ipo", scheduler="constant", warmup_steps=50, grad_accum=8, batch_size=4,
                        lr=5e-7).config(model="m", data="d", output_dir="o", cache_dir="c", n_pairs=1000)
    assert (cfg.loss_type, cfg.scheduler, cfg.warmup_steps, cfg.grad_accum, cfg.lr) == ("ipo", "constant", 50, 8, 5e-7)
    assert cfg.reference == "precompute"
    with pytest.raises(ValueError, match="unknown loss_type 'nope'"):
        TrainSettings(loss_type="nope").check()


def test_dice_refuses_soft_label_loss_and_bad_settings():
    from rdpo_fast.pipelines.dice import DiceSettings

    with pytest.raises(ValueError, match="soft labels"):
        DiceSettings(train=TrainSettings(loss_type="rdpo")).validate()
    with pytest.raises(ValueError, match=r"min_valid must be in \[2, K=4\]"):
        DiceSettings(min_valid=5).validate()


def test_reference_free_losses_train_without_a_reference_pass():
    from rdpo_fast.losses.table import LOSSES

    for name, info in LOSSES.items():
        cfg = TrainSettings(loss_type=name).config(model="m", data="d", output_dir="o", cache_dir="c", n_pairs=100)
        assert cfg.reference == ("precompute" if info.reference == "required" else "none"), name
