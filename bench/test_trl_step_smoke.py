"""The TRL step benchmark (FusedDPOTrainer vs trl.DPOTrainer) runs end to end on CPU at tiny shapes
(--cpu-smoke), so CI keeps it working until a GPU session measures it."""
import json
import subprocess
import sys

import pytest


def test_trl_step_cpu_smoke(tmp_path):
    pytest.importorskip("trl")
    out = tmp_path / "trl_step.json"
    res = subprocess.run([sys.executable, "-m", "bench.trl_step", "--cpu-smoke", "--out", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["suite"] == "trl_step" and result["device"].startswith("cpu") and result["interleaved"]
    rows = {r["impl"]: r for r in result["rows"]}
    assert set(rows) == {"trl", "rdpo_fast"} and all(r["median_ms"] > 0 for r in rows.values())
    # Same init, same batch: the first step's losses agree.
    assert rows["rdpo_fast"]["first_step_loss"] == pytest.approx(rows["trl"]["first_step_loss"], rel=1e-5)
