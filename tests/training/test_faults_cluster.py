"""Nothing lost on a cluster (issue 23), with real processes on the tiny Llama of tests/support/tiny.py, CPU fp32:

- preemption: SIGTERM or SIGUSR1 after step 2 of a run with no scheduled checkpoint ends it within
  seconds with a complete checkpoint at step 2 and exit 143, a second signal during that save is only
  noted, and `--resume` reaches the uninterrupted run's weights (bit for bit) and metrics; the same for
  a 2-process gloo torchrun run signalled through its launcher, and for a DICE run signalled inside its
  training stage (the rerun resumes the stage) and then inside its generation stage;
- one writer per run directory: of two runs started together on one directory exactly one trains, the
  other exits 2 at once naming the directory and the holder; a SIGKILLed holder blocks nobody;
- divergence: a run at lr 1e6 skips its non-finite steps, stops with exit 3 and one line naming the
  step; no model.safetensors on disk holds a non-finite value and metrics.jsonl is strict JSON.
The RDPO_FAST_PAUSE_AT hook (rdpo_fast/training/fault_points.py) holds a process at a named moment, so
every signal lands there and no test sleeps on timing.
"""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from tiny import exact_run_flags, read_weights, run_files

from rdpo_fast import run_lock
from rdpo_fast.cli import main
from rdpo_fast.training import checkpoint as ckpt

STEPS = 5


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return run_files(tmp_path_factory.mktemp("cluster"))


def _flags(files, out, *extra):
    return exact_run_flags(files, out, STEPS, *extra)  # no scheduled checkpoint


@pytest.fixture(scope="module")
def reference(files):
    """The uninterrupted run."""
    out = files["root"] / "reference"
    assert main(["train", *_flags(files, out)]) == 0
    return out


def _metrics(run):
    return [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _no_leftovers(run: Path):
    """No temporary file or directory of a write, and no lock file, anywhere in the run directory."""
    found = [str(p) for p in run.rglob("*") if p.name.startswith(".tmp-") or p.name.endswith(".lock")]
    assert found == []


class Proc:
    """A real rdpo-fast process (or torchrun) whose stderr is kept, paused by the fault-point hook."""

    def __init__(self, tmp: Path, name: str, argv: list[str], pause: str | None = None, **env):
        self.pause_file, self.go_on = tmp / f"{name}.paused", tmp / f"{name}.continue"
        self.err_path, self.out_path = tmp / f"{name}.stderr", tmp / f"{name}.stdout"
        environ = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", **env,
                       RDPO_FAST_PAUSE_FILE=str(self.pause_file), RDPO_FAST_CONTINUE_FILE=str(self.go_on))
        if pause:
            environ["RDPO_FAST_PAUSE_AT"] = pause
        with open(self.err_path, "w") as err, open(self.out_path, "w") as out:
            self.proc = subprocess.Popen(argv, env=environ, stdout=out, stderr=err)

    def paused(self, timeout: float = 180) -> int:
        """Waits until the process is held at its pause point; returns the pid that paused (a worker's
        under torchrun) and clears the mark for the next pause."""
        deadline = time.time() + timeout
        while not self.pause_file.exists():
            if self.proc.poll() is not None:
                pytest.fail(f"exited ({self.proc.returncode}) before pausing: {self.stderr()[-3000:]}")
            if time.time() > deadline:
                pytest.fail(f"did not pause in {timeout}s: {self.stderr()[-3000:]}")
            time.sleep(0.02)
        pid = int(self.pause_file.read_text())
        self.pause_file.unlink()
        return pid

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def stderr(self) -> str:
        return self.err_path.read_text()

    def lines(self, prefix: str) -> list[str]:
        return [line for line in self.stderr().splitlines() if line.startswith(prefix)]


def _train(files, out, *extra) -> list[str]:
    return [sys.executable, "-m", "rdpo_fast", "train", *_flags(files, out, *extra)]


# ---------------------------------------------------------------------------------------- preemption
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_after_step_2_checkpoints_it_and_resume_is_exact(files, reference, tmp_path, sig):
    run = tmp_path / "run"
    # SIGTERM: paused again half-way through the checkpoint the signal caused, and signalled again there.
    pause = "step-done:2,checkpoint-write:1" if sig == "SIGTERM" else "step-done:2"
    p = Proc(tmp_path, "run", _train(files, run), pause=pause)
    pid = p.paused()
    assert pid == p.proc.pid
    t0 = time.time()
    os.kill(pid, getattr(signal, sig))
    if sig == "SIGTERM":
        p.paused()  # inside the save: its temporary directory, nothing listed yet
        assert ckpt.list_checkpoints(str(run)) == []
        assert [n for n in os.listdir(run / "checkpoints") if n.startswith(".tmp-step-0000002")]
        os.kill(pid, signal.SIGTERM)  # noted, not acted on: the save goes on
    assert p.wait(60) == 143 and time.time() - t0 < 60
    assert p.lines("rdpo-fast train:") == [
        f"rdpo-fast train: stopped by {sig} after step 2 of {STEPS}: checkpoint {run}/checkpoints/step-0000002; "
        f"resume with: rdpo-fast train --resume {run}"]
    assert "Traceback" not in p.stderr()
    listed = ckpt.list_checkpoints(str(run))
    assert [os.path.basename(c) for c in listed] == ["step-0000002"]
    assert ckpt.read_state(listed[0])["global_step"] == 2
    assert not (run / "final").exists()
    assert _metrics(run) == _metrics(reference)[:2]
    assert json.load(open(run / "summary.json"))["stop"] == "signal"
    _no_leftovers(run)
    # --resume redoes no finished step: it starts at step 3 and ends where the uninterrupted run did.
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert _same_weights(read_weights(run), read_weights(reference))
    assert _metrics(run) == _metrics(reference)
    _no_leftovers(run)


def test_a_signal_during_setup_ends_the_run_at_once(files, tmp_path):
    """Before the first step nothing is trained: the signal ends the run where it stands (loading or the
    reference pass may take longer than a scheduler waits), leaving nothing partial and no lock."""
    run = tmp_path / "run"
    p = Proc(tmp_path, "run", _train(files, run, "--cache-dir", str(tmp_path / "cache")),
             pause="output-check:2")  # setup's check of the reference cache directory, the run directory held
    os.kill(p.paused(), signal.SIGTERM)
    assert p.wait(60) == 143
    assert p.lines("rdpo-fast train:") == [
        "rdpo-fast train: stopped by SIGTERM; finished outputs are kept and nothing partial was written; run the "
        "same command again to go on"]
    assert "Traceback" not in p.stderr()
    assert not run.exists()  # the lock made the directory; nothing else was written into it


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_torchrun_signalled_through_its_launcher_checkpoints_once_and_resumes_exactly(files, tmp_path):
    """2 processes (gloo, DDP), 1 pair each per step. The scheduler signals torchrun, which forwards
    SIGTERM to both workers; they agree on the step through the step's count sum and write one
    checkpoint together."""
    logs = tmp_path / "logs"

    def torchrun(out, *extra):
        # each worker's stderr into its own file (LOGS/RUN_ID/attempt_0/RANK/stderr.log)
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--log-dir",
                str(logs / out.name), "--redirects", "2", "-m", "rdpo_fast", "train",
                *_flags(files, out, "--batch-size", "1"), *extra]

    whole = Proc(tmp_path, "whole", torchrun(tmp_path / "whole"))
    assert whole.wait(240) == 0, whole.stderr()[-3000:]
    run = tmp_path / "run"
    p = Proc(tmp_path, "run", torchrun(run), pause="step-done:2")
    p.paused(240)  # one worker after its step 2; the other is there or on its way
    t0 = time.time()
    p.proc.send_signal(signal.SIGTERM)  # the launcher, as a scheduler would
    p.wait(60)
    assert time.time() - t0 < 60
    # torchrun itself ends with its own SignalException; each worker said how to resume, in one line.
    workers = sorted((logs / "run").rglob("stderr.log"))
    assert len(workers) == 2
    for log in workers:
        assert [line for line in log.read_text().splitlines() if line.startswith("rdpo-fast")] == [
            f"rdpo-fast train: stopped by SIGTERM after step 2 of {STEPS}: checkpoint {run}/checkpoints/step-0000002; "
            f"resume with: rdpo-fast train --resume {run}"], log
    assert [os.path.basename(c) for c in ckpt.list_checkpoints(str(run))] == ["step-0000002"]
    assert sorted(os.listdir(run / "checkpoints" / "step-0000002")) == [
        "complete.json", "model.safetensors", "optimizer.pt", "rng-rank0.pt", "rng-rank1.pt", "scheduler.pt",
        "trainer_state.json"]
    _no_leftovers(run)
    again = Proc(tmp_path, "again", [*torchrun(run)[:13], "--resume", str(run), "--no-progress"])
    assert again.wait(240) == 0, again.stderr()[-3000:]
    assert _same_weights(read_weights(run), read_weights(tmp_path / "whole"))
    assert _metrics(run) == _metrics(tmp_path / "whole")
    _no_leftovers(run)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_torchrun_on_a_held_directory_every_rank_exits_with_rank_0s_line(files, tmp_path):
    """Rank 0 alone takes the lock; the other ranks learn its outcome and fail with the same line."""
    run, logs = tmp_path / "run", tmp_path / "logs"
    with run_lock.lock_dir(str(run)):
        p = Proc(tmp_path, "run", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                   "2", "--log-dir", str(logs), "--redirects", "2", "-m", "rdpo_fast", "train",
                                   *_flags(files, run)])
        assert p.wait(240) != 0
    workers = sorted(logs.rglob("stderr.log"))
    lines = [[line for line in w.read_text().splitlines() if line.startswith("rdpo-fast")] for w in workers]
    assert len(lines) == 2 and lines[0] == lines[1] and len(lines[0]) == 1
    assert lines[0][0].startswith(f"rdpo-fast train: error: run directory {run} is in use by another process (pid "
                                  f"{os.getpid()} on host ")
    assert not run.exists()


def _dice(files, out, *extra):
    return ["dice", "--policy", files["model"], "--output-dir", str(out), "--prompts", files["prompts"],
            "--offline", files["train"], "--rounds", "1", "-k", "3", "--prompts-per-round", "3", "--init-pairs", "4",
            "--batch-size", "1", "--max-steps", "4", "--train-last-layers", "0", "--max-length", "160", "--lr", "1e-3",
            "--max-new-tokens", "8", "--eval-pairs", "0", "--no-final-eval", "--no-progress", *extra]


def _fake_sampling(monkeypatch):
    """In-process reruns sample without the tiny model's random text: distinct, finished answers."""
    from rdpo_fast.lm.generation import Sample
    from rdpo_fast.pipelines import driver

    def sample(model, tok, convs, k, settings):
        return [[Sample(f"Answer {j} to {c[-1]['content']}" + " more" * (3 * j), 5 + j, True) for j in range(k)]
                for c in convs]

    monkeypatch.setattr(driver, "sample_groups", sample)


def test_dice_signalled_in_training_then_in_generation_resumes_exactly(files, tmp_path, monkeypatch, capsys):
    files = {**files, "prompts": str(tmp_path / "prompts.txt")}
    Path(files["prompts"]).write_text("".join(f"Prompt {i}: say something.\n" for i in range(3)))
    run = tmp_path / "run"
    dice = [sys.executable, "-m", "rdpo_fast", *_dice(files, run)]
    # 1. SIGTERM after step 2 of round 0's training stage: that training run is checkpointed.
    p = Proc(tmp_path, "first", dice, pause="step-done:2")
    os.kill(p.paused(), signal.SIGTERM)
    assert p.wait(60) == 143
    stage = run / "round0" / "train"
    assert p.lines("rdpo-fast dice:") == [
        f"rdpo-fast dice: stopped by SIGTERM in stage round0/train after step 2 of 4: checkpoint "
        f"{stage}/checkpoints/step-0000002; rerun the same command to resume (finished stages are skipped, a "
        "training stage resumes from its checkpoint)"]
    assert (run / "round0" / "data.done.json").exists() and not (run / "round0" / "train.done.json").exists()
    assert [os.path.basename(c) for c in ckpt.list_checkpoints(str(stage))] == ["step-0000002"]
    _no_leftovers(run)
    # 2. The same command again: the stage resumes from its checkpoint; then SIGTERM as round 1's
    #    generation stage begins (the second stage this process runs): it stops where it stands.
    p = Proc(tmp_path, "second", dice, pause="stage-start:2")
    os.kill(p.paused(), signal.SIGTERM)
    assert p.wait(60) == 143
    assert f"[round0/train] resuming from {stage}/checkpoints/step-0000002" in p.out_path.read_text()
    assert p.lines("rdpo-fast dice:") == [
        "rdpo-fast dice: stopped by SIGTERM in stage round1/generate; rerun the same command to resume (finished "
        "stages are skipped, a training stage resumes from its checkpoint)"]
    assert (run / "round0" / "train.done.json").exists() and not (run / "round1" / "generate.done.json").exists()
    assert not (run / "round1" / "candidates.jsonl").exists()
    assert ckpt.list_checkpoints(str(stage)) == []  # the finished stage's output is final/; its checkpoint is gone
    _no_leftovers(run)
    # 3. Rerun to the end, and the same run uninterrupted: the same policies and training metrics.
    _fake_sampling(monkeypatch)
    assert main(_dice(files, run)) == 0
    whole = tmp_path / "whole"
    assert main(_dice(files, whole)) == 0
    for rd in ("round0", "round1"):
        assert _same_weights(read_weights(run / rd / "train"), read_weights(whole / rd / "train")), rd
        assert _metrics(run / rd / "train") == _metrics(whole / rd / "train"), rd
    _no_leftovers(run)


# ---------------------------------------------------------------------------------------- one writer
def test_two_runs_on_one_directory_one_trains_the_other_exits_at_once(files, reference, tmp_path, capsys):
    run = tmp_path / "run"
    # Both pause after their first step, where the winner holds the lock; the loser never gets there.
    a, b = (Proc(tmp_path, name, _train(files, run), pause="step-done:1") for name in ("a", "b"))
    deadline = time.time() + 180
    while a.proc.poll() is None and b.proc.poll() is None:
        assert time.time() < deadline, a.stderr()[-2000:] + b.stderr()[-2000:]
        time.sleep(0.02)
    loser, winner = (a, b) if a.proc.poll() is not None else (b, a)
    winner_pid = winner.paused()
    assert winner_pid == winner.proc.pid and loser.wait() == 2
    assert loser.lines("rdpo-fast train:") == [
        f"rdpo-fast train: error: run directory {run} is in use by another process (pid {winner_pid} on host "
        f"{socket.gethostname()} since {json.load(open(run / '.lock'))['since']}); wait for it to end or choose "
        "another output location"]
    # In this process too (another open file description of the same lock file).
    capsys.readouterr()
    assert main(["train", *_flags(files, run)]) == 2
    assert f"run directory {run} is in use by another process (pid {winner_pid} " in capsys.readouterr().err
    winner.go_on.write_text("")
    assert winner.wait() == 0
    # The survivor's run is whole: every step, the export, the weights of the uninterrupted run.
    assert _same_weights(read_weights(run), read_weights(reference)) and _metrics(run) == _metrics(reference)
    assert json.load(open(run / "summary.json"))["global_step"] == STEPS
    _no_leftovers(run)


def test_a_sigkilled_holder_blocks_nobody(files, reference, tmp_path):
    run = tmp_path / "run"
    p = Proc(tmp_path, "killed", _train(files, run), pause="step-done:1")
    pid = p.paused()
    os.kill(pid, signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL
    assert json.load(open(run / ".lock"))["pid"] == pid  # the file stays; its lock died with the process
    assert main(["train", *_flags(files, run)]) == 0
    assert _same_weights(read_weights(run), read_weights(reference))
    _no_leftovers(run)


def test_pipelines_generate_and_eval_refuse_a_held_output(files, tmp_path, capsys):
    """Every writer takes the lock (in this process: another open file description of the same file)."""
    out = tmp_path / "dice"
    answers = tmp_path / "answers.json"
    evals = tmp_path / "eval"
    files = {**files, "prompts": str(tmp_path / "prompts.txt")}
    Path(files["prompts"]).write_text("Prompt: say something.\n")
    answers.write_text(json.dumps([{"instruction": "Say hi.", "output": "hi", "generator": "x"}]))
    cases = {
        "dice": (run_lock.lock_dir(str(out)), _dice(files, out), f"run directory {out} is in use"),
        "generate": (run_lock.lock_file(str(answers)), ["generate", "--model", files["model"], "--prompts", "general",
                                                        "--num-prompts", "1", "-o", str(answers), "--no-progress"],
                     f"answers file {answers} is in use"),
        "eval": (run_lock.lock_dir(str(evals)), ["eval", "-a", str(answers), "-b", str(answers), "--judge",
                                                 files["model"], "-o", str(evals), "--no-progress"],
                 f"output directory {evals} is in use"),
    }
    for command, (lock, argv, message) in cases.items():
        capsys.readouterr()
        with lock:
            assert main(argv) == 2, command
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"rdpo-fast {command}: error: {message} by another process (pid "
                                                   f"{os.getpid()} on host "), err
    # Nothing was written; the directories the test's own locks made are gone with them.
    assert sorted(os.listdir(tmp_path)) == ["answers.json", "prompts.txt"]


# ---------------------------------------------------------------------------------------- divergence
def _strict(line: str):
    def refuse(token):
        raise ValueError(f"non-strict JSON token {token}")

    return json.loads(line, parse_constant=refuse)


def test_a_run_at_lr_1e6_stops_naming_the_step_and_writes_nothing_non_finite(files, tmp_path):
    run = tmp_path / "run"
    p = Proc(tmp_path, "lr", _train(files, run, "--lr", "1e6", "--max-steps", "8", "--save-steps", "1",
                                    "--save-total-limit", "0"))
    assert p.wait() == 3
    rows = [_strict(line) for line in open(run / "metrics.jsonl")]
    skipped = [r["step"] for r in rows if r.get("skipped")]
    first = skipped[0]
    assert skipped == [first, first + 1, first + 2]  # --max-nonfinite-steps 3 (the default), in a row
    quantity = rows[first - 1]["nonfinite"][0]
    words = {"loss": "loss", "grad_norm": "gradient norm"}[quantity]
    [line] = p.lines("rdpo-fast train:")
    assert line.startswith(f"rdpo-fast train: error: training diverged at step {first}: its {words} was not finite; "
                           f"steps {first}-{first + 2} (3 in a row, --max-nonfinite-steps 3) had a non-finite loss or "
                           "gradient norm and were skipped"), line
    for r in rows:
        for k in r.get("nonfinite", []):
            assert r[k] is None
    assert json.load(open(run / "summary.json"))["stop"] == "diverged"
    assert not (run / "final").exists()
    # Every weight file on disk is finite, and the skipped steps' checkpoints hold the last applied step's weights.
    saved = sorted(run.rglob("model.safetensors"))
    assert len(saved) == first + 1  # a checkpoint after every step but the one that stopped the run
    for f in saved:
        assert all(bool(torch.isfinite(t).all()) for t in load_file(f).values()), f
    last_good = load_file(run / "checkpoints" / f"step-{first - 1:07d}" / "model.safetensors")
    for s in skipped[:-1]:  # no checkpoint after the step that stopped the run
        assert _same_weights(load_file(run / "checkpoints" / f"step-{s:07d}" / "model.safetensors"), last_good)
    _no_leftovers(run)
    assert math.isfinite(rows[0]["loss"])
