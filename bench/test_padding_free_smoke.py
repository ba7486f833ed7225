"""The padding-free measurement (bench/padding_free.py) runs end to end on a slice of the shipped data, and
its counts hold together: the packed rows carry exactly the padded batches' real tokens."""
import json

import pytest


def test_padding_free_measurement_smoke(tmp_path):
    pytest.importorskip("trl")
    from bench.padding_free import main

    out = tmp_path / "pf.json"
    result = main(["--batch-sizes", "4", "--seeds", "0", "1", "--limit", "24", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    row = result["by_batch_size"]["4"]
    assert result["examples"] == 24 and row["batches_per_epoch"] == 6
    assert row["real_tokens_per_epoch"] == pytest.approx(result["sequence_tokens"]["mean"] * 48)
    assert all(p > row["real_tokens_per_epoch"] for p in row["padded_tokens_per_epoch"])
    assert 0 < row["padding_saved_fraction"]["min"] <= row["padding_saved_fraction"]["max"] < 1
