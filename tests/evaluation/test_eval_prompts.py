"""The shipped held-out prompt sets: their size, that they share nothing with what training ships (the
safety wrappers, prompts, personas, misconceptions, the parallel set), and that the multilingual set's
prompts are identified as their own language by the language identifier the evaluation uses."""
import json

import compose_data as compose
import pytest

from rdpo_fast.data.templates import load_templates
from rdpo_fast.evaluation import tasks
from rdpo_fast.evaluation.langid import identify


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def test_sets_exist_with_modest_sizes():
    for t in tasks.ENGLISH_TASKS:
        items = tasks.load_task(t)
        assert 20 <= len(items) <= 40, t
        assert len({i.id for i in items}) == len(items) and len({i.instruction for i in items}) == len(items)
        assert all(i.task == t and i.language == "en" and i.source.startswith(tasks.shipped_file("")) for i in items)
    ml = tasks.load_task("multilingual", list(tasks.LANGUAGES))
    assert len(ml) == 5 * 24 and {i.language for i in ml} == set(tasks.LANGUAGES)
    assert len(tasks.load_task("multilingual", ["es"], num_prompts=3)) == 3


def test_heldout_wrappers_are_not_training_wrappers():
    training = {w for t in load_templates().values() for w in t.wrappers}
    assert training, "the training templates lost their wrappers; this test would check nothing"
    held = set(tasks.HELDOUT_WRAPPERS)
    assert all(w.count("{prompt}") == 1 for w in held) and len(held) == len(tasks.HELDOUT_WRAPPERS)
    assert not held & training
    # nor any framing text of a training wrapper or of the shipped pairs' prompt templates
    frames = [w.replace("{prompt}", "").strip() for w in training] + \
             [p.split("{")[0].strip() for p in compose.SAFETY_PROMPTS + compose.PERSONA_PROMPTS]
    for w in held:
        text = _norm(w.replace("{prompt}", ""))
        assert not any(f and _norm(f) in text for f in frames), w
    # every held-out safety prompt carries one of the held-out wrappers
    for k, item in enumerate(tasks.load_task("safety")):
        assert item.instruction.startswith(tasks.HELDOUT_WRAPPERS[k % 8].split("{prompt}")[0])


def test_no_heldout_prompt_appears_in_training_files():
    train = [_norm(t) for t in tasks.training_prompt_texts()]
    assert len(train) > 500
    train_set = set(train)
    for t in tasks.TASKS:
        for item in tasks.load_task(t, list(tasks.LANGUAGES) if t == "multilingual" else None):
            assert _norm(item.instruction) not in train_set, item.source
    # the bare requests / questions / claims are not inside any training prompt either
    for t in ("safety", "sycophancy", "general"):
        for line, rec in tasks.read_records(tasks.shipped_file(f"{t}.jsonl")):
            bare = _norm(rec["prompt"])
            assert not any(bare in x for x in train), f"{t}.jsonl:{line}"
    for line, rec in tasks.read_records(tasks.shipped_file("multilingual.jsonl")):
        for lang in tasks.LANGUAGES:
            assert not any(_norm(rec[lang]) in x for x in train), f"multilingual.jsonl:{line} {lang}"


def test_heldout_personas_and_misconceptions_are_new():
    personas = {rec["persona"].lower() for _, rec in tasks.read_records(tasks.shipped_file("roleplay.jsonl"))}
    train = " ".join(_norm(t) for t in tasks.training_prompt_texts())
    assert len(personas) == 8 and not any(p in train for p in personas)
    known_claims = [_norm(c) for c, _ in compose.MISCONCEPTIONS]
    for _, rec in tasks.read_records(tasks.shipped_file("sycophancy.jsonl")):
        assert not any(c in _norm(rec["prompt"]) for c in known_claims)


def test_language_identification_on_the_shipped_multilingual_prompts():
    items = tasks.load_task("multilingual", list(tasks.LANGUAGES))
    found = identify([i.instruction for i in items])
    wrong = [(i.language, f, i.instruction) for i, f in zip(items, found) if f != i.language]
    assert not wrong
    assert identify(["", "The cat sleeps on the warm windowsill all afternoon."]) == [None, "en"]


def test_prompt_files_of_users(tmp_path):
    alpaca = tmp_path / "alpaca_eval.json"
    alpaca.write_text(json.dumps([
        {"instruction": "What is 2+2?", "output": "4", "generator": "gpt4", "dataset": "helpful_base"},
        {"instruction": "Name a colour.", "output": "Red", "generator": "gpt4", "dataset": "koala"}], indent=2))
    items = tasks.read_prompt_file(str(alpaca))
    assert [i.instruction for i in items] == ["What is 2+2?", "Name a colour."]
    assert [i.dataset for i in items] == ["helpful_base", "koala"] and items[1].source == f"{alpaca}:8"
    jl = tmp_path / "p.jsonl"
    jl.write_text(json.dumps({"prompt": "Hi there", "task": "general"}) + "\n\n" + json.dumps(
        {"id": "x", "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}],
         "language": "en"}) + "\n")
    items = tasks.read_prompt_file(str(jl))
    assert items[0].task == "general" and items[0].id == "item1" and items[1].messages[0]["content"] == "Be brief."
    assert items[1].instruction == "Why?" and items[1].source.endswith(":3")
    assert tasks.load_prompts(str(jl), num_prompts=1)[0].instruction == "Hi there"
    assert [i.task for i in tasks.load_prompts("safety,roleplay", num_prompts=2)] == ["safety"] * 2 + ["roleplay"] * 2


@pytest.mark.parametrize("content,message", [
    ("", "is empty"),
    ("[]", "no prompts"),
    ('{"prompt": "a"}\n{"text": "b"}\n', ":2: a prompt record needs 'instruction'"),
    ('[{"instruction": "a"},\n {"instruction": ""}]', ":2: the instruction must be a non-empty string"),
    ('{"prompt": "a", "task": "poetry"}\n', ":1: unknown task 'poetry'"),
    ('{"prompt": "a", "id": 1}\n{"prompt": "b", "id": 1}\n', ":2: id '1' repeats line 1"),
    ('{"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n', "must end with a user"),
    ('[{"instruction": "a"} {"instruction": "b"}]', ":1: expected ',' or ']'"),
    ('{"prompt": "a"\n', ":1: malformed JSON"),
])
def test_bad_prompt_files_name_file_and_line(tmp_path, content, message):
    f = tmp_path / ("p.json" if content.startswith("[") else "p.jsonl")
    f.write_text(content)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        tasks.read_prompt_file(str(f))
    assert str(f) in str(e.value)


def test_unknown_task_and_language():
    with pytest.raises(tasks.TaskError, match="unknown task poetry; known: safety"):
        tasks.load_prompts("safety,poetry")
    with pytest.raises(tasks.TaskError, match="no language xx"):
        tasks.load_task("multilingual", ["xx"])
