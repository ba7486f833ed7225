"""torchrun, 2 processes, gloo on CPU: DDP and FSDP2 (fully_shard) give the loss and gradients of one
process (2 ranks x 2 micro-batches against one call over the whole step), and a short training run with
each strategy ends at the weights of a single-process run, through their checkpoints and export."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from paths import SUPPORT
from tiny import read_weights, save_tiny, write_subset

from rdpo_fast.cli import main

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
HERE = str(SUPPORT)  # the torchrun worker and the helpers it imports


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    model = save_tiny(str(root / "model"))
    data = write_subset(str(root / "train.jsonl"), 8)
    single = root / "single"
    # The same run in one process: 4 pairs a step as 2 micro-batches of 2 (torchrun: 2 ranks x 2 x 1).
    assert main(["train", "--model", model, "--data", data, "--output-dir", str(single), "--cache-dir",
                 str(root / "cache"), "--batch-size", "2", "--grad-accum", "2", "--epochs", "2", "--lr", "1e-3",
                 "--max-length", "160", "--seed", "3", "--nll-alpha", "0.5", "--no-progress", "--no-bf16"]) == 0
    return {"root": root, "model": model, "data": data, "single": single}


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(setup, strategy, capsys):
    root = setup["root"]
    out = root / f"{strategy}.json"
    run_dir = root / f"run_{strategy}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(HERE, "dist_check.py"), "--model", setup["model"], "--data", setup["data"],
           "--strategy", strategy, "--cache", str(root / "cache"), "--train-out", str(run_dir), "--out", str(out)]
    # gloo on CPU even where a GPU is present (the processes would otherwise share one device)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=HERE)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.load(open(out))
    assert r["world"] == 2 and r["n_grads"] > 0
    assert r["loss_dist"] == pytest.approx(r["loss_single"], rel=1e-6)
    assert r["max_grad_diff"] <= 1e-5 * r["grad_scale"]
    # End to end: same final weights as the single-process run, and a checkpoint and export on disk.
    a, b = read_weights(setup["single"]), read_weights(run_dir)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    assert r["train_summary"]["processes"] == 2 and os.path.isdir(r["train_summary"]["checkpoint"])
    assert r["resumed_equal"], "a 2-process run stopped and resumed must end where the uninterrupted one does"
    # Its checkpoint resumed by one process would deal the pairs differently: refused, naming both counts.
    assert main(["train", "--resume", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "with 1 data-parallel process(es): it was written by 2" in err, err[-2000:]
    if strategy == "fsdp":  # the head really is sharded, and gathered whole for the fused loss
        assert r["head_sharded"] and r["gathered_shape"] == r["head_shape"]
