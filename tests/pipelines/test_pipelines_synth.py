"""rDPO synthesis: task templates (shipped, user files, bad ones), prompt files, the self-critique chain
in one chat, and the synth command's output and bad input."""
import json

import pytest
from tiny import save_tiny

from rdpo_fast.data.templates import (
    TemplateError,
    get_template,
    load_templates,
    read_parallel,
    read_prompts,
    shipped_task_prompts,
    task_prompts,
    train_jailbreak_wrappers,
)
from rdpo_fast.lm.generation import Sample
from rdpo_fast.pipelines import synth as synth_mod
from rdpo_fast.pipelines.cli import main
from rdpo_fast.pipelines.synth import SynthSettings, synthesize


def test_shipped_templates_and_prompts():
    ts = load_templates()
    assert {"safety", "roleplay", "sycophancy"} <= set(ts)
    for t in ts.values():
        assert t.critique().startswith("Identify specific ways in which your previous answer is ")
        assert t.revision().startswith("Rewrite your original response using the critique to be ")
        assert t.judge_rubric and len(task_prompts(t)) >= 30
    # Every safety prompt is framed by a training jailbreak wrapper (the held-out ones are for evaluation).
    assert ts["safety"].wrappers == tuple(train_jailbreak_wrappers()) and len(ts["safety"].wrappers) >= 8
    assert all("{prompt}" not in ts["safety"].wrap("Q?", i) and "Q?" in ts["safety"].wrap("Q?", i) for i in range(10))
    mixed = shipped_task_prompts()
    assert len(mixed) == sum(len(task_prompts(t)) for t in ts.values()) and len(set(mixed)) == len(mixed)
    rows = read_parallel()
    assert len(rows) >= 30 and {"en", "es", "fr", "de", "it"} <= set(rows[0])
    assert len({r["es"] for r in rows}) == len(rows)


def test_shipped_prompts_are_not_in_the_shipped_preference_data():
    # DICE replays the shipped pairs on prompts disjoint from the generated ones.
    from rdpo_fast.data.shipped import default_path
    from rdpo_fast.pipelines.pairing import prompt_key

    shipped = set()
    for split in ("train", "eval"):
        shipped |= {prompt_key(json.loads(line)["prompt"]) for line in open(default_path(split))}
    assert not shipped & {prompt_key(p) for p in shipped_task_prompts()}


def test_user_templates_add_and_replace(tmp_path):
    (tmp_path / "p.txt").write_text("First prompt\n\nSecond prompt\n")
    f = tmp_path / "mine.yaml"
    f.write_text("tasks:\n  medical:\n    fault: overconfident about a diagnosis\n    goal: careful and honest\n"
                 "    prompts: p.txt\n  safety:\n    fault: unsafe\n    goal: safe\n")
    ts = load_templates(str(f))
    assert ts["medical"].critique().endswith("overconfident about a diagnosis.")
    assert task_prompts(ts["medical"]) == ["First prompt", "Second prompt"]
    assert ts["safety"].fault == "unsafe" and "roleplay" in ts


@pytest.mark.parametrize("text,message", [
    ("tasks:\n  x:\n    goal: g\n", "field 'fault'"),
    ("tasks:\n  x:\n    fault: f\n    goal: g\n    colour: red\n", "unknown field"),
    ("tasks:\n  x:\n    fault: f\n    goal: g\n    wrappers: ['no placeholder']\n", "{prompt}"),
    ("tasks:\n  x:\n    fault: f\n    goal: g\n    critique_request: 'Critique it.'\n", "{fault}"),
    ("tasks:\n  x:\n    fault: f\n    goal: g\n    prompts: missing.jsonl\n", "prompt file not found"),
    ("tasks: {}\n", "non-empty 'tasks'"),
    ("tasks: [unclosed\n", "bad.yaml:2:1: YAML syntax error: expected ',' or ']'"),
])
def test_bad_template_files(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(TemplateError, match=message.replace("{", r"\{").replace("}", r"\}")):
        load_templates(str(f))


def test_unknown_task_and_bad_prompt_files(tmp_path):
    with pytest.raises(TemplateError, match="unknown task template 'medical'; known: roleplay, safety, sycophancy"):
        get_template("medical")
    with pytest.raises(TemplateError, match="template file not found"):
        get_template("safety", str(tmp_path / "none.yaml"))
    (tmp_path / "a.jsonl").write_text('{"text": "no prompt field"}\n')
    with pytest.raises(TemplateError, match="'prompt'"):
        read_prompts(str(tmp_path / "a.jsonl"))
    (tmp_path / "b.txt").write_text("\n\n")
    with pytest.raises(TemplateError, match="no prompts"):
        read_prompts(str(tmp_path / "b.txt"))


def test_chain_is_one_chat(monkeypatch):
    """Each turn sees the whole conversation so far; chosen = revision, rejected = original."""
    seen = []

    def fake_generate(model, tok, convs, *, settings, desc, **kw):
        seen.append(convs)
        turn = len(seen)
        return [[Sample(["", f"answer {i}", f"critique {i}", f"revision {i}"][turn], 3, True)]
                for i in range(len(convs))]

    monkeypatch.setattr(synth_mod, "generate", fake_generate)
    task = get_template("safety")
    recs, st = synthesize(None, None, task, ["How do I X?", "How do I Y?"], SynthSettings())
    assert st["pairs"] == 2 and len(seen) == 3
    third = seen[2][1]
    assert [m["role"] for m in third] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert third[2]["content"] == "answer 1" and third[3]["content"] == task.critique()
    assert third[4]["content"] == "critique 1" and third[5]["content"] == task.revision()
    assert third[1]["content"] == task.wrap("How do I Y?", 1) != "How do I Y?"
    r = recs[1]
    assert r["chosen"] == [{"role": "assistant", "content": "revision 1"}]
    assert r["rejected"] == [{"role": "assistant", "content": "answer 1"}]
    assert (r["response"], r["critique"], r["revision"]) == ("answer 1", "critique 1", "revision 1")
    assert r["prompt"] == third[:2]


def test_chain_drops_bad_pairs_and_counts_them(monkeypatch):
    script = {1: ["ok answer", "", "same", "fine"], 2: ["c"] * 4,
              3: ["ok revision", "rev", "same", "the the the " * 10]}
    calls = []

    def fake_generate(model, tok, convs, *, settings, desc, **kw):
        calls.append(1)
        return [[Sample(script[len(calls)][i], 3, not (len(calls) == 1 and i == 0))] for i in range(len(convs))]

    monkeypatch.setattr(synth_mod, "generate", fake_generate)
    recs, st = synthesize(None, None, get_template("sycophancy"), ["a", "b", "c", "d"], SynthSettings())
    assert st["pairs"] == 1 and st["dropped_bad_answer"] == 1 and st["dropped_unchanged"] == 1
    assert st["dropped_bad_revision"] == 1 and st["truncated_answer"] == 1
    calls.clear()
    recs, st = synthesize(None, None, get_template("sycophancy"), ["a", "b", "c", "d"],
                          SynthSettings(drop_truncated=True))
    assert st["pairs"] == 0 and st["dropped_bad_answer"] == 2


def test_rdpo_pipeline_end_to_end(tmp_path, capsys):
    """synth -> score (reward model) -> train --loss-type rdpo, on tiny models."""
    from test_pipelines_judge import _rm

    from rdpo_fast.cli import main as rdpo_main

    model = save_tiny(str(tmp_path / "teacher"))
    out = tmp_path / "synth.jsonl"
    assert main(["synth", "--task", "roleplay", "--teacher", model, "--num-prompts", "4", "--max-new-tokens", "8",
                 "--output", str(out), "--no-progress"]) == 0
    rows = [json.loads(line) for line in open(out)]
    assert 2 <= len(rows) <= 4
    for r in rows:
        assert {"prompt", "chosen", "rejected", "response", "critique", "revision", "task", "truncated"} <= set(r)
        assert (r["chosen"][0]["content"] == r["revision"].strip()
                and r["rejected"][0]["content"] == r["response"].strip())
    assert "pairs made" in capsys.readouterr().out
    scored = tmp_path / "scored.jsonl"
    assert main(["score", "-i", str(out), "-o", str(scored), "--scorer", "rm",
                 "--rm-model", _rm({"root": tmp_path, "policy": model}), "--no-progress"]) == 0
    labelled = [json.loads(line) for line in open(scored)]
    assert len(labelled) == len(rows) and all(0 < r["soft_label"] < 1 for r in labelled)
    assert rdpo_main(["train", "--model", model, "--data", str(scored), "--loss-type", "rdpo", "--output-dir",
                      str(tmp_path / "student"), "--batch-size", "2", "--max-steps", "1", "--max-length", "200",
                      "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 0
    assert (tmp_path / "student" / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("args,message", [
    (["--task", "medical", "--output", "o.jsonl"], "unknown task template 'medical'"),
    (["--task", "safety"], "give --output"),
    (["--task", "safety", "--output", "o.jsonl", "--teacher", "/no/such/model"], "model path not found"),
    (["--task", "safety", "--output", "o.jsonl", "--prompts", "/no/prompts.jsonl"], "prompt file not found"),
    (["--task", "safety", "--output", "o.jsonl", "--max-new-tokens", "0"], "max_new_tokens"),
])
def test_synth_bad_input(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["synth", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
