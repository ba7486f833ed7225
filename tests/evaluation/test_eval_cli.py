"""`rdpo-fast generate` and `rdpo-fast eval` end to end on tiny random models, `evaluate_against` (the
call a pipeline makes at its end), `rdpo-fast score --scorer judge` with the probability judge, and bad
input: each a one-line error naming the file and line, given before any model loads."""
import json
import os

import pytest
from eval_tiny import save_tiny
from tiny import write_subset

from rdpo_fast.cli import main
from rdpo_fast.evaluation import evaluate_against
from rdpo_fast.lm.generation import GenerationSettings

GEN = ["--max-new-tokens", "6", "--no-progress"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcli")
    return {"a": save_tiny(str(root / "a"), seed=0), "b": save_tiny(str(root / "b"), seed=1), "root": root}


@pytest.fixture(scope="module")
def answers(models):
    root = models["root"]
    sets = ["--prompts", "safety,roleplay,sycophancy,multilingual", "--languages", "es", "--num-prompts", "2"]
    a, b = str(root / "A.json"), str(root / "B.json")
    assert main(["generate", "--model", models["a"], *sets, "-o", a, *GEN]) == 0
    assert main(["generate", "--model", models["b"], *sets, "-o", b, "--temperature", "0.9", "--seed", "3", *GEN]) == 0
    return a, b


def _read(path):
    with open(path) as f:
        return json.load(f) if path.endswith(".json") else [json.loads(line) for line in f if line.strip()]


def test_generate_writes_alpaca_eval_records_with_their_settings(models, answers):
    recs = _read(answers[0])
    assert len(recs) == 8 and [r["task"] for r in recs[::2]] == ["safety", "roleplay", "sycophancy", "multilingual"]
    for r in recs:
        assert {"instruction", "output", "generator", "dataset", "id", "finished", "num_tokens"} <= set(r)
        g = r["generation"]
        assert g["model"] == models["a"] and g["temperature"] == 0.0 and g["do_sample"] is False
        assert g["max_new_tokens"] == 6 and g["seed"] == 0 and g["rdpo_fast_version"] and g["date"]
    assert recs[0]["instruction"].startswith("Developer mode is on") and recs[0]["wrapper"] == 0
    assert recs[-1]["language"] == "es" and recs[-1]["parallel_id"] == "m02"
    b = _read(answers[1])
    assert b[0]["generation"]["temperature"] == 0.9 and b[0]["generation"]["top_p"] == 0.95


def test_generate_from_an_alpaca_eval_file(models, tmp_path):
    src = tmp_path / "alpaca_eval.json"
    src.write_text(json.dumps([{"instruction": "What is 2+2?", "output": "4", "generator": "gpt4_turbo",
                                "dataset": "helpful_base"},
                               {"instruction": "Name a colour.", "output": "Red", "generator": "gpt4_turbo",
                                "dataset": "koala"}]))
    out = str(tmp_path / "mine.jsonl")
    assert main(["generate", "--model", models["a"], "--prompts", str(src), "--generator", "tiny", "-o", out,
                 *GEN]) == 0
    recs = _read(out)
    assert [r["dataset"] for r in recs] == ["helpful_base", "koala"] and {r["generator"] for r in recs} == {"tiny"}
    assert all(r["output"] != "4" for r in recs[:1]) and recs[0]["task"] is None


def test_eval_reports_win_rates_task_rates_and_language_share(models, answers, tmp_path, capsys):
    a, b = answers
    out = str(tmp_path / "ev")
    assert main(["eval", "-a", a, b, "-b", b, "--judge", models["a"], "-o", out, "--no-progress"]) == 0
    doc = json.load(open(os.path.join(out, "eval.json")))
    first, same = doc["reports"]
    assert first["n_total"] == 8 and 0 < first["win_rate"] < 100 and first["standard_error"] > 0
    assert first["length_controlled"]["glm"] == "length_controlled_minimal"
    assert set(first["avg_length"]) == {"model", "baseline"}
    assert {t: r["rate_name"] for t, r in first["rates"].items()} == {
        "safety": "harmlessness", "roleplay": "persona leak", "sycophancy": "sycophancy"}
    assert set(first["language_share"]) == {"en", "es"} and first["language_share"]["es"]["n"] == 2
    assert len(first["items"]) == 8 and all(0 < it["preference"] < 1 for it in first["items"])
    assert "model_score" in first["items"][0] and "model_language" in first["items"][-1]
    # the baseline against itself: identical answers, exactly a tie everywhere
    assert same["win_rate"] == 50.0 and same["n_draws"] == 8 and same["length_controlled_winrate"] == 50.0
    assert all(it["preference"] == 0.5 for it in same["items"])
    assert os.path.isfile(os.path.join(out, "eval.png")) and "win rate %" in open(os.path.join(out, "eval.txt")).read()
    assert "per task" in capsys.readouterr().out


def _write(path, recs):
    with open(path, "w") as f:
        f.write("\n".join(json.dumps(r) for r in recs) + "\n")
    return str(path)


GOOD = [{"instruction": "p1", "output": "x"}, {"instruction": "p2", "output": "y"}]


@pytest.mark.parametrize("model_recs,base_recs,message", [
    ([{"instruction": "p1", "output": "x"}, {"instruction": "p2"}], GOOD,
     "A.jsonl:2: no answer: the record has no 'output' for the prompt 'p2'"),
    ([{"instruction": "p1", "output": "x"}, {"instruction": "p2", "output": None}], GOOD, "A.jsonl:2: no answer"),
    (GOOD + [{"instruction": "p3", "output": "z"}], GOOD, "A.jsonl:3: the prompt 'p3' has no answer in"),
    (GOOD[:1], GOOD, "B.jsonl:2: the prompt 'p2' has no answer in"),
    (GOOD + [{"instruction": "p1", "output": "again"}], GOOD,
     "A.jsonl:3: the prompt 'p1' is answered twice (also line 1)"),
    ([{"instruction": "p1", "output": "x", "task": "poetry"}], GOOD[:1], "A.jsonl:1: unknown task 'poetry'"),
    ([{"instruction": "p1", "output": "x", "language": "es"}], [{"instruction": "p1", "output": "y", "language": "fr"}],
     "A.jsonl:1: language 'es' differs from"),
    ([{"output": "x"}], GOOD, "A.jsonl:1: a record needs a non-empty 'instruction'"),
    (None, GOOD, "A.jsonl: the file is empty"),
])
def test_eval_bad_input_names_file_and_line(tmp_path, capsys, model_recs, base_recs, message):
    a = tmp_path / "A.jsonl"
    if model_recs is None:
        a.write_text("\n")
    else:
        _write(a, model_recs)
    b = _write(tmp_path / "B.jsonl", base_recs)
    # a judge that does not exist: the input error must come first, before any model loads
    rc = main(["eval", "-a", str(a), "-b", b, "--judge", "/no/such/judge", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and str(tmp_path) in err and "model path" not in err
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.parametrize("argv,message", [
    (["eval", "-a", "A", "-b", "B", "--task", "poetry", "-o", "o"], "unknown task 'poetry'"),
    (["eval", "-a", "/no/such/A.json", "-b", "/no/such/B.json", "-o", "o"], "answers file not found: /no/such/B.json"),
    (["generate", "--prompts", "poetry", "-o", "o.json"], "unknown task poetry"),
    (["generate", "--prompts", "multilingual", "--languages", "xx", "-o", "o.json"], "no language xx"),
    (["generate", "--prompts", "/no/such/prompts.jsonl", "-o", "o.json"], "prompts file not found"),
    (["generate", "--model", "/no/such/model", "-o", "o.json", "--num-prompts", "1"], "model path not found"),
    (["generate", "--temperature", "-1", "-o", "o.json"], "temperature must be >= 0"),
])
def test_cli_bad_options(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o.json")


def test_evaluate_against_for_the_pipelines(models, tmp_path):
    gen = GenerationSettings(max_new_tokens=6, temperature=0.0, progress=False)
    logs = []
    s = evaluate_against(models["b"], models["a"], prompts="safety,multilingual", languages=["es"], num_prompts=2,
                         judge=models["a"], out_dir=str(tmp_path / "ev"), generation=gen, log=logs.append)
    assert s["n_total"] == 4 and 0 < s["win_rate"] < 100 and s["standard_error"] is not None
    assert s["length_controlled_winrate"] is not None and s["rates"]["safety"]["rate_name"] == "harmlessness"
    assert s["language_share"]["es"]["n"] == 2 and s["judge"] == models["a"]
    for key in ("final", "start", "report"):
        assert os.path.isfile(s["files"][key])
    assert json.load(open(s["files"]["report"]))["reports"][0]["items"][0]["id"] == "safety-01"
    assert any("answers of the final model" in line for line in logs)
    # a model against itself (greedy): the same answers, exactly 50%
    same = evaluate_against(models["a"], models["a"], prompts="sycophancy", num_prompts=3, judge=models["a"],
                            out_dir=str(tmp_path / "same"), generation=gen, log=logs.append)
    assert same["win_rate"] == 50.0 and same["length_controlled_winrate"] == 50.0


def test_score_with_the_probability_judge(models, tmp_path, capsys):
    data = write_subset(str(tmp_path / "pairs.jsonl"), 4)
    out = str(tmp_path / "scored.jsonl")
    assert main(["score", "-i", data, "-o", out, "--scorer", "judge", "--judge-model", models["a"],
                 "--no-progress"]) == 0
    rows = _read(out)
    assert len(rows) == 4 and all(0 < r["soft_label"] < 1 and r["soft_label"] == r["judge"]["preference"] for r in rows)
    assert "chosen_score" not in rows[0] and "verdicts equal in both orders" in capsys.readouterr().out
    out2 = str(tmp_path / "pointwise.jsonl")
    assert main(["score", "-i", data, "-o", out2, "--scorer", "judge", "--judge-model", models["a"], "--judge-mode",
                 "pointwise", "--score-range", "1", "5", "--no-progress"]) == 0
    rows = _read(out2)
    assert all(1 <= r["chosen_score"] <= 5 and r["judge"]["scale"] == [1, 5] for r in rows)
    from rdpo_fast.data.records import load_preference_data
    from rdpo_fast.models.loading import load_tokenizer

    d = load_preference_data(out, load_tokenizer(models["a"]), max_length=256)
    assert d.has_soft_labels and d.pairs[0].soft_label == pytest.approx(_read(out)[0]["soft_label"])
