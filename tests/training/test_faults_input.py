"""Bad input and the CLI's one error path (issue 14, items 6-10): data that is not UTF-8, config values of
the wrong type, YAML/JSON syntax errors, a missing optional package, and NaN/inf in the ops' inputs
(contained by default, raised with check_finite). Every expected failure is one line
`rdpo-fast COMMAND: error: ...`, exit 2, traceback only on request; a bug keeps its traceback."""
import dataclasses
import json
import subprocess
import sys
import typing

import pytest
import torch
from tiny import save_tiny, write_subset

import rdpo_fast
from rdpo_fast import errors
from rdpo_fast.cli import main
from rdpo_fast.data.records import read_jsonl
from rdpo_fast.ops import checks as _checks
from rdpo_fast.training import typed
from rdpo_fast.training.config import TrainConfig, read_config_file


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    return {"model": save_tiny(str(root / "model")), "train": write_subset(str(root / "train.jsonl"), 4),
            "root": root}


def _error_line(capsys, command="train"):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"rdpo-fast {command}:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------------------------------- item 6: UTF-8
def test_data_file_not_utf8_names_file_and_line(files, tmp_path, capsys):
    good = open(files["train"], "rb").read().splitlines(keepends=True)
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(good[0] + good[1].replace(b'"prompt"', b'"pr\xf6mpt"', 1) + good[2])
    with pytest.raises(ValueError,
                       match=rf"^{bad}:2: not UTF-8 text \(byte 0xf6 at column \d+\); save the file as UTF-8$"):
        read_jsonl(str(bad))
    out = tmp_path / "out"
    assert main(["train", "--model", files["model"], "--data", str(bad), "--output-dir", str(out), "--no-bf16"]) == 2
    assert _error_line(capsys).startswith(f"rdpo-fast train: error: {bad}:2: not UTF-8 text (byte 0xf6 at column ")
    assert not out.exists()
    # A UTF-8 byte-order mark is not an error.
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + b"".join(good))
    assert len(read_jsonl(str(bom))) == 4
    # The pipelines' prompt files, and config files, read the same way.
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"first prompt\nsecond \xff prompt\n")
    assert main(["synth", "--prompts", str(prompts), "--output", str(tmp_path / "s.jsonl")]) == 2
    assert _error_line(capsys, "synth") == (f"rdpo-fast synth: error: {prompts}:2: not UTF-8 text (byte 0xff at "
                                            "column 8); save the file as UTF-8")
    cfg = tmp_path / "run.yaml"
    cfg.write_bytes(b"lr: 1.0e-4\n# caf\xe9\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert f"{cfg}:2: not UTF-8 text (byte 0xe9" in _error_line(capsys)


# ---------------------------------------------------------------------------------------- item 7: types
@pytest.mark.parametrize("text,message", [
    ("model: m\nbatch_size: two\n", ":2: batch_size must be an int, got 'two'"),
    ("max_steps: 10.5\n", ":1: max_steps must be an int or null, got 10.5"),
    ("lr: fast\n", ":1: lr must be a number, got 'fast'"),
    ("bf16: maybe\n", ":1: bf16 must be true or false or null, got 'maybe'"),
    ("data: 5\n", ":1: data must be a string or null, got 5"),
    ("packed: [1]\n", ":1: packed must be true or false, got [1]"),
    ("epochs: true\n", ":1: epochs must be an int, got True"),
    ("loss_type: dpo\n", ":1: loss_type must be one of sigmoid, rdpo, "),
    ("scheduler: 3\n", ":1: scheduler must be a string, got 3"),
])
def test_config_values_are_type_checked_by_name(tmp_path, capsys, text, message):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    with pytest.raises(ValueError, match="^" + f"config file {cfg}{message}".replace("[", r"\[").replace("]", r"\]")):
        read_config_file(str(cfg))
    assert main(["train", "--config", str(cfg)]) == 2
    assert _error_line(capsys).startswith(f"rdpo-fast train: error: config file {cfg}{message}")


def test_config_values_convert_as_a_file_writer_expects(tmp_path):
    cfg = tmp_path / "run.yaml"
    # YAML 1.1 reads 5e-5 as a string; 10.0 is a whole number; 'yes' a boolean word
    cfg.write_text("lr: 5e-5\nmax_steps: 10.0\npacked: 'yes'\nbeta: 1\nmax-length: '256'\n")
    values = read_config_file(str(cfg))
    assert values == {"lr": 5e-5, "max_steps": 10, "packed": True, "beta": 1.0, "max_length": 256}
    assert type(values["beta"]) is float and type(values["max_steps"]) is int
    js = tmp_path / "run.json"
    js.write_text(json.dumps({"batch_size": "two"}))
    with pytest.raises(ValueError, match=rf"^config file {js}:1: batch_size must be an int, got 'two'$"):
        read_config_file(str(js))


def test_api_values_and_flags_are_type_checked(capsys):
    with pytest.raises(ValueError, match="^batch_size must be an int, got 'two'$"):
        TrainConfig(batch_size="two").validate()
    with pytest.raises(ValueError, match="^loss_type must be one of"):
        TrainConfig(loss_type="dpo").validate()
    assert TrainConfig(lr="3e-4").validate().lr == 3e-4
    with pytest.raises(SystemExit) as e:  # flags: argparse converts with the declared type, naming the flag
        main(["train", "--batch-size", "two"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == ("rdpo-fast train: error: argument --batch-size: invalid int "
                                                        "value: 'two'")


def test_type_checks_follow_the_declared_field_types():
    """A field added to a settings dataclass later is covered with no extra code."""
    @dataclasses.dataclass
    class Settings:
        steps: int | None = None
        names: list[str] = dataclasses.field(default_factory=list)
        mode: typing.Literal["a", "b"] = "a"
        ratio: float = 0.5
        flag: bool = False

    assert typed.check_values(Settings, {"steps": "3", "names": ["x"], "mode": "b", "ratio": 1, "flag": "no"}) == {
        "steps": 3, "names": ["x"], "mode": "b", "ratio": 1.0, "flag": False}
    for key, value, message in [("steps", "three", "steps must be an int or null, got 'three'"),
                                ("names", "x", "names must be a list of strings, got 'x'"),
                                ("names", [1], "names must be a list of strings, got [1]"),
                                ("mode", "c", "mode must be one of 'a', 'b', got 'c'"),
                                ("ratio", None, "ratio must be a number, got None"),
                                ("flag", 2, "flag must be true or false, got 2")]:
        with pytest.raises(ValueError, match=f"^where: {message.replace('[', '.').replace(']', '.')}$"):
            typed.check_values(Settings, {key: value}, where="where")


# ---------------------------------------------------------------------------------------- item 8: syntax
@pytest.mark.parametrize("name,text,message", [
    ("run.yaml", "batch_size: 2\n  lr: 3\n", ":2:5: YAML syntax error: mapping values are not allowed here"),
    ("run.yaml", "lr: [1e-4\nseed: 3\n", ":2:5: YAML syntax error: expected ',' or ']', but got ':' (while parsing "
                                         "a flow sequence)"),
    ("run.json", '{"lr": 1e-4,}', ":1:13: JSON syntax error: Expecting property name enclosed in double quotes"),
])
def test_syntax_errors_are_one_line_with_file_line_column(tmp_path, capsys, name, text, message):
    cfg = tmp_path / name
    cfg.write_text(text)
    assert main(["train", "--config", str(cfg)]) == 2
    assert _error_line(capsys) == f"rdpo-fast train: error: config file {cfg}{message}"


def test_one_line_and_exit_2_from_a_real_process(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("batch_size: 2\n  lr: 3\n")
    r = subprocess.run([sys.executable, "-m", "rdpo_fast", "train", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"rdpo-fast train: error: config file {cfg}:2:5: YAML syntax error: mapping "
                                     "values are not allowed here"]


# ---------------------------------------------------------------------------------------- item 9: packages
def test_plot_without_matplotlib(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.69, "rewards/accuracies": 0.5,
                                                   "rewards/margins": 0.0, "rewards/chosen": 0.0,
                                                   "rewards/rejected": 0.0}) + "\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails as if not installed
    assert main(["plot", str(run)]) == 2
    assert _error_line(capsys, "plot") == ("rdpo-fast plot: error: this needs the package 'matplotlib', which is not "
                                           "installed (pip install matplotlib)")


# ---------------------------------------------------------------------------------------- the error path
def test_bugs_keep_their_traceback_and_debug_shows_it(tmp_path, capsys, monkeypatch):
    import rdpo_fast.training.plot

    missing = str(tmp_path / "no-run")
    assert main(["plot", missing]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert main(["plot", missing, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.splitlines()[-1].startswith("rdpo-fast plot: error: ")
    monkeypatch.setenv(errors.DEBUG_ENV, "1")
    assert main(["plot", missing]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    monkeypatch.delenv(errors.DEBUG_ENV)

    def bug(*a, **k):
        raise KeyError("a bug")

    monkeypatch.setattr(rdpo_fast.training.plot, "plot_run", bug)
    with pytest.raises(KeyError):
        main(["plot", missing])

    def broken_import(*a, **k):
        raise ModuleNotFoundError("No module named 'rdpo_fast.nowhere'", name="rdpo_fast.nowhere")

    monkeypatch.setattr(rdpo_fast.training.plot, "plot_run", broken_import)
    with pytest.raises(ModuleNotFoundError):  # our own module missing is a bug, not a missing extra
        main(["plot", missing])

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(rdpo_fast.training.plot, "plot_run", interrupted)
    assert main(["plot", missing]) == 130
    assert capsys.readouterr().err == "rdpo-fast plot: interrupted\n"


def test_expected_failures_read_as_one_line():
    e = OSError(28, "No space left on device", "/data/run/metrics.jsonl")
    assert errors.describe(e) == "/data/run/metrics.jsonl: No space left on device"
    assert errors.describe(ValueError("two\n  lines")) == "two lines"
    assert errors.describe(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")) == (
        "out of memory (CUDA out of memory); lower --batch-size or --workspace-mb")
    assert errors.describe(RuntimeError("a bug")) is None
    # torch.save on a full disk raises its zip writer's RuntimeError; writing() names the file.
    with pytest.raises(errors.OutputError, match=r"^cannot write /x/optimizer.pt: (no space left on device|write "
                                                 r"failed \(\[enforce fail at inline_container.cc:672\])"):
        with errors.writing("/x/optimizer.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    with pytest.raises(RuntimeError, match="^shape mismatch$"):  # other errors pass through
        with errors.writing("/x/optimizer.pt"):
            raise RuntimeError("shape mismatch")


def test_pipeline_commands_share_the_error_path(files, tmp_path, capsys):
    assert main(["synth", "--prompts", str(tmp_path / "none.txt"), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert _error_line(capsys, "synth") == f"rdpo-fast synth: error: prompt file not found: {tmp_path / 'none.txt'}"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{}\n")
    assert main(["score", "--input", str(bad), "--output", str(tmp_path / "s.jsonl"), "--scorer", "rm"]) == 2
    assert _error_line(capsys, "score") == (f"rdpo-fast score: error: {bad}:1: missing field(s) 'prompt', 'chosen', "
                                            "'rejected' (need 'prompt', 'chosen', 'rejected')")
    (tmp_path / "file").write_text("")
    assert main(["dice", "--output-dir", str(tmp_path / "file" / "run"), "--policy", files["model"]]) == 2
    assert "is not a directory" in _error_line(capsys, "dice")


# ---------------------------------------------------------------------------------------- item 10: NaN
def _tokens(V=300, H=16, B=2, T=6):
    h, w = torch.randn(B, T, H), torch.randn(V, H)
    labels = torch.randint(0, V, (B, T))
    labels[:, :2] = -100  # prompt positions: ignored
    return h, w, labels


def test_nan_stays_in_the_rows_it_touches_by_default(monkeypatch):
    """The default (no check_finite, no RDPO_FAST_CHECK_FINITE): nothing is checked (no host sync), and a
    NaN/inf in hidden reaches exactly its own token, sequence, pair; one in an ignored row reaches nothing."""
    monkeypatch.delenv(_checks.CHECK_FINITE_ENV, raising=False)
    monkeypatch.setattr(_checks, "check_finite", lambda *a, **k: pytest.fail("checked although off"))
    h, w, labels = _tokens()
    h[1, 3, 5] = float("nan")
    h[0, 0, :] = float("inf")  # an ignored prompt row
    h.requires_grad_()
    out = rdpo_fast.linear_logprobs(h, w, labels)
    bad = ~torch.isfinite(out)
    assert bad.nonzero().tolist() == [[1, 3]]
    out.sum().backward()
    assert (~torch.isfinite(h.grad).all(-1)).nonzero().tolist() == [[1, 3]]  # the ignored inf row: gradient 0
    sums, _ = rdpo_fast.sequence_logprobs(h.detach(), w, labels)
    assert torch.isfinite(sums).tolist() == [True, False]
    logits = h.detach() @ w.t()
    assert (~torch.isfinite(rdpo_fast.logprobs(logits, labels))).nonzero().tolist() == [[1, 3]]

    # The fused loss: a NaN in pair 1's chosen completion reaches pair 1 only (its logps, rewards and the
    # gradient of its chosen and rejected rows); the weight gradient and the mean loss sum over all pairs.
    B, T, H, V = 3, 7, 16, 300
    x = torch.randn(2 * B, T, H)
    t = torch.randint(0, V, (2 * B, T))
    t[:, :2] = -100
    x[1, 4, 0] = float("nan")
    x[2 * B - 1, 0, :] = float("nan")  # an ignored row of pair 2's rejected sequence
    x.requires_grad_()
    weight = torch.randn(V, H, requires_grad=True)
    loss, aux = rdpo_fast.FusedLinearPreferenceLoss(use_ref_model=False)(weight, x, t)
    chosen, rejected, _, _, _, chosen_rewards, rejected_rewards = aux
    assert torch.isfinite(chosen).tolist() == [True, False, True] and torch.isfinite(rejected).all()
    assert torch.isfinite(chosen_rewards).tolist() == [True, False, True] and torch.isfinite(rejected_rewards).all()
    loss.backward()
    kept_rows_bad = (~torch.isfinite(x.grad).all(-1)) & (t != -100)
    assert sorted({r for r, _ in kept_rows_bad.nonzero().tolist()}) == [1, B + 1]  # pair 1's two sequences
    assert (x.grad[t == -100] == 0).all()
    assert not torch.isfinite(loss) and not torch.isfinite(weight.grad).all()


def test_check_finite_names_the_tensor(monkeypatch):
    monkeypatch.delenv(_checks.CHECK_FINITE_ENV, raising=False)
    h, w, labels = _tokens()
    h[0, 0, :] = float("nan")  # ignored row: not looked at
    assert torch.isfinite(rdpo_fast.linear_logprobs(h, w, labels, check_finite=True)).all()
    h[1, 3, 5] = float("nan")
    msg = r"^linear_logprobs: hidden holds NaN or inf \(1 non-finite kept rows, the first at index \(1, 3\)\)$"
    with pytest.raises(_checks.NonFiniteError, match=msg):
        rdpo_fast.linear_logprobs(h, w, labels, check_finite=True)
    assert issubclass(_checks.NonFiniteError, ValueError)
    h, w, labels = _tokens()
    w[7, 2] = float("inf")
    with pytest.raises(ValueError, match=r"^sequence_logprobs: weight holds NaN or inf \(1 non-finite values, the "
                                         r"first at index \(7, 2\)\)$"):
        rdpo_fast.sequence_logprobs(h, w, labels, check_finite=True)
    bias = torch.zeros(300)
    bias[3] = float("nan")
    with pytest.raises(ValueError, match="^linear_logprobs: bias holds NaN"):
        rdpo_fast.linear_logprobs(h, torch.randn(300, 16), labels, bias=bias, check_finite=True)
    logits = torch.randn(2, 6, 300)
    logits[1, 5, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^logprobs: logits holds NaN or inf \(1 non-finite kept rows"):
        rdpo_fast.logprobs(logits, labels, check_finite=True)
    # A non-finite result from finite inputs: fp16 logits overflow.
    h16, w16 = (torch.randn(2, 6, 16) * 100).half(), (torch.randn(300, 16) * 100).half()
    with pytest.raises(ValueError, match=r"^linear_logprobs: result holds NaN or inf .* although every input is "
                                         r"finite \(an overflow"):
        rdpo_fast.linear_logprobs(h16, w16, labels, check_finite=True)
    # The environment variable turns it on everywhere; check_finite=False still wins.
    monkeypatch.setenv(_checks.CHECK_FINITE_ENV, "1")
    with pytest.raises(ValueError, match="^logprobs: logits holds NaN"):
        rdpo_fast.logprobs(logits, labels)
    assert not torch.isfinite(rdpo_fast.logprobs(logits, labels, check_finite=False)).all()


def test_fused_loss_check_finite(monkeypatch):
    monkeypatch.delenv(_checks.CHECK_FINITE_ENV, raising=False)
    B, T, H, V = 2, 6, 16, 300
    x, t = torch.randn(2 * B, T, H), torch.randint(0, V, (2 * B, T))
    t[:, :2] = -100
    w = torch.randn(V, H)
    loss_fn = rdpo_fast.FusedLinearPreferenceLoss(check_finite=True)
    ref_c, ref_r = torch.zeros(B), torch.zeros(B)
    loss_fn(w, x, t, ref_chosen_logps=ref_c, ref_rejected_logps=ref_r)  # finite: no error
    ref_c[1] = float("nan")
    with pytest.raises(ValueError, match=r"^FusedLinearPreferenceLoss: ref_chosen_logps holds NaN or inf \(1 "
                                         r"non-finite values, the first at index \(1,\)\)$"):
        loss_fn(w, x, t, ref_chosen_logps=ref_c, ref_rejected_logps=ref_r)
    ref_w = w.clone()
    ref_w[0, 0] = float("nan")
    with pytest.raises(ValueError, match="^FusedLinearPreferenceLoss: ref_weight holds NaN"):
        loss_fn(w, x, t, ref_input=x, ref_weight=ref_w)
    x2 = x.clone()
    x2[B, 3, 1] = float("inf")
    with pytest.raises(ValueError, match=rf"^FusedLinearPreferenceLoss: _input holds NaN or inf \(1 non-finite kept "
                                         rf"rows, the first at index \({B}, 3\)\)$"):
        loss_fn(w, x2, t, ref_chosen_logps=torch.zeros(B), ref_rejected_logps=torch.zeros(B))
    monkeypatch.setenv(_checks.CHECK_FINITE_ENV, "1")
    with pytest.raises(ValueError, match="^FusedLinearPreferenceLoss: _input holds NaN"):
        rdpo_fast.FusedLinearPreferenceLoss()(w, x2, t, ref_chosen_logps=torch.zeros(B),
                                              ref_rejected_logps=torch.zeros(B))
