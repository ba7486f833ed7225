"""DICE end to end on a tiny model: stages in the run directory, prompts without valid samples skipped
and counted, replay on disjoint prompts, an interrupted round resumed without redoing finished stages,
and bad input."""
import json
import os

import pytest
from tiny import save_tiny, write_subset

import rdpo_fast.training.loop
from rdpo_fast.lm.generation import Sample
from rdpo_fast.pipelines import driver as driver_mod
from rdpo_fast.pipelines.cli import main
from rdpo_fast.pipelines.pairing import prompt_key

PROMPTS = [f"Prompt number {i}: tell me something {'short' if i % 2 else 'useful'}." for i in range(6)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("dice")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return {"model": save_tiny(str(root / "model")), "offline": write_subset(str(root / "offline.jsonl"), 12),
            "eval": write_subset(str(root / "eval.jsonl"), 4, split="eval"), "prompts": str(root / "prompts.txt"),
            "root": root}


def final_eval_flags(files):
    """The run's external evaluation, small: the tiny model judges 2 held-out prompts per set."""
    return ["--judge", files["model"], "--final-eval-num-prompts", "2", "--final-eval-max-new-tokens", "4"]


def _args(files, out, *extra):
    return ["dice", "--policy", files["model"], "--output-dir", str(out), "--prompts", files["prompts"],
            "--offline", files["offline"], "--eval-data", files["eval"], "--rounds", "2", "-k", "3",
            "--prompts-per-round", "3", "--init-pairs", "4", "--batch-size", "2", "--max-steps", "1",
            "--train-last-layers", "0", "--max-length", "160", "--lr", "1e-3", "--max-new-tokens", "8",
            "--no-progress", *final_eval_flags(files), *extra]


class Counters:
    def __init__(self, monkeypatch, crash_at=None):
        self.sampled, self.scored, self.trained = [], 0, []
        real_train = rdpo_fast.training.loop.train
        real_reward = driver_mod.ImplicitReward

        def sample(model, tok, convs, k, settings):
            self.sampled.append(len(convs))
            out = []
            for c in convs:
                user = c[-1]["content"]
                if "number 0" in user or "number 3" in user:  # the first prompt of each round: no valid sample
                    out.append([Sample(f"cut off {j}", 8, False) for j in range(k)])
                else:
                    out.append([Sample(f"Answer {j} to {user}" + " more" * (3 * j), 5 + j, True) for j in range(k)])
            return out

        def counting_reward(*a, **kw):
            self.scored += 1
            return real_reward(*a, **kw)

        def train(cfg):
            self.trained.append(os.path.relpath(cfg.output_dir, cfg.output_dir.rsplit("/round", 1)[0]))
            if crash_at and cfg.output_dir.endswith(crash_at):
                raise RuntimeError("interrupted")
            return real_train(cfg)

        monkeypatch.setattr(driver_mod, "sample_groups", sample)
        monkeypatch.setattr(driver_mod, "ImplicitReward", counting_reward)
        monkeypatch.setattr(rdpo_fast.training.loop, "train", train)


@pytest.fixture(scope="module")
def resumed(files):
    """A run interrupted in round 2's training, then rerun: (run dir, counters of each attempt)."""
    out = files["root"] / "run"
    mp = pytest.MonkeyPatch()
    first = Counters(mp, crash_at="round2/train")
    with pytest.raises(RuntimeError, match="interrupted"):
        main(_args(files, out))
    mp.undo()
    second = Counters(mp)
    assert main(_args(files, out)) == 0
    mp.undo()
    return out, first, second


def test_interrupted_round_resumes_without_redoing_finished_stages(resumed):
    out, first, second = resumed
    assert first.sampled == [3, 3] and first.scored == 2
    assert first.trained == ["round0/train", "round1/train", "round2/train"]
    # The rerun found round 2's generate/score/pairs/mix done and only trained and evaluated.
    assert second.sampled == [] and second.scored == 0 and second.trained == ["round2/train"]
    for stage in ("generate", "score", "pairs", "mix", "train"):
        assert os.path.isfile(out / "round2" / f"{stage}.done.json")
    assert os.path.isfile(out / "round2" / "train" / "final" / "model.safetensors")


def test_a_finished_run_reruns_nothing(files, resumed, monkeypatch, capsys):
    out, _, _ = resumed
    again = Counters(monkeypatch)
    assert main(_args(files, out)) == 0
    assert again.sampled == [] and again.scored == 0 and again.trained == []
    assert "held-out acc" in capsys.readouterr().out


def test_summary_counts_skips_and_replays_on_disjoint_prompts(files, resumed):
    out, _, _ = resumed
    summary = json.load(open(out / "summary.json"))
    rows = summary["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        # 3 prompts, one of them with only truncated samples: skipped and counted, not a crash.
        assert r["prompts"] == 3 and r["skipped_no_valid"] == 1 and r["dropped_truncated"] == 3
        assert r["pairs"] == 2 and r["offline"] == 2 and r["train_pairs"] == 4  # gamma 0.5
        assert 0 <= r["alpha"] <= 1 and abs(r["length_diff"]) <= abs(r["length_diff_alpha0"])
        assert 0 <= r["eval"]["accuracy"] <= 1 and r["eval"]["pairs"] == 4
    mixed = [json.loads(line) for line in open(out / "round1" / "train.jsonl")]
    gen = {prompt_key(r["prompt"]) for r in mixed if r["origin"] == "generated"}
    off = {prompt_key(r["prompt"]) for r in mixed if r["origin"] == "offline"}
    assert len(gen) == 2 and len(off) == 2 and not gen & off
    # Argmax/argmin of the implicit reward minus alpha * length.
    pairs = [json.loads(line) for line in open(out / "round1" / "pairs.jsonl")]
    for p in pairs:
        assert p["chosen_implicit_reward"] - p["alpha"] * len(p["chosen"][0]["content"]) >= \
            p["rejected_implicit_reward"] - p["alpha"] * len(p["rejected"][0]["content"])
    # The chain: round 2 sampled from round 1's policy and trained with it as reference.
    cfg = json.load(open(out / "round2" / "train" / "config.json"))
    assert cfg["model"].endswith("round1/train/final") and cfg["reference"] == "precompute"
    # ... and scored with the default reward pair (pi_1, ref_1 = pi_0).
    st = json.load(open(out / "round2" / "score.done.json"))["stats"]
    assert st["reward_policy"] == str(out / "round1" / "train" / "final")
    assert st["reward_reference"] == str(out / "round0" / "train" / "final")
    assert summary["final_policy"] == st["reward_policy"].replace("round1", "round2")


def test_the_run_ends_with_the_external_judge_on_held_out_prompts(files, resumed, monkeypatch, capsys):
    out, _, _ = resumed
    ev = json.load(open(out / "summary.json"))["final_eval"]
    # The final policy against pi_0, by the judge given, on the general held-out set (not the rounds' prompts).
    assert ev["final_model"] == str(out / "round2" / "train" / "final")
    assert ev["start_model"] == str(out / "round0" / "train" / "final")
    assert ev["judge"] == files["model"] and ev["n_total"] == 2 and ev["settings"]["prompts"] == "general"
    assert 0 <= ev["win_rate"] <= 100 and ev["standard_error"] is not None
    assert ev["length_controlled_winrate"] is not None
    answers = json.load(open(out / ev["files"]["final"]))
    assert [a["dataset"] for a in answers] == ["rdpo_fast/general"] * 2
    assert not {a["instruction"] for a in answers} & set(PROMPTS)
    # Judged again with other evaluation settings: only the evaluation reruns, nothing is trained.
    again = Counters(monkeypatch)
    assert main(_args(files, out, "--final-eval-num-prompts", "3")) == 0
    printed = capsys.readouterr().out
    assert again.sampled == [] and again.trained == [] and "evaluation settings changed" in printed
    assert json.load(open(out / "summary.json"))["final_eval"]["n_total"] == 3
    assert "win rate final vs start" in printed and "implicit held-out acc" in printed
    # ... and without it, the summary says it did not run.
    assert main(_args(files, out, "--no-final-eval")) == 0
    assert json.load(open(out / "summary.json"))["final_eval"] is None
    assert "final evaluation: not run" in capsys.readouterr().out


def test_changed_settings_are_refused(files, resumed, capsys):
    out, _, _ = resumed
    assert main(_args(files, out, "--gamma", "0.25")) == 2
    err = capsys.readouterr().err
    assert "different settings" in err and "gamma: 0.5 -> 0.25" in err


@pytest.mark.parametrize("extra,message", [
    (["-k", "1"], "K (samples per prompt) must be >= 2"),
    (["--gamma", "1"], "gamma"),
    (["--policy", "/no/such/model"], "model path not found"),
    (["--prompts", "/no/prompts.txt"], "prompt file not found"),
    (["--offline", "/no/offline.jsonl"], "data file not found"),
    (["--eval-pairs", "-1"], "eval_pairs"),
    (["--rounds", "0"], "rounds must be >= 1"),
    (["--temperature", "0"], "greedy"),
    (["--lr", "-1"], "lr must be > 0"),
    (["--final-eval-prompts", "nosuch"], "unknown task nosuch"),
    (["--final-eval-prompts", "/no/prompts.jsonl"], "/no/prompts.jsonl"),
    (["--judge", "/no/such/judge"], "model path not found"),
    (["--final-eval-num-prompts", "0"], "num_prompts must be >= 1"),
])
def test_dice_bad_input(files, tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    assert main(_args(files, out, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing written before the input is known good


def test_dice_refuses_a_foreign_directory(files, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(_args(files, tmp_path)) == 2
    assert "not a pipeline run directory" in capsys.readouterr().err


def test_stage_dir(tmp_path):
    from rdpo_fast.pipelines.stages import StageDir, StageDirError
    from rdpo_fast.run_lock import RunDirBusy

    calls = []

    def stage():
        calls.append(1)
        p = tmp_path / "run" / "a.txt"
        p.write_text("x")
        return {"n": len(calls)}, [str(p)]

    run = StageDir(str(tmp_path / "run"), {"k": 2}, log=lambda *a: None)
    assert run.run("a", stage) == {"n": 1} and run.run("a", stage) == {"n": 1} and len(calls) == 1
    with pytest.raises(RunDirBusy, match=f"run directory {tmp_path / 'run'} is in use by another process \\(pid "):
        StageDir(str(tmp_path / "run"), {"k": 2})  # one writer at a time, until closed
    run.close()
    os.remove(tmp_path / "run" / "a.txt")  # an output went missing: the stage runs again
    with StageDir(str(tmp_path / "run"), {"k": 2}, log=lambda *a: None) as again:
        assert again.run("a", stage) == {"n": 2}
    with pytest.raises(StageDirError, match="k: 2 -> 3"):
        StageDir(str(tmp_path / "run"), {"k": 3})  # refused, its lock released on the way out
    with StageDir(str(tmp_path / "run"), {"k": 3}, overwrite=True, log=lambda *a: None) as fresh:
        assert fresh.done("a") is None and fresh.run("a", stage) == {"n": 3}
        assert ".lock" in os.listdir(tmp_path / "run")  # held while open: --overwrite emptied all else
    assert ".lock" not in os.listdir(tmp_path / "run")
