"""Parity with TRL 1.16's own loss computation: DPOTrainer._compute_loss (TRL's code, called on a bare
trainer object that holds only the settings it reads) on a tiny Llama with TRL's fused LM head, against
FusedLinearPreferenceLoss on the same model's hidden states and lm_head weight. Same loss and the same
gradients for every parameter, for aot, aot_unpaired, loss lists with weights (MPO, RPO), WPO (TRL's
log_sum_sq_probs from its own chunked head) and every f-divergence."""
import collections
import types

import pytest
import torch

from rdpo_fast import FusedLinearPreferenceLoss

dpo_trainer = pytest.importorskip("trl.trainer.dpo_trainer")
trl_utils = pytest.importorskip("trl.trainer.utils")

CASES = [
    ({"loss_type": ["aot"]}),
    ({"loss_type": ["aot"], "label_smoothing": 0.1}),
    ({"loss_type": ["aot_unpaired"], "beta": 0.3}),
    ({"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]}),  # MPO
    ({"loss_type": ["sigmoid", "sft"]}),  # RPO
    ({"loss_type": ["apo_zero", "ipo", "nca_pair"], "loss_weights": [1.0, 0.05, 0.5]}),
    ({"loss_type": ["sft"]}),
    ({"loss_type": ["sigmoid"], "use_weighting": True}),
    ({"loss_type": ["ipo", "apo_down", "bco_pair"], "loss_weights": [0.1, 1.0, 0.5], "use_weighting": True}),
    ({"loss_type": ["sigmoid"], "f_divergence_type": "forward_kl"}),
    ({"loss_type": ["sigmoid"], "f_divergence_type": "js_divergence"}),
    ({"loss_type": ["sigmoid"], "f_divergence_type": "alpha_divergence"}),  # TRL's default alpha 0.5
    ({"loss_type": ["hinge", "sft"], "f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 1.7}),
    ({"loss_type": ["ipo"], "f_divergence_type": "js_divergence"}),
    ({"loss_type": ["sigmoid_norm"], "f_divergence_type": "forward_kl", "beta": 1.0}),
    ({"loss_type": ["robust"], "f_divergence_type": "forward_kl", "label_smoothing": 0.1}),
    ({"loss_type": ["exo_pair"], "f_divergence_type": "alpha_divergence", "label_smoothing": 1e-3}),
    ({"loss_type": ["discopop"], "f_divergence_type": "js_divergence", "discopop_tau": 0.2}),
]


def tiny_llama(V=211, H=32):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=2 * H, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False, attn_implementation="eager")
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # lm_head.bias-free; a larger head scale gives peaked token distributions
        model.lm_head.weight.mul_(8.0)
    return model


def trl_batch(P, L, V):
    input_ids = torch.randint(0, V, (2 * P, L))
    attention = torch.ones(2 * P, L, dtype=torch.long)
    completion = torch.zeros(2 * P, L, dtype=torch.long)
    for i in range(2 * P):
        prompt = int(torch.randint(2, 5, ()))
        end = int(torch.randint(prompt + 2, L + 1, ()))
        completion[i, prompt:end] = 1
        attention[i, end:] = 0  # right padding
    return {"input_ids": input_ids, "attention_mask": attention, "completion_mask": completion}


def trl_compute_loss(model, inputs, opts):
    """TRL's DPOTrainer._compute_loss on a trainer object holding only what that method reads."""
    t = object.__new__(dpo_trainer.DPOTrainer)
    losses = opts["loss_type"]
    t.__dict__.update(
        model=model, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        accelerator=types.SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x,
                                          gather=lambda x: x),
        f_divergence_type=opts.get("f_divergence_type", "reverse_kl"),
        f_alpha_divergence_coef=opts.get("f_alpha_divergence_coef", 0.5), loss_types=losses,
        loss_weights=opts.get("loss_weights") or [1.0] * len(losses), beta=opts.get("beta", 0.1),
        label_smoothing=opts.get("label_smoothing", 0.0), use_weighting=opts.get("use_weighting", False),
        args=types.SimpleNamespace(discopop_tau=opts.get("discopop_tau", 0.05), gradient_checkpointing_kwargs=None),
        _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)},
        _total_train_tokens=0, _tp_size=1)
    return dpo_trainer.DPOTrainer._compute_loss(t, model, inputs, False)


def ours(model, inputs, opts):
    labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
    hidden = model.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    kw = {k: v for k, v in opts.items() if k != "discopop_tau"}
    if "discopop_tau" in opts:
        kw["tau"] = opts["discopop_tau"]
    loss_fn = FusedLinearPreferenceLoss(**kw)
    loss, _ = loss_fn(model.lm_head.weight, hidden[:, :-1], labels[:, 1:],
                      ref_chosen_logps=inputs["ref_chosen_logps"], ref_rejected_logps=inputs["ref_rejected_logps"])
    return loss


@pytest.mark.parametrize("opts", CASES, ids=[f"{i}-{'+'.join(c['loss_type'])}" for i, c in enumerate(CASES)])
def test_same_loss_and_gradients_as_trl(opts):
    P, L, V = 4, 16, 211
    model = tiny_llama(V)
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs"))
    inputs = trl_batch(P, L, V)
    with torch.no_grad():  # reference log-probs a few nats from the policy's, both signs
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        logps = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels,
                      fused_lm_head=True).log_probs.sum(1)
    shift = 1.5 * torch.randn(2 * P)
    inputs["ref_chosen_logps"], inputs["ref_rejected_logps"] = (logps + shift).chunk(2)

    results = []
    for fn in (trl_compute_loss, ours):
        model.zero_grad(set_to_none=True)
        loss = fn(model, inputs, opts)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (want, want_g), (got, got_g) = results
    assert abs(got.item() - want.item()) <= 1e-5 * abs(want.item()), (got.item(), want.item())
    for name, g in want_g.items():
        err = ((got_g[name] - g).norm() / g.norm()).item()
        assert err <= 1e-5, (name, err)


def test_sft_with_wpo_is_refused_as_trl_cannot_compute_it():
    """TRL 1.16 multiplies sft's expanded batch NLL by the WPO weights in place, which torch refuses;
    we refuse the combination by name instead of inventing a meaning for it."""
    P, L, V = 2, 10, 211
    model = tiny_llama(V)
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs"))
    inputs = trl_batch(P, L, V)
    inputs["ref_chosen_logps"] = inputs["ref_rejected_logps"] = torch.zeros(P)
    with pytest.raises(RuntimeError):
        trl_compute_loss(model, inputs, {"loss_type": ["sigmoid", "sft"], "use_weighting": True})
    with pytest.raises(ValueError, match="not defined for sft"):
        FusedLinearPreferenceLoss(loss_type=["sigmoid", "sft"], use_weighting=True)


def test_hinge_with_wpo_matches_trls_forward():
    """TRL 1.16's in-place WPO product also breaks hinge's backward (relu saved its output); its forward
    is well defined, and ours matches it (our gradients are checked against float64 elsewhere)."""
    P, L, V = 4, 16, 211
    model = tiny_llama(V)
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs"))
    inputs = trl_batch(P, L, V)
    inputs["ref_chosen_logps"], inputs["ref_rejected_logps"] = (-20.0 * torch.rand(2 * P)).chunk(2)
    opts = {"loss_type": ["hinge", "sigmoid"], "use_weighting": True, "beta": 0.05}
    with torch.no_grad():
        want = trl_compute_loss(model, inputs, opts)
        got = ours(model, inputs, opts)
    assert abs(got.item() - want.item()) <= 1e-5 * abs(want.item())
