"""Model-config fidelity: every path that scores a model's tokens applies the model's own logit transform.
Tiny random models whose config caps or scales the logits (Gemma 2's final_logit_softcapping, Cohere's
logit_scale, Granite's logits_scaling): the training loop (its precomputed reference and its training
loss), the TRL integration and the implicit-reward scorer give the sequence log-probs of the model's own
log_softmax(logits), gathered (relative 1e-5); without the transform they would be far off."""
import json

import pytest
import torch
from tiny import build_tokenizer, write_subset

from rdpo_fast.models import loading as modeling


def _common(tok):
    return dict(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                tie_word_embeddings=True)


def gemma2(tok):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    # A large init, so the logits reach well past the cap and the cap changes the answer.
    cfg = Gemma2Config(**_common(tok), head_dim=16, final_logit_softcapping=2.0, attn_logit_softcapping=50.0,
                       initializer_range=0.3, attn_implementation="eager")
    return Gemma2ForCausalLM(cfg)


def cohere(tok):
    from transformers import CohereConfig, CohereForCausalLM

    return CohereForCausalLM(CohereConfig(**_common(tok), logit_scale=0.25, initializer_range=0.3))


def granite(tok):
    from transformers import GraniteConfig, GraniteForCausalLM

    return GraniteForCausalLM(GraniteConfig(**_common(tok), logits_scaling=3.0, initializer_range=0.3))


BUILDERS = {"gemma2": gemma2, "cohere": cohere, "granite": granite}


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def model_logps(model, input_ids, attention_mask, target):
    """The oracle: the model's own forward (its transform included), log_softmax in float64, gathered."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.double()
    keep = target != -100
    logp = logits.log_softmax(-1).gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (logp * keep).sum(1)


def assert_close(got, want, tol=1e-5):
    got, want = got.double(), want.double()
    assert ((got - want).abs() <= tol * want.abs()).all(), (got, want)


def test_logit_transform_reads_the_config():
    from transformers import CohereConfig, Gemma2Config, GraniteConfig, LlamaConfig, RecurrentGemmaConfig

    t = modeling.logit_transform(Gemma2Config(final_logit_softcapping=30.0))
    assert (t.scale, t.softcap) == (1.0, 30.0) and t.kernel_args() == {"softcap": 30.0, "temperature": 1.0}
    t = modeling.logit_transform(CohereConfig(logit_scale=0.0625))
    assert t.scale == 0.0625 and t.kernel_args() == {"softcap": None, "temperature": 16.0}
    assert modeling.logit_transform(GraniteConfig(logits_scaling=8.0)).scale == 0.125
    assert modeling.logit_transform(RecurrentGemmaConfig(logits_soft_cap=30.0)).softcap == 30.0
    assert modeling.logit_transform(LlamaConfig()).identity
    with pytest.raises(modeling.ModelError, match="logit scale"):
        modeling.logit_transform(CohereConfig(logit_scale=0.0))


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_implicit_scorer_uses_the_models_transform(tok, arch):
    from rdpo_fast.lm.chat import user_turn
    from rdpo_fast.pipelines.implicit import collate, encode, sequence_logps

    torch.manual_seed(0)
    model = BUILDERS[arch](tok).eval()
    items = encode(tok, [user_turn("Name a colour."), user_turn("Say hi.", system=None)],
                   ["Blue, the colour of the sky.", "Hi there!"])
    sums, _ = sequence_logps(model, items, pad_id=tok.pad_token_id, batch_size=2)
    ids, mask, target = collate(items, tok.pad_token_id)
    want = model_logps(model, ids, mask, target)
    assert_close(sums, want)
    # The transform matters here: scoring the raw lm_head logits would be far off.
    with torch.no_grad():
        hidden = modeling.decoder(model)(input_ids=ids, attention_mask=mask).last_hidden_state
    import rdpo_fast

    raw, _ = rdpo_fast.sequence_logprobs(hidden, modeling.output_weight(model), target)
    assert (raw.double() - want).abs().max() > 1.0


def test_training_loop_uses_the_models_transform(tok, tmp_path):
    """`rdpo-fast train` on a softcapped Gemma 2, reference precomputed: the cached reference and the
    first step's logged logps/chosen (before any update) are the model's own log-probs."""
    from rdpo_fast.data.records import collate, load_preference_data
    from rdpo_fast.training import loop as train_mod
    from rdpo_fast.training.config import TrainConfig
    from rdpo_fast.training.dist import Dist
    from rdpo_fast.training.ref_cache import precompute_reference

    torch.manual_seed(0)
    model = gemma2(tok)
    path = tmp_path / "gemma2"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    data_path = write_subset(str(tmp_path / "train.jsonl"), 2)
    cfg = TrainConfig(model=str(path), data=data_path, output_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "c"),
                      batch_size=2, grad_accum=1, max_steps=1, max_length=96, lr=1e-3, progress=False, bf16=False,
                      export=False, reference="precompute")
    summary = train_mod.train(cfg)
    assert summary["global_step"] == 1
    row = json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())

    data = load_preference_data(data_path, tok, max_length=96)
    b = collate(data, [0, 1], pad_id=tok.pad_token_id)
    want = model_logps(model.eval(), b.input_ids, b.attention_mask, b.target)
    assert row["logps/chosen"] == pytest.approx(want[:2].mean().item(), rel=1e-5)
    assert row["logps/rejected"] == pytest.approx(want[2:].mean().item(), rel=1e-5)
    assert row["rewards/margins"] == 0.0  # the precomputed reference is the same model, scored the same way
    ref_c, ref_r = precompute_reference(cfg, model, data, Dist(), log=lambda *a: None)
    assert_close(torch.cat([ref_c, ref_r]), want)


@pytest.mark.parametrize("arch", ["gemma2", "cohere"])
def test_trl_integration_uses_the_models_transform(tok, tmp_path, arch, monkeypatch):
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import DPOConfig

    from rdpo_fast.integrations.trl.dpo import _NON_MODEL_KEYS, FusedDPOTrainer

    monkeypatch.setenv("CI", "1")
    torch.manual_seed(0)
    policy, ref = BUILDERS[arch](tok), BUILDERS[arch](tok)
    recs = [json.loads(line) for line in open(write_subset(str(tmp_path / "d.jsonl"), 2))]
    short = [{k: [{"role": m["role"], "content": m["content"][:40]} for m in r[k] if m["role"] != "system"]
              for k in ("prompt", "chosen", "rejected")} for r in recs]
    args = DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, bf16=False, report_to=[],
                     gradient_checkpointing=False, max_length=64, disable_tqdm=True)
    trainer = FusedDPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(short),
                              processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    target = torch.full_like(labels, -100)
    target[:, :-1] = labels[:, 1:]
    mask = batch["attention_mask"]
    kwargs = {k: v for k, v in batch.items() if k not in _NON_MODEL_KEYS}
    # The reference pass (ref_model scored through the fused op) ...
    c, r = trainer.compute_ref_log_probs(trainer.ref_model, batch)
    assert_close(torch.cat([c, r]), model_logps(ref, batch["input_ids"], mask, target))
    # ... and the policy's training loss, whose logged logps/chosen are the policy's log-probs.
    trainer.model.train()
    trainer.compute_loss(trainer.model, batch)
    want = model_logps(policy.eval(), batch["input_ids"], mask, target)
    assert trainer._metrics["train"]["logps/chosen"][-1] == pytest.approx(want[:2].mean().item(), rel=1e-5)
    assert trainer._metrics["train"]["logps/rejected"][-1] == pytest.approx(want[2:].mean().item(), rel=1e-5)
    assert kwargs  # the batch held model inputs
