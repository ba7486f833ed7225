"""Data sources: every input form (a datasets save_to_disk directory, parquet, JSON, CSV, a folder of data
files, TRL's implicit-prompt records, UltraFeedback's names, mapped columns) loads exactly the pairs its
JSONL equivalent loads; bad rows are named by source and row."""
import json

import pytest
from tiny import build_tokenizer, write_subset

from rdpo_fast.data import sources as data_sources
from rdpo_fast.data.records import DataError, load_preference_data

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """Shipped chat records with scores, as JSONL: the reference every other form must reproduce."""
    root = tmp_path_factory.mktemp("src")
    path = write_subset(str(root / "ref.jsonl"), 6, transform=lambda i, r: {
        "prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"],
        "chosen_score": float(i % 3), "rejected_score": 0.5})
    return path, [json.loads(line) for line in open(path)]


def _pairs(data):
    return [(p.prompt, p.chosen, p.rejected, p.soft_label) for p in data.pairs]


def _load(source, tok, **kw):
    return data_sources.load(source, tok, max_length=256, **kw)


def test_every_form_loads_the_jsonl_pairs(ref, tok, tmp_path):
    path, rows = ref
    want = _pairs(load_preference_data(path, tok, max_length=256))
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "disk"))
    datasets.DatasetDict({"train": ds, "test": ds.select([0, 1])}).save_to_disk(str(tmp_path / "dict"))
    ds.to_parquet(str(tmp_path / "d.parquet"))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "folder").mkdir()
    ds.to_parquet(str(tmp_path / "folder" / "train.parquet"))
    for source, kw in ((path, {}), (str(tmp_path / "disk"), {}), (str(tmp_path / "dict"), {}),
                       (str(tmp_path / "d.parquet"), {}), (str(tmp_path / "d.json"), {}),
                       (str(tmp_path / "folder"), {"split": "train"})):
        got = _load(source, tok, **kw)
        assert _pairs(got) == want, source
        assert got.has_soft_labels
    assert len(_load(str(tmp_path / "dict"), tok, split="test")) == 2
    with pytest.raises(DataError, match=r"no split 'validation' \(it has \['test', 'train'\]\)"):
        _load(str(tmp_path / "dict"), tok, split="validation")


def test_trl_implicit_prompt_ultrafeedback_names_and_mapped_columns(ref, tok, tmp_path):
    path, rows = ref
    want = _pairs(load_preference_data(path, tok, max_length=256))
    # TRL's implicit-prompt format: the conversation, prompt included, in chosen and rejected.
    implicit = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"],
                 "chosen_score": r["chosen_score"], "rejected_score": r["rejected_score"]} for r in rows]
    # UltraFeedback-binarized: a text prompt beside conversations that hold it, score_chosen/score_rejected.
    ultra = [{"prompt": r["prompt"][-1]["content"], "prompt_id": str(i), "chosen": r["prompt"] + r["chosen"],
              "rejected": r["prompt"] + r["rejected"], "score_chosen": r["chosen_score"],
              "score_rejected": r["rejected_score"]} for i, r in enumerate(rows)]
    mapped = [{"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"],
               "chosen_rating": r["chosen_score"], "rejected_rating": r["rejected_score"]} for r in rows]
    cols = data_sources.Columns("question", "good", "bad")
    for name, recs, kw in (("implicit", implicit, {}), ("ultra", ultra, {}), ("mapped", mapped, {"columns": cols})):
        jsonl = tmp_path / f"{name}.jsonl"
        jsonl.write_text("".join(json.dumps(r) + "\n" for r in recs))
        parquet = tmp_path / f"{name}.parquet"
        datasets.Dataset.from_list(recs).to_parquet(str(parquet))
        for source in (jsonl, parquet):
            assert _pairs(_load(str(source), tok, **kw)) == want, source


def test_text_records_csv_and_trl_space_rule(tok, tmp_path):
    explicit = [{"prompt": "Q: is the sky green? A:", "chosen": " no, blue.", "rejected": " yes."},
                {"prompt": "Q: 2+2? A:", "chosen": " 4", "rejected": " 5"}]
    # The shared prefix ends in a space: as TRL, the space goes back to the completions.
    implicit = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in explicit]
    assert data_sources.extract_prompt(implicit[0]["chosen"], implicit[0]["rejected"]) == explicit[0]
    base = tmp_path / "e.jsonl"
    base.write_text("".join(json.dumps(r) + "\n" for r in explicit))
    want = _pairs(load_preference_data(str(base), tok, max_length=64))
    csv = tmp_path / "t.csv"
    csv.write_text("chosen,rejected\n" + "".join(f'"{r["chosen"]}","{r["rejected"]}"\n' for r in implicit))
    assert _pairs(data_sources.load(str(csv), tok, max_length=64)) == want


def test_bad_rows_name_source_and_row(ref, tok, tmp_path):
    path, rows = ref
    bad = [dict(r) for r in rows]
    bad[3]["soft_label"] = 1.5
    for r in bad:
        r.setdefault("soft_label", 0.5)
    parquet = str(tmp_path / "bad.parquet")
    datasets.Dataset.from_list(bad).to_parquet(parquet)
    with pytest.raises(DataError, match=rf"^{parquet}:row 3: soft_label must lie in \[0, 1\]"):
        data_sources.read_records(parquet)
    same = [{"chosen": "abc", "rejected": "abc"}]
    jsonl = tmp_path / "same.jsonl"
    jsonl.write_text(json.dumps(same[0]) + "\n")
    with pytest.raises(DataError, match=rf"^{jsonl}:1: missing field\(s\) 'prompt' .* identical"):
        data_sources.read_records(str(jsonl))
    with pytest.raises(DataError, match=r":1: no field 'question' \(--prompt-key question\)"):
        data_sources.read_records(path, columns=data_sources.Columns(prompt="question"))
    half = [dict(rows[0]), {k: v for k, v in rows[1].items() if k != "chosen_score"}]
    half[1]["score_chosen"] = 1.0
    half[0]["score_chosen"] = 2.0
    p2 = tmp_path / "both.jsonl"
    p2.write_text("".join(json.dumps(r) + "\n" for r in half))
    with pytest.raises(DataError, match=r":1: both 'chosen_score' and its alias 'score_chosen'"):
        data_sources.read_records(str(p2))
    with pytest.raises(DataError, match="data file not found"):
        data_sources.read_records(str(tmp_path / "nope.parquet"))
    empty = str(tmp_path / "empty.parquet")
    datasets.Dataset.from_list(rows).select([]).to_parquet(empty)
    with pytest.raises(DataError, match=rf"^{empty}: "):  # datasets refuses an empty file itself
        data_sources.read_records(empty)
