"""The rDPO pipeline as one command and the paper's task set-up: `rdpo-fast rdpo` end to end on a tiny
model (synth -> implicit scorer -> soft labels -> student), the SFT and distilled-self-critique
baselines' data selection, the task templates (persona in the user turn, critique against the system
prompt, training jailbreak wrappers), and the judge scales with their soft-label temperatures."""
import json
import math

import pytest
from tiny import save_tiny, write_subset

from rdpo_fast.data.templates import (
    TRAIN_JAILBREAK_WRAPPERS,
    TemplateError,
    get_template,
    load_templates,
    read_prompts,
    task_prompts,
    train_jailbreak_wrappers,
)
from rdpo_fast.losses.head import LOSS_TYPES
from rdpo_fast.pipelines.baselines import distill_self_critique, sft_records
from rdpo_fast.pipelines.cli import main
from rdpo_fast.pipelines.judge_scales import TargetScorer, scale_temperature
from rdpo_fast.pipelines.scorers import Score, soft_label


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("rdpo")
    return {"model": save_tiny(str(root / "model")), "offline": write_subset(str(root / "offline.jsonl"), 4),
            "root": root}


def final_eval_flags(files):
    """The run's external evaluation, small: the tiny model judges 2 held-out prompts per set."""
    return ["--judge", files["model"], "--final-eval-num-prompts", "2", "--final-eval-max-new-tokens", "4"]


def _args(files, out, *extra):
    return ["rdpo", "--teacher", files["model"], "--output-dir", str(out), "--task", "roleplay", "--num-prompts", "4",
            "--max-new-tokens", "8", "--scorer", "implicit", "--offline", files["offline"], "--scorer-pairs", "4",
            "--scorer-max-steps", "1", "--scorer-batch-size", "2", "--batch-size", "2", "--max-steps", "1",
            "--train-last-layers", "0", "--max-length", "320", "--lr", "1e-3", "--no-progress",
            *final_eval_flags(files), *extra]


def test_rdpo_chain_end_to_end(files, capsys):
    out = files["root"] / "run"
    assert main(_args(files, out)) == 0
    printed = capsys.readouterr().out
    assert "pairs trained on" in printed and "final policy" in printed
    summary = json.load(open(out / "summary.json"))
    assert summary["method"] == "rdpo" and summary["final_policy"] == str(out / "student" / "train" / "final")
    assert summary["start_policy"] == files["model"]
    # The run ends with the student judged against the untrained one on the task's held-out prompts, with
    # the task's rubric rate (role-play: persona leak), by the judge given.
    ev = summary["final_eval"]
    assert ev["start_model"] == files["model"] and ev["final_model"] == summary["final_policy"]
    assert ev["n_total"] == 2 and ev["settings"]["prompts"] == "roleplay" and not ev["same_judge_as_training"]
    assert ev["rates"]["roleplay"]["n"] == 2 and "roleplay: persona" in printed
    scored = [json.loads(line) for line in open(out / "scored.jsonl")]
    assert scored and len(scored) == summary["select"]["kept"] == summary["score"]["scored"]
    assert all(0 < r["soft_label"] < 1 for r in scored)
    # The scorer was trained by DPO from the teacher on the offline pairs, and scored with T = 1.
    assert summary["score"]["scorer_policy"] == str(out / "scorer" / "train" / "final")
    assert summary["score"]["temperature"] == 1.0
    cfg = json.load(open(out / "student" / "train" / "config.json"))
    assert cfg["loss_type"] == "rdpo" and cfg["model"] == files["model"]
    # Role-play: the persona sits in the user turn, under the neutral system prompt.
    task = get_template("roleplay")
    rec = json.loads(open(out / "synth.jsonl").readline())
    assert rec["prompt"][0] == {"role": "system", "content": task.system}
    assert rec["prompt"][1]["content"].startswith("You are ") and "\n\n" in rec["prompt"][1]["content"]
    # A rerun finds every stage done.
    assert main(_args(files, out)) == 0
    assert "running" not in capsys.readouterr().out


def test_sft_methods_need_the_sft_loss(files, tmp_path, capsys):
    out = tmp_path / "dsc"
    if "sft" not in LOSS_TYPES:
        # Until the loss has it, the baselines are refused by name before anything runs.
        assert main(_args(files, out, "--method", "dsc")) == 2
        assert "loss_type 'sft'" in capsys.readouterr().err and not out.exists()
        return
    assert main(_args(files, out, "--method", "dsc")) == 0
    cfg = json.load(open(out / "student" / "train" / "config.json"))
    assert cfg["loss_type"] == "sft"
    # Trained on the revisions the scorer rated higher, without the labels the sft loss does not read.
    scored = {json.dumps(r["prompt"]): r for r in map(json.loads, open(out / "scored.jsonl"))}
    kept = [json.loads(line) for line in open(out / "train.jsonl")]
    assert kept and all("soft_label" not in r and "chosen_score" not in r for r in kept)
    assert all(scored[json.dumps(r["prompt"])]["chosen_score"] > scored[json.dumps(r["prompt"])]["rejected_score"]
               for r in kept)
    assert len(kept) == sum(r["chosen_score"] > r["rejected_score"] for r in scored.values())


@pytest.mark.parametrize("extra,message", [
    (["--scorer", "judge"], "--scorer judge needs --judge-model"),
    (["--scorer", "rm"], "--scorer rm needs --rm-model"),
    (["--task", "medical"], "unknown task template 'medical'"),
    (["--teacher", "/no/such/model"], "model path not found"),
])
def test_rdpo_chain_bad_input(files, tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    assert main(_args(files, out, *extra)) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_distilled_self_critique_keeps_revisions_scored_higher():
    recs = [{"prompt": "a", "chosen_score": 3.0, "rejected_score": 1.0}, {"prompt": "b", "chosen_score": 2.0,
                                                                          "rejected_score": 2.0},
            {"prompt": "c", "chosen_score": 0.0, "rejected_score": 1.0}, {"prompt": "d"}]
    kept, st = distill_self_critique(recs)
    assert [r["prompt"] for r in kept] == ["a"]
    assert st == {"records": 4, "kept": 1, "dropped_not_higher": 2, "dropped_unscored": 1}
    assert sft_records(recs) == (recs, {"records": 4, "kept": 4})


def test_task_templates_follow_the_paper():
    ts = load_templates()
    assert all(t.pairwise_criteria for t in ts.values())
    rp = ts["roleplay"]
    assert "neutral" in rp.pairwise_criteria and "persona" in rp.pairwise_criteria
    assert rp.system and rp.system in rp.critique() and "{system}" not in rp.critique() + rp.revision()
    assert rp.critique().startswith("Identify specific ways in which your previous answer is at odds with your "
                                    "system prompt")
    prompts = task_prompts(rp)
    assert len(prompts) == 40 and all(p.startswith("You are ") and "\n\n" in p for p in prompts)
    syc = ts["sycophancy"]
    assert "objective" in syc.revision() and "biased or subjective" in syc.critique()
    assert all(any(w in p for w in ("I wrote", "I really like", "I really dislike", "I think it's weak"))
               for p in task_prompts(syc))
    # The safety task's framings are exactly the training wrapper file's.
    assert TRAIN_JAILBREAK_WRAPPERS.endswith("safety_wrappers_train.jsonl")
    assert ts["safety"].wrappers == tuple(train_jailbreak_wrappers())


def test_judge_scales_and_their_temperatures():
    ts = load_templates()
    assert (ts["safety"].score_range, ts["roleplay"].score_range, ts["sycophancy"].score_range) == \
        ((0, 1), (0, 5), (-5, 5))
    for t in ts.values():
        assert t.score_temperature == scale_temperature(*t.score_range, t.score_target)
    # The documented arithmetic: a 1-10 scale at T = 1 makes a 3-point gap p ~ 0.95; T = (hi - lo) / 4 puts
    # p = sigmoid(4) on a full-scale gap whatever the scale.
    assert soft_label(7, 4, 1.0) == pytest.approx(0.9526, abs=1e-4)
    full = 1 / (1 + math.exp(-4))
    assert soft_label(1, 0, ts["safety"].score_temperature) == pytest.approx(full)
    assert soft_label(5, 0, ts["roleplay"].score_temperature) == pytest.approx(full)
    assert soft_label(0, -5, ts["sycophancy"].score_temperature) == pytest.approx(full)  # -|0| vs -|+-5|
    assert scale_temperature(1, 10) == 2.25


def test_target_scorer_scores_closeness_to_neutral():
    class Judge:
        name = "judge"

        def __call__(self, prompts, responses):
            return [Score(4.0), Score(-1.0), Score(None, "unparsable")]

    out = TargetScorer(Judge(), 0)(["p"] * 3, ["r"] * 3)
    assert [s.value for s in out] == [-4.0, -1.0, None] and out[0].detail["raw_score"] == 4.0
    assert out[2].error == "unparsable"


def test_template_scale_and_persona_validation(tmp_path):
    f = tmp_path / "t.yaml"
    for body, msg in [
        ("    score_range: [5, 1]\n", "lo < hi"), ("    score_range: [0, 5]\n    score_target: 9\n", "inside"),
        ("    score_temperature: 0\n", "> 0"), ("    wrappers: missing.jsonl\n", "wrapper file not found"),
    ]:
        f.write_text("tasks:\n  x:\n    fault: f\n    goal: g\n" + body)
        with pytest.raises(TemplateError, match=msg):
            load_templates(str(f))
    f.write_text("tasks:\n  x:\n    fault: 'unlike {system}'\n    goal: g\n")
    with pytest.raises(TemplateError, match="no system message"):
        load_templates(str(f))
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"persona": "You are Bob.", "prompt": "Hi?"}) + "\n"
                 + json.dumps({"prompt": "Plain"}) + "\n")
    assert read_prompts(str(p)) == ["You are Bob.\n\nHi?", "Plain"]
    p.write_text(json.dumps({"persona": "", "prompt": "Hi?"}) + "\n")
    with pytest.raises(TemplateError, match="persona"):
        read_prompts(str(p))


def test_score_command_takes_the_task_scale():
    from argparse import Namespace

    from rdpo_fast.pipelines.cli import _task_scale

    args = Namespace(rubric=None, task=None, template_file=None)
    assert _task_scale(args, [{"task": "sycophancy"}]) == {"range": (-5, 5), "temperature": 1.25, "target": 0}
    assert _task_scale(Namespace(rubric=None, task="safety", template_file=None), []) == \
        {"range": (0, 1), "temperature": 0.25, "target": None}
    assert _task_scale(Namespace(rubric="my rubric", task="safety", template_file=None), []) == {}


def test_dsc_reads_a_pairwise_judge_preference():
    kept, st = distill_self_critique([{"prompt": "a", "soft_label": 0.7}, {"prompt": "b", "soft_label": 0.5},
                                      {"prompt": "c", "soft_label": 0.2}])
    assert [r["prompt"] for r in kept] == ["a"] and st["dropped_not_higher"] == 2 and st["dropped_unscored"] == 0


def test_rdpo_chain_with_the_probability_judge(files, tmp_path):
    out = tmp_path / "judge"
    args = [a for a in _args(files, out) if a not in ("implicit",)]
    i = args.index("--scorer")
    args[i + 1: i + 1] = ["judge", "--judge-model", files["model"], "--judge-mode", "pairwise"]
    assert main(args) == 0
    summary = json.load(open(out / "summary.json"))
    assert summary["score"]["judge_mode"] == "pairwise" and summary["score"]["score_range"] is None
    scored = [json.loads(line) for line in open(out / "scored.jsonl")]
    assert scored and all(0 < r["soft_label"] < 1 and "judge" in r for r in scored)
    assert all(r["judge"]["rubric"] == "roleplay" for r in scored)  # the task template's pairwise criteria
    assert not (out / "scorer").exists()  # no implicit scorer was trained
    # The evaluation judge is the scoring judge here: the run says its win rate is not independent.
    ev = summary["final_eval"]
    assert ev["same_judge_as_training"] and ev["judge"] == files["model"]
