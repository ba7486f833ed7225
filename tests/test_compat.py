"""What the regrouping of the package (issue 21) must not change: the public API (every name the README
and SPEC section 3 show, at the path they show), the flat layout's module paths, the command line's
surface, and run directories written before the change, which still resume to the same weights."""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_surface import surface

FIXTURES = Path(__file__).resolve().parent / "fixtures"

PUBLIC = {
    "rdpo_fast": ["linear_logprobs", "logprobs", "sequence_logprobs", "preference_loss", "LOSS_TYPES",
                  "FusedLinearPreferenceLoss", "FusedLinearORPOLoss", "FusedLinearCPOLoss", "FusedLinearSimPOLoss",
                  "FusedLinearKTOLoss"],
    "rdpo_fast.losses": ["kto_kl_baseline", "FusedLinearORPOLoss", "FusedLinearCPOLoss", "FusedLinearSimPOLoss",
                         "FusedLinearKTOLoss"],
    "rdpo_fast.metrics": ["preference_metrics"],
    "rdpo_fast.modeling": ["logit_transform"],
    "rdpo_fast.evaluation": ["evaluate_against"],
    "rdpo_fast.kernels.logprob_forward": ["logprob_forward"],
    "rdpo_fast.compile_report": ["compile_all", "main"],
}
TRL_PUBLIC = {"rdpo_fast.integrations.trl": ["FusedDPOTrainer", "patch_dpo_trainer", "unpatch_dpo_trainer",
                                             "FusedCPOTrainer"]}


@pytest.mark.parametrize("module", sorted(PUBLIC) + sorted(TRL_PUBLIC))
def test_public_names_import_from_where_they_were(module):
    if module in TRL_PUBLIC:
        pytest.importorskip("trl")
    mod = importlib.import_module(module)
    for name in {**PUBLIC, **TRL_PUBLIC}[module]:
        assert getattr(mod, name, None) is not None, f"{module}.{name}"


def test_flat_layout_paths_are_the_new_modules():
    from rdpo_fast.compat import OLD_PATHS

    for old, new in OLD_PATHS.items():
        if old.startswith("rdpo_fast.integrations.trl_cpo"):
            try:
                importlib.import_module("trl.experimental.cpo")
            except ImportError:
                continue
        assert importlib.import_module(old) is importlib.import_module(new), old
    # the three modules that became packages re-export what they held
    from rdpo_fast.data import PreferenceData, collate
    from rdpo_fast.ops import linear_logprobs, workspace_bytes

    assert PreferenceData and collate and linear_logprobs and workspace_bytes


def test_command_line_surface_is_unchanged():
    from rdpo_fast.cli import build_parser

    before = json.loads((FIXTURES / "cli_surface.json").read_text())
    now = surface(build_parser())
    assert sorted(now) == sorted(before), "subcommands changed"
    for cmd in before:
        old = {o["dest"]: o for o in before[cmd]}
        new = {o["dest"]: o for o in now[cmd]}
        assert sorted(new) == sorted(old), f"{cmd}: options changed: {sorted(set(new) ^ set(old))}"
        for dest in old:
            assert new[dest] == old[dest], f"rdpo-fast {cmd}: option {dest} changed"


def _digest(path: Path) -> str:
    from safetensors.torch import load_file

    t = load_file(str(path))
    h = hashlib.sha256()
    for k in sorted(t):
        h.update(k.encode())
        h.update(t[k].float().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def old_runs(tmp_path_factory):
    """The run directories written by the flat layout's code (tests/fixtures/before_layout: a train run
    stopped at step 2 of 4, a DICE run SIGKILLed during round 2's export), resumed by today's code."""
    work = tmp_path_factory.mktemp("before_layout") / "runs"
    shutil.copytree(FIXTURES / "before_layout", work)
    cmds = json.loads((work / "commands.json").read_text())
    # As the expected weights were made: the CLI on the CPU (torch twin, not the interpreter), one thread.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = "1"
    for args in (["train", "--resume", "train_run"], cmds["dice"]):
        res = subprocess.run([sys.executable, "-m", "rdpo_fast", *args], cwd=work, env=env, capture_output=True,
                             text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
    return work


def test_run_directories_from_before_resume_to_the_same_weights(old_runs):
    expected = json.loads((old_runs / "expected.json").read_text())
    for run, digest in expected.items():
        assert _digest(old_runs / run / "model.safetensors") == digest, f"{run} ends elsewhere than before"
    # the DICE rerun trained only the interrupted round: rounds 0 and 1 kept their outputs
    for r in ("round0", "round1"):
        assert (old_runs / "dice_run" / r / "train.done.json").is_file()
