"""The LLM judge's strict marked-score parser on adversarial answers, its retry-then-report policy
(no score is ever guessed), and the score command with each scorer and its bad input."""
import json
import os

import pytest
import torch
from tiny import save_tiny, write_subset

from rdpo_fast.judges import generative as judge_mod
from rdpo_fast.judges.generative import Judge, JudgeSettings, parse_marked_score
from rdpo_fast.lm.generation import Sample
from rdpo_fast.pipelines.cli import failed_file, main
from rdpo_fast.pipelines.scorers import Score, score_records, soft_label


@pytest.mark.parametrize("answer,score", [
    ("The answer is polite and correct. Rating: [[8]]", 8),
    ("Out of 10 points I first thought 3, then 7; 2 issues remain. Rating: [[6]]", 6),  # prose numbers ignored
    ("[[ 10 ]]", 10),
    ("Rating: [[1]] because it is harmful.", 1),
    ("Rating: [[+4]]", 4),
])
def test_parser_accepts_exactly_one_marked_integer(answer, score):
    p = parse_marked_score(answer, 1, 10)
    assert p.ok and p.score == score


@pytest.mark.parametrize("answer,reason", [
    ("I would rate this answer 7 out of 10.", "no marked score"),  # no score mark: the 7 is not read
    ("", "no marked score"),
    ("Rating: [7]", "no marked score"),
    ("First [[3]], on reflection [[8]].", "2 marked scores"),  # two scores
    ("[[5]] ... final: [[5]]", "2 marked scores"),  # even when equal
    ("Rating: [[-3]]", "outside the range"),  # negative
    ("Rating: [[0]]", "outside the range"),
    ("Rating: [[11]]", "outside the range"),  # out of range
    ("Rating: [[100]]", "outside the range"),
    ("Rating: [[7.5]]", "not an integer"),
    ("Rating: [[7/10]]", "not an integer"),
    ("Rating: [[seven]]", "not an integer"),
    ("Rating: [[N]]", "not an integer"),
    ("Rating: [[]]", "not an integer"),
    ("It has 3 errors and 2 typos, score 9/10. [[ 4 out of 10 ]]", "not an integer"),
])
def test_parser_rejects_adversarial_answers(answer, reason):
    p = parse_marked_score(answer, 1, 10)
    assert not p.ok and p.score is None and reason in p.error


def test_parser_range_is_configurable():
    assert parse_marked_score("[[-2]]", -5, 5).score == -2
    assert not parse_marked_score("[[6]]", -5, 5).ok
    with pytest.raises(ValueError):
        parse_marked_score("[[1]]", 5, 1)


def _scripted(monkeypatch, scripts):
    """Replaces the judge's generation: answer i of attempt a is scripts[i][a] (the item's question is
    its index); records the temperature of each attempt."""
    calls = []

    def fake_generate(model, tokenizer, convs, *, settings, desc, answer_prefix=""):
        calls.append((settings.temperature, len(convs)))
        out = []
        for c in convs:
            i = int(c[-1]["content"].split("[Question]\n")[1].split("\n")[0])
            attempt = sum(1 for t, _ in calls) - 1
            out.append([Sample(scripts[i][min(attempt, len(scripts[i]) - 1)], 5, True)])
        return out

    monkeypatch.setattr(judge_mod, "generate", fake_generate)
    return calls


def test_judge_retries_then_reports_never_guesses(monkeypatch):
    scripts = {
        0: ["Rating: [[7]]"],  # parses first time
        1: ["I'd say 6.", "Rating: [[9]]"],  # parses on the first retry
        2: ["no idea", "[[3]] or [[4]]", "Rating: [[42]]"],  # never parses: reported
    }
    calls = _scripted(monkeypatch, scripts)
    res = Judge(None, None, JudgeSettings(max_retries=2, progress=False))(["0", "1", "2"], ["a", "b", "c"])
    assert [r.score for r in res] == [7, 9, None]
    assert [r.attempts for r in res] == [1, 2, 3]
    assert calls == [(0.0, 3), (0.7, 2), (0.7, 1)]  # greedy first, sampled retries of the failures only
    assert len(res[2].errors) == 3 and "2 marked scores" in res[2].errors[1] and "outside" in res[2].errors[2]
    # max_retries=0: one attempt, failures reported at once.
    _scripted(monkeypatch, scripts)
    res = Judge(None, None, JudgeSettings(max_retries=0, progress=False))(["0", "1"], ["a", "b"])
    assert [r.score for r in res] == [7, None] and res[1].attempts == 1


def test_judge_prefill_is_parsed_with_the_answer(monkeypatch):
    _scripted(monkeypatch, {0: ["4]]"], 1: ["x"]})
    res = Judge(None, None, JudgeSettings(prefill="Rating: [[", max_retries=0, progress=False))(["0", "1"], ["a", "b"])
    assert res[0].score == 4 and res[0].answers == ["Rating: [[4]]"] and res[1].score is None
    with pytest.raises(ValueError, match="complete"):
        JudgeSettings(prefill="[[5]]").validate()


class StubScorer:
    name = "stub"

    def __init__(self, values):
        self.values = values

    def __call__(self, prompts, responses):
        return [Score(self.values.get(r), None if self.values.get(r) is not None else "unparsable") for r in responses]


def test_score_records_soft_labels_and_failed_pairs():
    recs = [{"prompt": "p1", "chosen": "good", "rejected": "bad"},
            {"prompt": "p2", "chosen": "fine", "rejected": "???"},
            {"prompt": [{"role": "user", "content": "p3"}], "chosen": [{"role": "assistant", "content": "bad"}],
             "rejected": [{"role": "assistant", "content": "good"}], "soft_label": 0.9}]
    scored, failed, stats = score_records(recs, StubScorer({"good": 8.0, "bad": 2.0, "fine": 5.0}), temperature=2.0)
    assert [r["prompt"] for r in scored] == ["p1", recs[2]["prompt"]]
    assert scored[0]["soft_label"] == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    assert scored[1]["soft_label"] == pytest.approx(torch.sigmoid(torch.tensor(-3.0)).item())  # old label replaced
    assert len(failed) == 1 and failed[0]["rejected_error"] == "unparsable" and failed[0]["chosen_error"] is None
    assert stats["failed"] == 1 and stats["scored"] == 2 and stats["failed_scores"] == 1
    assert soft_label(1000.0, 0.0, 1.0) == 1.0 and soft_label(-1000.0, 0.0, 1.0) == 0.0
    with pytest.raises(ValueError, match="temperature"):
        score_records(recs, StubScorer({}), temperature=0.0)


# ---------------------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    return {"policy": save_tiny(str(root / "policy"), seed=0), "reference": save_tiny(str(root / "ref"), seed=1),
            "data": write_subset(str(root / "pairs.jsonl"), 4), "root": root}


def _rm(tiny):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    path = str(tiny["root"] / "rm")
    if not os.path.isdir(path):
        tok = AutoTokenizer.from_pretrained(tiny["policy"])
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        LlamaForSequenceClassification(cfg).save_pretrained(path)
        tok.save_pretrained(path)
    return path


def _read(path):
    return [json.loads(line) for line in open(path)]


def test_score_with_reward_model_and_implicit_reward(tiny, tmp_path, capsys):
    out = str(tmp_path / "rm.jsonl")
    assert main(["score", "-i", tiny["data"], "-o", out, "--scorer", "rm", "--rm-model", _rm(tiny),
                 "--no-progress"]) == 0
    rows = _read(out)
    assert len(rows) == 4 and all({"chosen_score", "rejected_score", "soft_label"} <= set(r) for r in rows)
    assert all(r["soft_label"] == pytest.approx(soft_label(r["chosen_score"], r["rejected_score"], 1.0)) for r in rows)
    assert not os.path.exists(failed_file(out))
    out2 = str(tmp_path / "implicit.jsonl")
    assert main(["score", "-i", tiny["data"], "-o", out2, "--scorer", "implicit", "--policy", tiny["policy"],
                 "--reference", tiny["reference"], "--score-temperature", "5", "--no-progress"]) == 0
    rows = _read(out2)
    assert len(rows) == 4 and len({r["chosen_score"] for r in rows}) == 4
    assert "scored pairs" in capsys.readouterr().out
    # The scored file trains with --loss-type rdpo: rdpo_fast.data.records reads the soft labels.
    from rdpo_fast.data.records import load_preference_data
    from rdpo_fast.models.loading import load_tokenizer

    data = load_preference_data(out2, load_tokenizer(tiny["policy"]), max_length=256)
    assert data.has_soft_labels and data.pairs[0].soft_label == pytest.approx(rows[0]["soft_label"])


def test_score_with_the_judge_reports_every_unparsable_pair(tiny, tmp_path, capsys):
    # A random tiny model never writes a marked score: every pair fails, is retried, then reported.
    out = str(tmp_path / "judged.jsonl")
    rc = main(["score", "-i", tiny["data"], "-o", out, "--scorer", "judge", "--judge-model", tiny["policy"],
               "--judge-mode", "generate", "--max-retries", "1", "--judge-max-new-tokens", "4", "--no-progress"])
    err = capsys.readouterr()
    assert rc == 2 and "no pair" in err.err and "could not be scored" in err.out
    failed = _read(failed_file(out))
    assert len(failed) == 4 and _read(out) == []
    assert all("unparsable after 2 attempt(s)" in f["chosen_error"] for f in failed)
    assert all(len(f["chosen_detail"]["answers"]) == 2 for f in failed)


@pytest.mark.parametrize("args,message", [
    (["--scorer", "judge", "--judge-model", "/no/such/judge"], "model path not found: /no/such/judge"),
    (["--scorer", "judge"], "needs --judge-model"),
    (["--scorer", "rm", "--rm-model", "/no/such/rm"], "model path not found"),
    (["--scorer", "implicit", "--policy", "x"], "needs --policy"),
    (["--scorer", "judge", "--judge-model", "smollm2-135m", "--task", "nonsense"], "unknown task template 'nonsense'"),
    (["--scorer", "judge", "--judge-model", "smollm2-135m", "--score-range", "5", "1"], "lo < hi"),
    (["--scorer", "rm", "--rm-model", "x", "--score-temperature", "0"], "score-temperature"),
])
def test_score_bad_input(tiny, tmp_path, capsys, args, message):
    rc = main(["score", "-i", tiny["data"], "-o", str(tmp_path / "o.jsonl"), *args])
    assert rc == 2 and message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o.jsonl")


def test_score_missing_input(tmp_path, capsys):
    assert main(["score", "-i", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "o.jsonl"), "--scorer", "rm",
                 "--rm-model", "x"]) == 2
    assert "data file not found" in capsys.readouterr().err
