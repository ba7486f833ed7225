"""FusedDPOTrainer under DDP (torchrun, 2 processes, gloo on CPU), padded and padding_free=True, logs the
same losses, gradient norms and gathered metrics as trl.DPOTrainer under DDP, with gradient accumulation,
and ends at the same weights: TRL's normalisation over micro-batches and ranks is kept."""
import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist
from paths import SUPPORT

pytest.importorskip("trl")
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
HERE = str(SUPPORT)  # the torchrun worker and the helpers it imports

from test_trl_integration import assert_same_logs, tiny  # noqa: E402,F401  (fixture)


def test_ddp_same_as_trl(tiny, tmp_path):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(tiny["ds"].to_list()))
    out = tmp_path / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(HERE, "trl_ddp_check.py"), "--policy", tiny["policy"], "--other", tiny["other"],
           "--data", str(data), "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=HERE)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.load(open(out))
    assert r["trl"]["world"] == r["rdpo_fast"]["world"] == 2
    assert r["rdpo_fast"]["distributed_type"] == "DistributedType.MULTI_CPU"
    for ours in ("rdpo_fast", "rdpo_fast_padding_free"):
        assert_same_logs(r[ours]["logs"], r["trl"]["logs"], tiny)
        assert r[ours]["checksum"] == pytest.approx(r["trl"]["checksum"], rel=1e-6)
