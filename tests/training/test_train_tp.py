"""`rdpo-fast train --tp 2` under torchrun on gloo (CPU): transformers' own tensor-parallel plan
(tp_plan="auto", DTensor) with the fused loss reading each rank's vocabulary shard of the lm_head. One
step's loss and every gradient equal the unsharded model's (tests/support/tp_check.py), and a short CLI run logs
the single-process run's losses, gradient norms and metrics and ends at its weights. --cp and the
settings --tp cannot take are refused by name."""
import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist
from paths import SUPPORT
from tiny import save_tiny, write_subset

from rdpo_fast.cli import main

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
HERE = str(SUPPORT)  # tp_check.py and the helpers it imports


def _env():
    # gloo on CPU even where a GPU is present; the CLI's default path (torch twins), as one process runs it.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return dict(env, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=HERE)


def _torchrun(*args, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp")
    return {"root": root, "untied": save_tiny(str(root / "untied"), tied=False), "tied": save_tiny(str(root / "tied")),
            "data": write_subset(str(root / "train.jsonl"), 8)}


def test_one_step_loss_and_gradients_equal_the_whole_model(files):
    out = files["root"] / "check.json"
    _torchrun(os.path.join(HERE, "tp_check.py"), "--model", files["untied"], "--data", files["data"], "--out", str(out))
    r = json.loads(out.read_text())
    assert r["world"] == 2 and r["n_params"] > 10
    assert r["loss_tp"] == pytest.approx(r["loss_whole"], rel=1e-6)
    for a, b in zip(r["aux_tp"], r["aux_whole"]):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    worst = max(r["grad_rel_diffs"], key=r["grad_rel_diffs"].get)
    assert r["grad_rel_diffs"][worst] <= 1e-5, f"{worst}: {r['grad_rel_diffs'][worst]}"
    # The loss got the lm_head as this rank's half of the vocabulary (a Shard(0) DTensor), never whole.
    whole, sharded = r["seen"]
    assert not whole["dtensor"] and whole["local_rows"] == r["vocab"]
    assert sharded["dtensor"] and "Shard(dim=0)" in sharded["placements"] and sharded["local_rows"] == r["vocab"] // 2


def _rows(run):
    return [json.loads(line) for line in open(run / "metrics.jsonl")]


@pytest.mark.parametrize("model", ["untied", "tied"])
def test_cli_run_matches_one_process(files, model):
    root = files["root"]
    args = ["train", "--model", files[model], "--data", files["data"], "--batch-size", "2", "--max-steps", "3",
            "--lr", "1e-3", "--no-bf16", "--reference", "precompute", "--cache-dir", str(root / f"cache-{model}"),
            "--no-progress", "--seed", "3", "--max-length", "160", "--nll-alpha", "0.2"]
    single, tp = root / f"single-{model}", root / f"tp-{model}"
    assert main([*args, "--output-dir", str(single)]) == 0
    _torchrun("-m", "rdpo_fast", *args, "--tp", "2", "--output-dir", str(tp))
    a, b = _rows(single), _rows(tp)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        for k, v in ra.items():
            assert rb[k] == pytest.approx(v, rel=2e-5, abs=1e-5), (ra["step"], k)
    summary = json.loads((tp / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_step"] == 3
    from safetensors.torch import load_file

    wa, wb = load_file(str(single / "final" / "model.safetensors")), load_file(str(tp / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:  # three AdamW steps of lr 1e-3 from the same gradients (to float32 rounding)
        assert (wa[k] - wb[k]).abs().max() <= 1e-4, k
    config = json.loads((tp / "final" / "config.json").read_text())
    assert config.get("distributed_config") is None  # the export loads as a plain model


@pytest.mark.parametrize("extra, message", [
    (["--cp", "2"], "cp > 1 is not supported"),
    (["--tp", "2", "--lora-r", "4"], "tp 2 with LoRA"),
    (["--tp", "2", "--reference", "copy"], "tp 2 with reference 'copy'"),
    (["--tp", "2"], "--tp 2 needs exactly 2 processes"),
])
def test_refused_by_name(files, tmp_path, capsys, extra, message):
    code = main(["train", "--model", files["untied"], "--data", files["data"], "--output-dir", str(tmp_path / "x"),
                 "--max-steps", "1", "--no-progress", *extra])
    assert code == 2
    assert message in capsys.readouterr().err
