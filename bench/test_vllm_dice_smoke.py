"""The vLLM-vs-transformers DICE bench runs end to end on CPU with a tiny model (--cpu-smoke, transformers
only), so it stays working between the sessions that have a GPU."""
import json
import subprocess
import sys


def test_vllm_dice_bench_cpu_smoke(tmp_path):
    out = tmp_path / "vllm-dice.json"
    res = subprocess.run([sys.executable, "-m", "bench.vllm_dice", "--cpu-smoke", "--out", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    [run] = result["runs"]
    assert run["generator"] == "transformers" and run["samples"] == 9 and run["samples_per_s"] > 0
    assert run["score_tokens_per_s"] > 0 and result["device"]["device"].startswith("cpu")
