"""The shipped preference pairs are exactly what their generator (tests/support/compose_data.py) writes."""
import compose_data

from rdpo_fast.data.shipped import default_path


def test_shipped_splits_regenerate_identically():
    for name, text in compose_data.render().items():
        split = name[len("default_"):-len(".jsonl")]
        with open(default_path(split), encoding="utf-8") as f:
            assert f.read() == text, f"{name} differs from what compose_data.py writes"
