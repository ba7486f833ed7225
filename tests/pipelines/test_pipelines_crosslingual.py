"""Cross-lingual implicit rewarding end to end on a tiny model: target-language samples scored under the
prefixed English instruction, per-language length-controlled pairs whose prompt is the target-language
instruction, DPO + NLL training, the held-out measure, and bad input."""
import json

import pytest
from tiny import save_tiny, write_subset

from rdpo_fast.data.templates import TemplateError, read_parallel
from rdpo_fast.pipelines.cli import main
from rdpo_fast.pipelines.crosslingual import PREFIX, language_prefix

ROWS = [{"id": f"q{i}", "en": f"English question {i}?", "es": f"Pregunta {i} en español?",
         "de": f"Deutsche Frage {i}?"} for i in range(4)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("xl")
    par = root / "parallel.jsonl"
    par.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS))
    return {"model": save_tiny(str(root / "model")), "parallel": str(par),
            "offline": write_subset(str(root / "offline.jsonl"), 4), "root": root}


def final_eval_flags(files):
    """The run's external evaluation, small: the tiny model judges 2 held-out prompts per set."""
    return ["--judge", files["model"], "--final-eval-num-prompts", "2", "--final-eval-max-new-tokens", "4"]


def _args(files, out, *extra):
    return ["crosslingual", "--policy", files["model"], "--output-dir", str(out), "--parallel", files["parallel"],
            "--offline", files["offline"], "--languages", "es,de", "--rounds", "1", "-k", "3",
            "--prompts-per-round", "2", "--eval-prompts", "1", "--init-pairs", "4", "--batch-size", "2",
            "--max-steps", "1", "--train-last-layers", "0", "--max-length", "160", "--lr", "1e-3",
            "--max-new-tokens", "6", "--keep-truncated", "--no-progress", *final_eval_flags(files), *extra]


def test_prefix_is_the_papers():
    assert language_prefix("fr") == ("Please answer the following instruction using only French, unless explicitly "
                                     "instructed to respond in a different language.\n\n")
    assert PREFIX.count("{language}") == 1


def test_crosslingual_end_to_end(files, capsys):
    out = files["root"] / "run"
    assert main(_args(files, out, "--languages", "en,es,de", "--rounds", "2", "--prompt-pool", "same",
                      "--reward-pair", "previous-vs-initial")) == 0
    printed = capsys.readouterr().out
    assert "es: pairs / alpha" in printed and "en: pairs / alpha" in printed and "win vs round 0" in printed
    # The external evaluation: the multilingual held-out set in the run's languages, by the judge given,
    # with the win rate and the share of answers in the requested language per language.
    ev = json.load(open(out / "summary.json"))["final_eval"]
    assert ev["n_total"] == 6 and ev["settings"]["languages"] == ["en", "es", "de"]
    assert sorted(ev["by_language"]) == ["de", "en", "es"] and sorted(ev["language_share"]) == ["de", "en", "es"]
    assert all(0 <= sh["model"] <= 1 and sh["n"] == 2 for sh in ev["language_share"].values())
    assert "es: share of answers in es" in printed and "implicit win vs round 0" in printed
    scored = [json.loads(line) for line in open(out / "round1" / "scored.jsonl")]
    assert len(scored) == 6  # 2 prompts x 3 languages
    by_id = {r["id"]: r for r in ROWS}
    for g in scored:
        row = by_id[g["id"]]
        # Sampled for the target-language instruction, scored under the English one: prefixed for the
        # other languages, as it is for English itself (upstream).
        assert g["prompt"][-1]["content"] == row[g["language"]]
        want = row["en"] if g["language"] == "en" else language_prefix(g["language"]) + row["en"]
        assert g["score_prompt"][-1]["content"] == want
        assert all("reward" in c for c in g["candidates"] if c["reason"] is None)
    # The same prompts both rounds; round 2 scores with (pi_1, ref_0).
    again = [json.loads(line) for line in open(out / "round2" / "scored.jsonl")]
    assert [g["id"] for g in again] == [g["id"] for g in scored]
    r2 = json.load(open(out / "round2" / "score.done.json"))["stats"]
    assert r2["reward_policy"] == str(out / "round1" / "train" / "final")
    assert r2["reward_reference"] == files["model"]  # ref_0: the policy the English DPO started from
    r1 = json.load(open(out / "round1" / "score.done.json"))["stats"]
    assert r1["reward_policy"] == str(out / "round0" / "train" / "final") and r1["tokens_per_s"] > 0
    pairs = [json.loads(line) for line in open(out / "round1" / "train.jsonl")]
    assert pairs and all(p["prompt"][-1]["content"]
                         == by_id[next(g["id"] for g in scored if g["prompt"] == p["prompt"])][p["language"]]
                         for p in pairs)
    summary = json.load(open(out / "summary.json"))
    r1 = summary["rounds"][1]
    assert set(r1["languages"]) == {"en", "es", "de"} and r1["pairs"] == len(pairs)
    for st in r1["languages"].values():
        assert st["pairs"] + st["skipped_no_valid"] + st["skipped_one_valid"] + st["skipped_few_valid"] + \
            st["skipped_tied"] == 2
    assert summary["final_policy"] == str(out / "round2" / "train" / "final")
    assert summary["start_policy"] == str(out / "round0" / "train" / "final")
    assert summary["rounds"][0]["eval"]["prompts"] == 3 and 0 <= r1["eval"]["win_rate_vs_round0"] <= 1
    cfg = json.load(open(out / "round1" / "train" / "config.json"))
    assert cfg["nll_alpha"] == 1.0 and cfg["loss_type"] == "sigmoid"  # DPO + NLL
    held = [json.loads(line) for line in open(out / "eval" / "round1.jsonl")]
    assert {h["id"] for h in held} == {"q3"}  # the held-out row is never trained on
    assert all(g["id"] != "q3" for g in scored)


@pytest.mark.parametrize("extra,message", [
    (["--languages", "es,xx"], "unknown language code 'xx'"),
    (["--languages", "fr"], "not in the parallel prompt file"),
    (["-k", "1"], "K (samples per prompt) must be >= 2"),
    (["--eval-prompts", "4"], "leaves none"),
    (["--reward-pair", "initial", "--policy", "/no/such/model"], "model path not found"),
])
def test_crosslingual_bad_input(files, tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    assert main(_args(files, out, *extra)) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_parallel_file_validation(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"id": "a", "es": "hola"}) + "\n")
    with pytest.raises(TemplateError, match="English"):
        read_parallel(str(p))
    p.write_text(json.dumps({"en": "hi", "es": "hola"}) + "\n" + json.dumps({"en": "bye", "de": "tschüss"}) + "\n")
    with pytest.raises(TemplateError, match="differ"):
        read_parallel(str(p))
