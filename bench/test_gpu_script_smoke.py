"""The GPU benchmark script runs end to end on CPU at tiny shapes (--cpu-smoke), so CI keeps it working
between the sessions that have a GPU."""
import json
import subprocess
import sys

import pytest


@pytest.mark.parametrize("suite", ["logprobs", "loss"])
def test_gpu_script_cpu_smoke(suite, tmp_path):
    out = tmp_path / f"{suite}.json"
    res = subprocess.run([sys.executable, "-m", "bench.gpu", "--suite", suite, "--cpu-smoke", "--out", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["suite"] == suite and result["device"].startswith("cpu")
    rows = result["random"] + result["realistic"]
    assert any(r["impl"] == "rdpo_fast" and "median_ms" in r for r in rows)
    assert all(v < 3e-2 for v in result["accuracy_vs_float64"].values())
