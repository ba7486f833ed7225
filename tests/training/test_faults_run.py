"""Faults while training (issue 14, items 1-5), on the tiny Llama of tests/support/tiny.py, CPU fp32:

- a real `python -m rdpo_fast train` subprocess SIGKILLed at named moments (the RDPO_FAST_PAUSE_AT hook of
  rdpo_fast/fault_points.py stops it there): no partial checkpoint is ever listed, every listed one
  loads and matches the uninterrupted run's checkpoint of that step bit for bit, and `--resume` reaches
  bit-identical final weights and metrics;
- a run directory moved or copied elsewhere resumes into itself, never into the saved output path;
- truncated or corrupt checkpoint files: skipped with a note, or one-line errors naming the file;
- disk full while checkpointing and read-only output locations: one-line errors, nothing partial,
  found before any model loads.
One uninterrupted reference run serves every comparison.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from faultfs import chmod_blocks_writes, tmpfs
from safetensors.torch import load_file
from tiny import exact_run_flags, read_weights, run_files

from rdpo_fast.cli import main
from rdpo_fast.models import loading as modeling
from rdpo_fast.training import checkpoint as ckpt
from rdpo_fast.training import fault_points

STEPS = 5


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return run_files(tmp_path_factory.mktemp("faults"))


def _flags(files, out, *extra):
    return exact_run_flags(files, out, STEPS, "--save-steps", "1", *extra)


@pytest.fixture(scope="module")
def reference(files):
    """The uninterrupted run, every checkpoint kept."""
    out = files["root"] / "reference"
    assert main(["train", *_flags(files, out, "--save-total-limit", "0")]) == 0
    return out


@pytest.fixture(autouse=True)
def _fresh_fault_counts():
    fault_points._seen.clear()
    yield
    fault_points._seen.clear()


def _metrics(run):
    return [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]


def _steps(paths):
    return [int(os.path.basename(p).split("-")[1]) for p in paths]


def _load_fresh(files, ck):
    """The real resume path: a fresh model, optimizer and scheduler restored from checkpoint `ck`."""
    from transformers import get_scheduler

    model = modeling.load_model(files["model"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    sched = get_scheduler("cosine", opt, num_warmup_steps=1, num_training_steps=STEPS)
    state = ckpt.load_checkpoint(ck, model=model, optimizer=opt, scheduler=sched)
    return state


def _assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _check_resumes_exactly(files, reference, run, capsys):
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    _assert_same_weights(read_weights(run), read_weights(reference))
    assert _metrics(run) == _metrics(reference)
    leftovers = [n for d in (run, run / "checkpoints") for n in os.listdir(d) if n.startswith(".tmp-")]
    assert leftovers == []


def test_fp16_loss_scaler_state_is_saved_and_restored(files, tmp_path, capsys):
    """--dtype fp16's loss scale (lowered by overflows) and growth count travel with the checkpoint: a
    resumed run that began again at the initial scale would overflow, and skip, steps the uninterrupted
    run applied. A CPU scaler stands in for the CUDA one (the same class and state)."""
    from transformers import get_scheduler

    model = modeling.load_model(files["model"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = get_scheduler("constant", opt)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    scaler.load_state_dict({**scaler.state_dict(), "scale": 2.0 ** 9, "_growth_tracker": 37})
    state = {"global_step": 3, "epoch": 0, "step_in_epoch": 3, "data_world": 1, "config": {}}
    path = ckpt.save_checkpoint(str(tmp_path), model=model, optimizer=opt, scheduler=sched, state=state, scaler=scaler)
    assert ckpt.checkpoint_problem(path) is None and os.path.isfile(os.path.join(path, ckpt.SCALER_FILE))
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    ckpt.load_checkpoint(path, model=model, optimizer=opt, scheduler=sched, scaler=fresh)
    assert fresh.state_dict() == scaler.state_dict()
    assert fresh.get_scale() == 2.0 ** 9
    # A checkpoint without one (fp32/bf16 runs, or written before scalers were saved) says so.
    bare = ckpt.save_checkpoint(str(tmp_path / "bare"), model=model, optimizer=opt, scheduler=sched, state=state)
    assert not os.path.exists(os.path.join(bare, ckpt.SCALER_FILE))
    capsys.readouterr()
    ckpt.load_checkpoint(bare, model=model, optimizer=opt, scheduler=sched,
                         scaler=torch.amp.GradScaler("cpu", init_scale=2.0 ** 16))
    assert "holds no loss-scaler state; fp16 loss scaling starts again from 65536" in capsys.readouterr().err


def test_a_replacement_cut_between_its_renames_keeps_the_old_checkpoint(files, tmp_path):
    """Saving a step again (a finished run resumed with --save-steps) moves the old directory aside, then
    renames the new one in: killed between the two renames, the next run puts the old one back (it was
    complete) rather than deleting it with the other .tmp-* leftovers. Once both renames are done, the
    moved-aside copy is only a leftover."""
    from transformers import get_scheduler

    model = modeling.load_model(files["model"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = get_scheduler("constant", opt)
    state = {"global_step": 2, "epoch": 0, "step_in_epoch": 2, "data_world": 1, "config": {}}
    path = ckpt.save_checkpoint(str(tmp_path), model=model, optimizer=opt, scheduler=sched, state=state)
    parent, name = os.path.split(path)
    aside = os.path.join(parent, f".tmp-{name}-0123abcd.old")
    half_new = os.path.join(parent, f".tmp-{name}-0123abcd")
    os.rename(path, aside)  # the first rename done, the second never happened
    os.makedirs(half_new)
    assert ckpt.list_checkpoints(str(tmp_path)) == []
    ckpt.remove_stale_temporaries(str(tmp_path))
    assert ckpt.list_checkpoints(str(tmp_path)) == [path]
    assert sorted(os.listdir(parent)) == [name]
    shutil.copytree(path, aside)  # both renames done, the old copy not yet deleted
    ckpt.remove_stale_temporaries(str(tmp_path))
    assert sorted(os.listdir(parent)) == [name] and ckpt.list_checkpoints(str(tmp_path)) == [path]


def test_metrics_log_cut_mid_row_resumes(tmp_path):
    """A metrics row cut short by a kill or a full disk (no newline) is after the checkpoint's step and
    dropped with the rows the resumed run logs again; a damaged row before it is named by file and line."""
    from rdpo_fast.training import reporting

    def open_log(step):
        reporter = reporting.Reporter(None, log_dir=str(tmp_path), run_name="r", config={})
        return reporting.MetricsLog(str(tmp_path), reporter, enabled=True, resume_step=step)

    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"step": s, "loss": 0.5}) + "\n" for s in (1, 2, 3)]
    path.write_text("".join(rows) + '{"step": 4, "lo')
    open_log(2)
    assert path.read_text() == "".join(rows[:2])
    path.write_text(rows[0] + "{not json\n" + rows[2])
    with pytest.raises(ValueError, match=f"{path}:2: malformed JSON"):
        open_log(2)


# ---------------------------------------------------------------------------------------- SIGKILL
def _kill_at(files, out, point, timeout=240):
    """Starts `python -m rdpo_fast train` and SIGKILLs it once it is paused at `point`."""
    signal_file = out.parent / f"{out.name}.paused"
    env = dict(os.environ, RDPO_FAST_PAUSE_AT=point, RDPO_FAST_PAUSE_FILE=str(signal_file))
    err = open(out.parent / f"{out.name}.stderr", "w")
    proc = subprocess.Popen([sys.executable, "-m", "rdpo_fast", "train",
                             *_flags(files, out, "--save-total-limit", "2")],
                            env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.time() + timeout
        while not signal_file.exists():
            if proc.poll() is not None:
                pytest.fail(f"training exited ({proc.returncode}) before reaching {point}: "
                            + open(err.name).read()[-2000:])
            if time.time() > deadline:
                pytest.fail(f"training did not reach {point} in {timeout}s")
            time.sleep(0.05)
        assert int(signal_file.read_text()) == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err.close()
    assert proc.returncode == -signal.SIGKILL


# point -> the checkpoints listed after the kill (save every step, keep 2, 5 steps, a save at the end)
KILL_POINTS = {
    "checkpoint-rotate-partial:1": [2, 3],  # step-1 renamed out of the listing and half deleted by step 3's save
    "checkpoint-write:2": [1],  # step-2 half written
    "checkpoint-complete:4": [2, 3],  # step-4 complete, marker and all, not yet renamed into place
    "export-write:1": [4, 5],  # the final export half written
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_never_leaves_a_listed_partial_checkpoint_and_resume_is_exact(files, reference, tmp_path, point,
                                                                             capsys):
    run = tmp_path / "run"
    _kill_at(files, run, point)
    listed = ckpt.list_checkpoints(str(run))
    assert _steps(listed) == KILL_POINTS[point]
    # Nothing named step-N is partial (the old failure: step-N without scheduler.pt, listed).
    step_dirs = [os.path.join(run, "checkpoints", n) for n in os.listdir(run / "checkpoints") if n.startswith("step-")]
    assert sorted(step_dirs) == listed
    for ck in listed:
        state = _load_fresh(files, ck)
        assert state["global_step"] == _steps([ck])[0]
        ref_ck = os.path.join(reference, "checkpoints", os.path.basename(ck))
        _assert_same_weights(load_file(os.path.join(ck, "model.safetensors")),
                             load_file(os.path.join(ref_ck, "model.safetensors")))
    assert not (run / "final").exists()  # the export is renamed into place only when whole
    _check_resumes_exactly(files, reference, run, capsys)


def test_the_old_partial_leftover_is_not_listed(files, reference, tmp_path, capsys):
    """A directory as the old rmtree rotation left it (trainer_state.json, no scheduler.pt) is not a
    checkpoint; --resume on the run takes the newest complete one and says so."""
    run = tmp_path / "run"
    shutil.copytree(reference, run, ignore=shutil.ignore_patterns("final"))
    newest = run / "checkpoints" / "step-0000005"
    os.remove(newest / "scheduler.pt")
    os.remove(newest / "complete.json")  # as a checkpoint written before the marker existed
    assert _steps(ckpt.list_checkpoints(str(run))) == [1, 2, 3, 4]
    capsys.readouterr()
    assert ckpt.find_checkpoint(str(run)).endswith("step-0000004")
    assert "note: skipping" in capsys.readouterr().err
    # A complete marker-less checkpoint (written before the marker existed) still counts and loads.
    os.remove(run / "checkpoints" / "step-0000004" / "complete.json")
    assert _steps(ckpt.list_checkpoints(str(run))) == [1, 2, 3, 4]
    assert _load_fresh(files, str(run / "checkpoints" / "step-0000004"))["global_step"] == 4


# ---------------------------------------------------------------------------------------- moved runs
def test_resume_of_a_copied_or_moved_run_writes_into_it(files, reference, tmp_path, capsys):
    a = tmp_path / "a"
    assert main(["train", *_flags(files, a, "--save-total-limit", "2", "--stop-after-steps", "3")]) == 0
    b = tmp_path / "b"
    shutil.copytree(a, b)
    before = sorted((str(p), p.stat().st_mtime_ns) for p in a.rglob("*"))
    capsys.readouterr()
    assert main(["train", "--resume", str(b), "--no-progress"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == [f"note: resuming into {b}; the checkpoint's saved output directory {a} is not used (the run "
                     "was moved or copied, or --output-dir was given)"]
    assert sorted((str(p), p.stat().st_mtime_ns) for p in a.rglob("*")) == before  # the original is untouched
    _assert_same_weights(read_weights(b), read_weights(reference))
    assert json.load(open(b / "config.json"))["output_dir"] == str(b)
    c = tmp_path / "c"
    shutil.move(a, c)
    assert main(["train", "--resume", str(c / "checkpoints" / "step-0000003"), "--no-progress"]) == 0
    assert not a.exists()  # not recreated
    _assert_same_weights(read_weights(c), read_weights(reference))
    # A checkpoint kept outside a run directory needs --output-dir.
    loose = tmp_path / "loose"
    shutil.copytree(c / "checkpoints" / "step-0000005", loose)
    assert main(["train", "--resume", str(loose)]) == 2
    assert "is not inside a run directory (RUN/checkpoints/step-N): give --output-dir" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- corrupt files
def _one_error_line(capsys, command="train"):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"rdpo-fast {command}:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_truncated_or_corrupt_checkpoint_files(files, reference, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *_flags(files, run, "--save-total-limit", "2", "--stop-after-steps", "3")]) == 0
    newest = run / "checkpoints" / "step-0000003"
    weights = newest / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size // 2)
    capsys.readouterr()
    assert main(["train", "--resume", str(newest)]) == 2
    assert _one_error_line(capsys) == (
        f"rdpo-fast train: error: {newest} is not a complete checkpoint: model.safetensors is truncated or altered "
        f"({size // 2} bytes, {size} when written)")
    # The run directory: the truncated checkpoint is skipped with a note; the run resumes from step 2, exactly.
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert f"note: skipping {newest}, not a complete checkpoint" in capsys.readouterr().err
    _assert_same_weights(read_weights(run), read_weights(reference))
    # Same size, corrupt content: caught when read, named.
    last = run / "checkpoints" / "step-0000005"
    for name in ("model.safetensors", "optimizer.pt"):
        good = (last / name).read_bytes()
        # the safetensors header at the start; the zip directory torch.load reads at the end
        bad = b"\xff" * 64 + good[64:] if name.endswith(".safetensors") else good[:-64] + b"\xff" * 64
        (last / name).write_bytes(bad)
        assert main(["train", "--resume", str(last)]) == 2
        line = _one_error_line(capsys)
        assert line.startswith(f"rdpo-fast train: error: checkpoint {last}: {name} is corrupt or truncated ("), line
        (last / name).write_bytes(good)


# ---------------------------------------------------------------------------------------- disk full, read-only
def _assert_nothing_partial(run):
    assert ckpt.list_checkpoints(str(run)) in ([], [str(run / "checkpoints" / "step-0000001")])
    assert [n for n in os.listdir(run / "checkpoints") if n.startswith(".tmp-")] == []


def test_disk_full_while_checkpointing_simulated(files, tmp_path, capsys, monkeypatch):
    """ENOSPC raised by the hook in the middle of step 2's checkpoint (scheduler.pt)."""
    run = tmp_path / "run"
    monkeypatch.setenv(fault_points.FAIL_ENV, "checkpoint-write:2=ENOSPC")
    assert main(["train", *_flags(files, run)]) == 2
    assert _one_error_line(capsys) == ("rdpo-fast train: error: cannot write checkpoint "
                                       f"{run}/checkpoints/step-0000002 (scheduler.pt): no space left on device")
    assert _steps(ckpt.list_checkpoints(str(run))) == [1]
    _assert_nothing_partial(run)


def test_disk_full_while_checkpointing_real(files, tmp_path, capsys):
    """A real 320 KiB file system: config and metrics fit, the first checkpoint does not (torch.save
    then fails with its zip writer's RuntimeError, which must read as one line)."""
    disk = tmp_path / "disk"
    with tmpfs(str(disk), 320) as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (needs root and mount rights); the simulated test covers it")
        run = disk / "run"
        assert main(["train", *_flags(files, run)]) == 2
        line = _one_error_line(capsys)
        assert line.startswith(f"rdpo-fast train: error: cannot write checkpoint {run}/checkpoints/step-0000001 (")
        assert "no space left on device" in line
        assert ckpt.list_checkpoints(str(run)) == []
        _assert_nothing_partial(run)


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch):
    """(directory that cannot be written, how): a read-only tmpfs where mounting works, else a 0o555
    directory for a non-root user, else the hook's EROFS at the writability check."""
    d = tmp_path / "ro"
    with tmpfs(str(d), 64, readonly=True) as mounted:
        if mounted:
            yield d, "read-only tmpfs"
            return
        if chmod_blocks_writes(str(d)):
            d.chmod(0o555)
            yield d, "chmod 555"
            d.chmod(0o755)
            return
        monkeypatch.setenv(fault_points.FAIL_ENV, "output-check=EROFS")
        yield d, "simulated EROFS"


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a model or tokenizer was loaded before the output location was checked")

    monkeypatch.setattr(modeling, "load_model", refuse)
    monkeypatch.setattr(modeling, "load_tokenizer", refuse)


def test_read_only_output_fails_before_any_model_loads(files, read_only_dir, no_model_loads, tmp_path, capsys):
    ro, how = read_only_dir
    print(f"read-only location: {how}", file=sys.stderr)
    reason = "Permission denied" if how == "chmod 555" else "Read-only file system"
    for out in (ro, ro / "run"):
        assert main(["train", *_flags(files, out)]) == 2, how
        where = "" if out == ro else f" (in {ro})"
        assert _one_error_line(capsys) == (f"rdpo-fast train: error: output directory {out} is not writable"
                                           f"{where}: {reason}")
    policy = ["--policy", files["model"]]
    cases = {
        "synth": ["--output", str(ro / "pairs.jsonl"), "--num-prompts", "1", "--teacher", files["model"]],
        "score": ["--input", files["train"], "--output", str(ro / "scored.jsonl"), "--scorer", "implicit", *policy,
                  "--reference", files["model"]],
        "dice": ["--output-dir", str(ro / "dice"), *policy],
        "crosslingual": ["--output-dir", str(ro / "xl"), *policy],
    }
    for command, args in cases.items():
        assert main([command, *args, "--no-progress"]) == 2, command
        line = _one_error_line(capsys, command)
        assert "is not writable" in line and str(ro) in line and reason in line, line
    assert not any(ro.iterdir())


def test_read_only_cache_dir_fails_before_the_model_loads(files, read_only_dir, tmp_path, capsys, monkeypatch):
    ro, how = read_only_dir
    monkeypatch.setattr(modeling, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    if how == "simulated EROFS":  # the output directory's check is the first, the cache's the second
        monkeypatch.setenv(fault_points.FAIL_ENV, "output-check:2=EROFS")
    out = tmp_path / "out"
    assert main(["train", *_flags(files, out), "--cache-dir", str(ro / "cache")]) == 2
    assert "reference cache directory (--cache-dir)" in _one_error_line(capsys)
