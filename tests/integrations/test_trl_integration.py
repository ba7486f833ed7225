"""rdpo_fast.integrations.trl against TRL itself: three trainer.train() steps of a tiny random Llama with
FusedDPOTrainer give the same per-step losses, gradient norms and logged metrics as plain trl.DPOTrainer
(fp32), for every TRL loss type (aot, aot_unpaired and sft alone included), an MPO list with
loss_weights, WPO, each f-divergence, each reference form (precomputed, a ref_model, PEFT adapters
off), RPO's NLL term and gradient accumulation; patch_dpo_trainer() really routes DPOTrainer through
the fused loss (and no [tokens, vocab] tensor is allocated in the step); a precomputed reference is
read, never rescored by the policy; every refused setting is named.

Cost: the parity runs use the kernels' torch twins (TRITON_INTERPRET cleared: the interpreter costs
~0.2 s per launch on 2 cores and the kernels are checked against the float64 oracle elsewhere); the
routing test runs the interpreted Triton kernels."""
import json
import os

import pytest
import torch

pytest.importorskip("trl")
from trl import DPOConfig, DPOTrainer  # noqa: E402

from rdpo_fast.integrations.trl import FusedDPOTrainer, patch_dpo_trainer, unpatch_dpo_trainer  # noqa: E402
from rdpo_fast.integrations.trl import dpo as rtrl  # noqa: E402

os.environ.setdefault("CI", "1")  # TRL sends no telemetry from CI runs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama (2 layers, hidden 64, vocab ~300) saved as a model directory, its tokenizer,
    and 12 shipped preference records, shortened, as a datasets.Dataset (TRL's conversational format;
max_length=80 truncates some of them, as TRL's collator does)."""
    from datasets import Dataset
    from tiny import build_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    from rdpo_fast.data.shipped import default_path

    def short(messages, n):  # short turns, no system prompt: ~30 prompt + ~45 completion tokens
        return [{"role": m["role"], "content": m["content"][:n]} for m in messages if m["role"] != "system"]

    with open(default_path("train")) as f:
        recs = [json.loads(line) for line in list(f)[:12]]
    tok = build_tokenizer(300)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=None)
    root = tmp_path_factory.mktemp("trl_tiny")
    torch.manual_seed(0)
    policy = LlamaForCausalLM(cfg)
    policy.save_pretrained(root / "policy")
    with torch.no_grad():  # the size of one logit, the scale the logits/* means are measured against
        ids = tok(tok.apply_chat_template(short(recs[0]["prompt"], 40), tokenize=False), return_tensors="pt")
        logit_rms = policy(**ids).logits.pow(2).mean().sqrt().item()
    tok.save_pretrained(root / "policy")
    torch.manual_seed(1)
    LlamaForCausalLM(cfg).save_pretrained(root / "other")  # a reference that is not the policy
    ds = Dataset.from_list([{"prompt": short(r["prompt"], 40), "chosen": short(r["chosen"], 60),
                             "rejected": short(r["rejected"], 60)} for r in recs])
    return {"tok": tok, "policy": str(root / "policy"), "other": str(root / "other"), "ds": ds, "root": root,
            "logit_rms": logit_rms}


@pytest.fixture
def torch_twins(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def config(tiny, **kw):
    base = dict(output_dir=str(tiny["root"] / "out"), per_device_train_batch_size=2, max_steps=3,
                learning_rate=1e-3, logging_steps=1, bf16=False, report_to=[], save_strategy="no",
                gradient_checkpointing=False, max_length=80, seed=0, disable_tqdm=True)
    base.update(kw)
    return DPOConfig(**base)


def train(cls, tiny, *, model=None, trainer_kw=None, **cfg_kw):
    from transformers import AutoModelForCausalLM

    kw = dict(trainer_kw or {})
    if "ref_model" in kw and isinstance(kw["ref_model"], str):
        kw["ref_model"] = AutoModelForCausalLM.from_pretrained(kw["ref_model"])
    trainer = cls(model=model or tiny["policy"], args=config(tiny, **cfg_kw), train_dataset=tiny["ds"],
                  processing_class=tiny["tok"], **kw)
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h and "train_loss" not in h], trainer


def assert_same_logs(ours, theirs, tiny, beta=0.1, moved=True, f_divergence=False):
    """Every logged value equal to relative 1e-5. Two are means of cancelling terms, so their error is
    measured against the size of the terms rather than of the mean: rewards beta * (logp - ref_logp),
    differences of O(|logp|) float32 sums, against beta * |logp|; logits/*, means of logits of both
    signs, against the size of one logit (the tiny model's RMS logit).
    f_divergence: under forward_kl / js / alpha the gradient carries a factor like exp(-rho) of each
    log-ratio rho = logp - ref_logp, so its relative error is rho's absolute error, and rho is a
    difference of float32 sums of size |logp| (~230 nats here): no float32 computation, TRL's included,
    is within 1e-5 of the exact gradient (step 1 of the forward_kl case, against a float64 run: TRL's
    gradient 1.9e-5 off, ours 2.7e-5). grad_norm is then held to 1e-5 + 4 eps |logp| (eps = 2^-23,
    float32's spacing; these runs differ by at most 1.6 eps |logp|), every other value to 1e-5.
    The loss-level parity with TRL (tests/integrations/test_trl_loss_parity.py, short sequences) holds at 1e-5."""
    assert len(ours) == len(theirs) == 3
    for step, (a, b) in enumerate(zip(ours, theirs), 1):
        assert set(a) == set(b), (step, set(a) ^ set(b))
        size = max(abs(b["logps/chosen"]), abs(b["logps/rejected"]))
        scale = beta * size
        for k, want in b.items():
            got = a[k]
            floor = scale if k.startswith("rewards/") and k != "rewards/accuracies" else 0.0
            floor = tiny["logit_rms"] if k.startswith("logits/") else floor
            rel = 1e-5 + (4 * 2.0 ** -23 * size if f_divergence and k == "grad_norm" else 0.0)
            assert abs(got - want) <= rel * max(abs(want), floor, 1e-6), (step, k, got, want)
    if moved:  # the runs really trained: the loss moved away from ln 2 after the first step
        assert abs(theirs[2]["loss"] - 0.6931) > 1e-3


SHARED = [
    ("sigmoid", {}), ("hinge", {}), ("ipo", {}), ("exo_pair", {"label_smoothing": 1e-3}), ("nca_pair", {}),
    ("robust", {"label_smoothing": 0.1}), ("bco_pair", {}), ("sppo_hard", {}), ("apo_zero", {}),
    ("apo_down", {}), ("discopop", {"discopop_tau": 0.3}), ("sigmoid_norm", {}),
]


@pytest.mark.parametrize("loss_type,extra", SHARED, ids=[c[0] for c in SHARED])
def test_same_training_as_trl_for_each_shared_loss(tiny, torch_twins, loss_type, extra):
    kw = dict(loss_type=loss_type, **extra)
    theirs, _ = train(DPOTrainer, tiny, trainer_kw={"ref_model": tiny["other"]}, **kw)
    ours, trainer = train(FusedDPOTrainer, tiny, trainer_kw={"ref_model": tiny["other"]}, **kw)
    assert trainer._rdpo_calls == 3 and trainer._rdpo_loss.cfg.loss_type == loss_type
    assert_same_logs(ours, theirs, tiny)


def test_precomputed_reference_and_ld_alpha_same_as_trl(tiny, torch_twins):
    kw = dict(precompute_ref_log_probs=True, ld_alpha=0.5)
    theirs, _ = train(DPOTrainer, tiny, **kw)
    ours, trainer = train(FusedDPOTrainer, tiny, **kw)
    assert trainer.ref_model is None  # TRL keeps no reference model: the stored column is the reference
    assert_same_logs(ours, theirs, tiny)


def test_precomputed_reference_is_read_never_rescored(tiny, torch_twins):
    """The 2-line swap bug: with precompute_ref_log_probs=True the policy must not score itself as the
    reference (which trains at loss exactly ln 2). Shift the stored column: the loss must follow it,
    and a training step must run the policy forward exactly once."""
    import rdpo_fast

    trainer = FusedDPOTrainer(model=tiny["policy"], args=config(tiny, precompute_ref_log_probs=True),
                              train_dataset=tiny["ds"], processing_class=tiny["tok"])
    ds = trainer.train_dataset
    shifted = ds.remove_columns(["ref_chosen_logps"]).add_column(
        "ref_chosen_logps", [v - 3.0 for v in ds["ref_chosen_logps"]])
    batch = trainer.data_collator([shifted[i] for i in range(2)])
    calls = []
    model = trainer.model
    forward = model.forward
    model.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    try:
        loss = trainer.compute_loss(model, batch)
    finally:
        model.forward = forward
    assert len(calls) == 1  # the policy's own pass; no reference pass at all
    c, r = trainer._rdpo_score(model, {k: v for k, v in batch.items() if k not in rtrl._NON_MODEL_KEYS},
                               batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100), batch)
    want, _, _ = rdpo_fast.preference_loss(c, r, batch["ref_chosen_logps"].float(),
                                           batch["ref_rejected_logps"].float(), beta=0.1)
    assert loss.item() == pytest.approx(want.mean().item(), rel=1e-5)
    assert abs(loss.item() - 0.693147) > 0.05  # the shifted reference really entered the loss


def test_in_pass_ref_model_same_as_trl_with_gradient_accumulation_and_eval(tiny, torch_twins):
    kw = dict(gradient_accumulation_steps=2, per_device_train_batch_size=1, gradient_checkpointing=True,
              per_device_eval_batch_size=2)
    trainer_kw = {"ref_model": tiny["other"], "eval_dataset": tiny["ds"].select(range(4))}
    theirs, trl_trainer = train(DPOTrainer, tiny, trainer_kw=dict(trainer_kw), **kw)
    ours, trainer = train(FusedDPOTrainer, tiny, trainer_kw=dict(trainer_kw), **kw)
    assert_same_logs(ours, theirs, tiny)
    # Held-out evaluation (no_grad, eval_ prefix) after training: the same numbers too.
    a, b = trainer.evaluate(), trl_trainer.evaluate()
    timing = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
    b = {k: v for k, v in b.items() if k not in timing}
    assert set(a) - set(timing) == set(b) and "eval_rewards/margins" in b
    assert_same_logs([{k[5:]: v for k, v in a.items() if k in b}] * 3, [{k[5:]: v for k, v in b.items()}] * 3,
                     tiny, moved=False)


def test_lora_reference_is_the_policy_with_adapters_off(tiny, torch_twins):
    from peft import LoraConfig

    def lora():
        return {"peft_config": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                          lora_dropout=0.0, task_type="CAUSAL_LM")}

    theirs, _ = train(DPOTrainer, tiny, trainer_kw=lora(), learning_rate=2e-2)
    ours, trainer = train(FusedDPOTrainer, tiny, trainer_kw=lora(), learning_rate=2e-2)
    assert trainer.ref_model is None
    assert_same_logs(ours, theirs, tiny)


def test_rpo_nll_term_same_as_trl(tiny, torch_twins):
    kw = dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5])
    theirs, _ = train(DPOTrainer, tiny, trainer_kw={"ref_model": tiny["other"]}, **kw)
    ours, trainer = train(FusedDPOTrainer, tiny, trainer_kw={"ref_model": tiny["other"]}, **kw)
    assert trainer._rdpo_loss.cfg.members == (("sigmoid", 1.0), ("sft", 0.5))  # sft rides the NLL term
    assert_same_logs(ours, theirs, tiny)


# The options issue 16 fused: aot and aot_unpaired (4 pairs per micro-batch, so the sorting has something
# to reorder; gradient_accumulation_steps=1, the default: TRL sorts within each micro-batch, as we do, so
# the ranking never spans micro-batches), sft alone, an MPO-style weighted list, WPO, each f-divergence.
ISSUE16 = [
    ("aot", {"loss_type": "aot", "per_device_train_batch_size": 4}),
    ("aot_unpaired", {"loss_type": "aot_unpaired", "label_smoothing": 0.1, "per_device_train_batch_size": 4}),
    ("sft", {"loss_type": "sft"}),
    ("mpo", {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]}),
    ("wpo", {"loss_type": "sigmoid", "use_weighting": True}),
    ("forward_kl", {"loss_type": "sigmoid", "f_divergence_type": "forward_kl"}),
    ("js_divergence", {"loss_type": "hinge", "f_divergence_type": "js_divergence"}),
    ("alpha_divergence", {"loss_type": "sigmoid", "f_divergence_type": "alpha_divergence",
                          "f_alpha_divergence_coef": 0.3}),
]


@pytest.mark.parametrize("kw", [c[1] for c in ISSUE16], ids=[c[0] for c in ISSUE16])
def test_same_training_as_trl_for_fused_options(tiny, torch_twins, monkeypatch, kw):
    import rdpo_fast.losses.head as pref

    orders = []  # aot: the two sort orders of each step; equal orders would make aot plain sigmoid
    perms = pref._aot_perms
    monkeypatch.setattr(pref, "_aot_perms", lambda *a: orders.append(perms(*a)) or orders[-1])
    theirs, _ = train(DPOTrainer, tiny, trainer_kw={"ref_model": tiny["other"]}, **kw)
    ours, trainer = train(FusedDPOTrainer, tiny, trainer_kw={"ref_model": tiny["other"]}, **kw)
    names = [kw["loss_type"]] if isinstance(kw["loss_type"], str) else kw["loss_type"]
    weights = kw.get("loss_weights", [1.0] * len(names))
    cfg = trainer._rdpo_loss.cfg
    assert trainer._rdpo_calls == 3 and cfg.members == tuple(zip(names, weights))
    assert (cfg.use_weighting, cfg.f_divergence_type) == (kw.get("use_weighting", False),
                                                          kw.get("f_divergence_type", "reverse_kl"))
    if names[0].startswith("aot"):
        assert len(orders) == 3 and any(not torch.equal(a, b) for a, b in orders)
    assert_same_logs(ours, theirs, tiny, f_divergence="f_divergence_type" in kw)


def test_wpo_with_hinge_gives_trls_loss_and_trains(tiny, torch_twins):
    """TRL 1.16 computes hinge + use_weighting's loss but cannot train it (its in-place WPO product
    overwrites relu's saved output). FusedDPOTrainer gives TRL's loss for the same batch and trains on
    that loss's exact gradient. If TRL's backward starts working, this case belongs in ISSUE16 above."""
    from transformers import AutoModelForCausalLM

    trainers = [cls(model=tiny["policy"], ref_model=AutoModelForCausalLM.from_pretrained(tiny["other"]),
                    args=config(tiny, loss_type="hinge", use_weighting=True), train_dataset=tiny["ds"],
                    processing_class=tiny["tok"]) for cls in (DPOTrainer, FusedDPOTrainer)]
    batch = next(iter(trainers[0].get_train_dataloader()))
    theirs, ours = (t.compute_loss(t.model, batch) for t in trainers)
    assert abs(ours.item() - theirs.item()) <= 1e-5 * abs(theirs.item())
    with pytest.raises(RuntimeError, match="inplace"):
        theirs.backward()
    ours.backward()
    grads = [p.grad for p in trainers[1].model.parameters() if p.requires_grad]
    assert all(g is not None and bool(g.isfinite().all()) for g in grads) and any(bool(g.any()) for g in grads)


# ---------------------------------------------------------------------------------------- routing
def _largest_allocation(fn, V):
    """The most elements of any float tensor with a vocabulary-sized dimension created while fn runs,
    recorded op by op (the model's own activations, of other shapes, do not count)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.is_floating_point() and V in t.shape:
                    Largest.numel = max(Largest.numel, t.numel())
            return out

    with Largest():
        fn()
    return Largest.numel


def test_patch_routes_dpo_trainer_through_the_fused_loss(tiny, monkeypatch):
    """Interpreted Triton kernels. After patch_dpo_trainer(), trl.DPOTrainer(...) is a FusedDPOTrainer,
    the fused op runs, TRL's own chunked head does not, and no tensor of [completion tokens, vocab]
    elements is created during a training step (plain TRL creates one: its head's logits tile)."""
    from trl.kernels import chunked_logprob

    import rdpo_fast.losses.pair_pass as fl

    monkeypatch.setenv("RDPO_FAST_WORKSPACE_MB", "0.05")  # chunks of a single pair
    V = len(tiny["tok"])

    def one_step(trainer):
        batch = next(iter(trainer.get_train_dataloader()))
        n_tokens = int(batch["completion_mask"][:, 1:].sum())

        trainer.current_gradient_accumulation_steps = 1  # set by train(); a lone training_step needs it
        trainer.model.train()

        def step():
            trainer.training_step(trainer.model, batch)
        return n_tokens, _largest_allocation(step, V)

    kw = dict(args=config(tiny, per_device_train_batch_size=4), train_dataset=tiny["ds"],
              processing_class=tiny["tok"])
    plain = DPOTrainer(model=tiny["policy"], **kw)
    assert type(plain) is DPOTrainer
    n_tokens, plain_largest = one_step(plain)
    assert plain_largest >= n_tokens * V  # TRL's head holds the whole batch's logits tile here

    counts = {"fused": 0, "trl_head": 0}
    fused_fwd, head_fwd = fl.FusedPreferenceFn.forward, chunked_logprob.ChunkedLogProbFunction.forward
    monkeypatch.setattr(fl.FusedPreferenceFn, "forward", staticmethod(
        lambda *a, **k: counts.__setitem__("fused", counts["fused"] + 1) or fused_fwd(*a, **k)))
    monkeypatch.setattr(chunked_logprob.ChunkedLogProbFunction, "forward", staticmethod(
        lambda *a, **k: counts.__setitem__("trl_head", counts["trl_head"] + 1) or head_fwd(*a, **k)))
    patch_dpo_trainer()
    try:
        assert rtrl.is_patched()
        trainer = DPOTrainer(model=tiny["policy"], **kw)
        assert type(trainer) is FusedDPOTrainer
        n_tokens, largest = one_step(trainer)
    finally:
        unpatch_dpo_trainer()
    assert not rtrl.is_patched() and type(DPOTrainer(model=tiny["policy"], **kw)) is DPOTrainer
    assert counts["fused"] == 2 and counts["trl_head"] == 0  # the reference pass and the policy loss
    assert largest < n_tokens * V / 2, (largest, n_tokens * V)


# ---------------------------------------------------------------------------------------- refusals
# (id, settings, what the message says after "FusedDPOTrainer: ")
REFUSED = [
    ("unknown", {"loss_type": "simpo"}, "unknown loss_type 'simpo'"),  # FusedCPOTrainer has SimPO
    ("sft+wpo", {"use_weighting": True, "loss_type": ["sigmoid", "sft"]}, "use_weighting=True is not supported"),
    ("aot+wpo", {"use_weighting": True, "loss_type": "aot"}, "use_weighting=True is not supported"),
    ("sigmoid+eps", {"loss_type": "sigmoid", "label_smoothing": 0.1}, "label_smoothing=0.1 is not supported"),
    ("list-sigmoid+eps", {"loss_type": ["robust", "sigmoid"], "label_smoothing": 0.1},
     "label_smoothing=0.1 is not supported"),
    ("no-reader+eps", {"loss_type": ["hinge", "sft"], "label_smoothing": 0.1}, "label_smoothing=0.1 is not supported"),
    ("exo-eps-range", {"loss_type": "exo_pair", "label_smoothing": 0.7}, "label_smoothing must be in"),
    ("alpha-coef", {"f_alpha_divergence_coef": 0.3}, "f_alpha_divergence_coef=0.3 is not supported"),
    ("fdiv-bco", {"loss_type": ["sigmoid", "bco_pair"], "f_divergence_type": "forward_kl"},
     "f_divergence_type='forward_kl' is only defined"),
    ("torch_compile", {"torch_compile": True}, "torch_compile=True is not supported"),
]


@pytest.mark.parametrize("settings,match", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_setting_is_named(tiny, settings, match):
    with pytest.raises(rtrl.UnsupportedSetting, match=f"FusedDPOTrainer: {match}"):
        FusedDPOTrainer(model=tiny["policy"], args=config(tiny, **settings), train_dataset=tiny["ds"],
                        processing_class=tiny["tok"])


def test_moe_auxiliary_loss_is_refused_by_name(tiny):
    from transformers import MixtralConfig, MixtralForCausalLM

    tok = tiny["tok"]
    moe = MixtralForCausalLM(MixtralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=32,
                                           num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                           num_local_experts=2, num_experts_per_tok=1, pad_token_id=tok.pad_token_id,
                                           output_router_logits=True, router_aux_loss_coef=0.01))
    ref = MixtralForCausalLM(moe.config)
    with pytest.raises(rtrl.UnsupportedSetting, match="router_aux_loss_coef=0.01 is not supported"):
        FusedDPOTrainer(model=moe, ref_model=ref, args=config(tiny), train_dataset=tiny["ds"], processing_class=tok)


def test_import_without_trl_says_how_to_install(monkeypatch):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "trl", None)
    monkeypatch.delitem(sys.modules, "rdpo_fast.integrations.trl")
    monkeypatch.delitem(sys.modules, "rdpo_fast.integrations.trl.dpo")
    with pytest.raises(ImportError, match=r"pip install 'rdpo_fast\[trl\]'"):
        importlib.import_module("rdpo_fast.integrations.trl")
    monkeypatch.undo()
    importlib.import_module("rdpo_fast.integrations.trl")
