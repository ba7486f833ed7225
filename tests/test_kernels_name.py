"""Our top-level kernels/ folder never takes the name `kernels` from Hugging Face's package, which
transformers (>= 5.25) imports for TrainingArguments and model loading (SPEC section 2): not in a fresh
interpreter started in the repository root, not with the root on PYTHONPATH, not in a torchrun worker."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ROOT / "kernels"

# What a user who cloned the repository runs first: the TRL stack and our integration, in the root.
PROBE = r"""
import json, sys
import kernels
from transformers import TrainingArguments
import peft
out = {"kernels": kernels.__file__, "has_hub_api": hasattr(kernels, "get_kernel"),
       "root_first": sys.path[0]}
try:
    from trl import DPOTrainer
    import rdpo_fast.integrations.trl  # noqa: F401
    out["trl"] = True
except ImportError as e:
    if "trl" not in str(e):
        raise
    out["trl"] = False
import rdpo_fast.kernels.logprob_forward as ours
out["ours"] = ours.__file__
print(json.dumps(out))
"""


def _check(out: dict):
    hub = Path(out["kernels"]).resolve()
    assert OURS not in hub.parents and "site-packages" in hub.parts, f"`import kernels` found {hub}"
    assert out["has_hub_api"], "`import kernels` is not Hugging Face's package"
    assert Path(out["ours"]).resolve().parent == OURS


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


@pytest.mark.parametrize("pythonpath", [None, str(ROOT)], ids=["cwd-root", "pythonpath-root"])
def test_fresh_interpreter_in_repository_root(pythonpath):
    env = _env(**({"PYTHONPATH": pythonpath} if pythonpath else {}))
    # `python -c` puts the working directory first on sys.path: the case that used to break.
    res = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["root_first"] in ("", str(ROOT))
    _check(out)


def test_torchrun_worker_in_repository_root(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text("import os\n" + PROBE.replace(
        "print(json.dumps(out))",
        "open(os.environ['PROBE_OUT'] + os.environ['RANK'], 'w').write(json.dumps(out))"))
    # The worker gets the root on PYTHONPATH too, as the distributed tests' workers used to.
    env = _env(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PROBE_OUT=str(tmp_path / "rank"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    for rank in range(2):
        _check(json.loads((tmp_path / f"rank{rank}").read_text()))


def test_pytest_keeps_the_root_behind_site_packages():
    # pytest runs with --import-mode=append: the folders it adds go after site-packages.
    site = min(i for i, p in enumerate(sys.path) if p.endswith("site-packages"))
    for i, p in enumerate(sys.path):
        if p and Path(p).resolve() == ROOT:
            assert i > site, f"the repository root is sys.path[{i}], ahead of site-packages"
    import kernels

    assert OURS not in Path(kernels.__file__).resolve().parents
