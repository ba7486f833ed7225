"""FusedDPOTrainer with padding_free=True (which TRL 1.16 itself turns off for DPO): each batch's chosen and
rejected sequences run as one packed row with no padding, position_ids restarting per sequence, and the
fused loss reads them through its segment ids. Three trainer.train() steps of the tiny Llama (fp32) give
the padded step's losses, gradient norms and metrics, and TRL's own: with a ref_model in-pass,
a precomputed reference (with LD-DPO), PEFT adapters off, gradient accumulation and evaluation, eager
attention, pad_to_multiple_of. The model really receives one packed row. On CPU, transformers (5.25) keeps
attention within each packed sequence for sdpa, eager (and flex) through the mask it builds from
position_ids (checked here on the hidden states), but only without a cache: with use_cache on it does not.
What padding_free cannot be combined with is refused by name."""
import pytest
import torch

pytest.importorskip("trl")
from test_trl_integration import assert_same_logs, config, tiny, torch_twins, train  # noqa: E402,F401  (fixtures)
from trl import DPOTrainer  # noqa: E402

from rdpo_fast.integrations.trl import FusedDPOTrainer, UnsupportedSetting  # noqa: E402
from rdpo_fast.integrations.trl.padding_free import PackedPreferenceCollator, pack_preference_batch  # noqa: E402


def tiny_llama(attn):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager", "flex_attention"])
def test_transformers_keeps_attention_within_packed_sequences(attn):
    """The CPU attentions padding-free relies on: a packed row with position_ids restarting per sequence
    and no attention_mask gives each sequence the hidden states of its own padded row (the mask comes
    from masking_utils.find_packed_sequence_indices). flex_attention is checked forward only: on CPU it
    has no backward. With a cache (use_cache on, the config's default)
    transformers skips that mask and the sequences see each other: the fused forward turns it off."""
    model = tiny_llama(attn)
    lengths = [5, 9, 1, 7, 3, 9]
    T = max(lengths)
    ids = torch.randint(1, 97, (len(lengths), T))
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
    batch = {"input_ids": ids, "attention_mask": mask, "completion_mask": mask}
    packed = pack_preference_batch(batch, pad_token_id=0)
    with torch.no_grad():
        padded = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]
        model_kwargs = {k: v for k, v in packed.items() if k not in ("completion_mask", "completion_counts")}
        row = model.model(**model_kwargs, use_cache=False).last_hidden_state[0]
        cached = model.model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).last_hidden_state[0]
    assert row.shape == padded.shape
    assert (row - padded).abs().max().item() <= 1e-5 * padded.abs().max().item()
    assert (cached - padded).abs().max().item() > 0.1  # no packed mask with a cache


def test_collator_packs_trls_batch_without_padding():
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    examples = [{"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6], "ref_chosen_logps": -1.0,
                 "ref_rejected_logps": -2.0},
                {"prompt_ids": [7, 8], "chosen_ids": [9], "rejected_ids": [10, 11, 12], "ref_chosen_logps": -3.0,
                 "ref_rejected_logps": -4.0}]
    collate = PackedPreferenceCollator(DataCollatorForPreference(pad_token_id=0), pad_token_id=0)
    out = collate(examples)
    assert "attention_mask" not in out
    assert out["input_ids"].tolist() == [[1, 2, 3, 4, 5, 7, 8, 9, 1, 2, 3, 6, 7, 8, 10, 11, 12]]
    assert out["completion_mask"].tolist() == [[0, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 1, 1]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4]]
    assert out["seq_idx"].tolist() == [[0] * 5 + [1] * 3 + [2] * 4 + [3] * 5]
    assert out["cu_seq_lens_q"].tolist() == [0, 5, 8, 12, 17] and out["max_length_q"] == 5
    assert out["completion_counts"] == [2, 1, 1, 3]
    assert out["ref_chosen_logps"].tolist() == [-1.0, -3.0]
    padded = PackedPreferenceCollator(DataCollatorForPreference(pad_token_id=0), 0, pad_to_multiple_of=8)(examples)
    assert padded["input_ids"].shape == (1, 24) and padded["position_ids"][0, 17:].tolist() == [0] * 7
    assert padded["seq_idx"][0, 17:].tolist() == list(range(4, 11))  # each pad token a sequence of its own
    assert padded["cu_seq_lens_k"].tolist() == [0, 5, 8, 12, 17, *range(18, 25)]
    with pytest.raises(ValueError, match="right-padded"):
        pack_preference_batch({"input_ids": torch.ones(2, 3, dtype=torch.long),
                               "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]]),
                               "completion_mask": torch.ones(2, 3, dtype=torch.long)}, 0)


def test_packed_targets_never_cross_a_sequence_boundary():
    """Position t predicts token t + 1 within its sequence only: where the next sequence starts with a
    completion token (an empty prompt), the last token of the previous one must not score it. The packed
    targets are the padded ones, sequence by sequence, with the same segment ids."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from rdpo_fast.integrations.trl.padding_free import loss_layout, sequence_starts

    examples = [{"prompt_ids": [1, 2], "chosen_ids": [3, 4], "rejected_ids": [5]},
                {"prompt_ids": [], "chosen_ids": [6, 7, 8], "rejected_ids": [9, 10]}]
    padded = DataCollatorForPreference(pad_token_id=0)(examples)
    packed = pack_preference_batch(padded, pad_token_id=0)
    targets = []
    for batch in (padded, packed):
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        hidden = torch.zeros(*labels.shape, 1)
        targets.append(loss_layout(hidden, labels, batch)[1:])
    (pad_target, _), (row_target, layout) = targets
    seg = layout["segment_ids"][0]
    for s in range(4):
        want = pad_target[s][pad_target[s] != -100].tolist()
        got = row_target[0][(seg == s) & (row_target[0] != -100)].tolist()
        assert got == want, (s, got, want)
    assert row_target[0].tolist() == [-100, 3, 4, -100, 7, 8, -100, -100, 5, -100, 10]
    # The loss's host_counts (the row's number of sequences and what each scores) are the padded rows'.
    assert layout["host_counts"] == [int(c) for c in (pad_target != -100).sum(1)] == [2, 2, 1, 1]
    # The empty prompts FusedDPOTrainer refuses for length-normalised losses are found in both layouts.
    for batch in (padded, packed):
        assert sequence_starts(batch, batch["completion_mask"]).tolist() == [0, 1, 0, 1]


def packed_calls(model):
    """Records the shape of input_ids and the keys of every forward of the model's decoder."""
    calls = []
    model = model.model
    forward = model.forward

    def spy(*a, **k):
        calls.append((tuple(k["input_ids"].shape), "attention_mask" in k, "position_ids" in k))
        return forward(*a, **k)
    model.forward = spy
    return calls


CASES = [
    ("ref_model", {}, {"ref_model": "other"}),
    ("precomputed+ld", {"precompute_ref_log_probs": True, "ld_alpha": 0.5}, {}),
    ("grad-accum+eval", {"gradient_accumulation_steps": 2, "per_device_train_batch_size": 1,
                         "gradient_checkpointing": True, "per_device_eval_batch_size": 2}, {"ref_model": "other",
                                                                                           "eval": True}),
    ("eager+rpo", {"loss_type": ["sigmoid", "sft"], "model_init_kwargs": {"attn_implementation": "eager"}}, {}),
    ("ipo+pad-multiple", {"loss_type": "ipo", "pad_to_multiple_of": 16, "per_device_train_batch_size": 3},
     {"ref_model": "other"}),
]


@pytest.mark.parametrize("kw,extra", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_padding_free_steps_equal_the_padded_steps(tiny, torch_twins, monkeypatch, kw, extra):
    def trainer_kw():
        out = {}
        if "ref_model" in extra:
            out["ref_model"] = tiny["other"]
        if extra.get("eval"):
            out["eval_dataset"] = tiny["ds"].select(range(4))
        return out

    padded, padded_trainer = train(FusedDPOTrainer, tiny, trainer_kw=trainer_kw(), **kw)
    trl_logs, _ = train(DPOTrainer, tiny, trainer_kw=trainer_kw(), **kw)  # TRL itself trains padded
    collated = []
    monkeypatch.setattr(PackedPreferenceCollator, "__call__", lambda self, ex: collated.append(len(ex)) or
                        pack_preference_batch(self.padded(ex), self.pad_token_id, self.pad_to_multiple_of))
    trainer = FusedDPOTrainer(model=tiny["policy"], args=config(tiny, padding_free=True, **kw),
                              train_dataset=tiny["ds"], processing_class=tiny["tok"], **_load(trainer_kw()))
    assert trainer.padding_free and isinstance(trainer.data_collator, PackedPreferenceCollator)
    # TRL's precompute pass (inside DPOTrainer.__init__) already collated packed batches: all 12 examples.
    assert sum(collated) == (12 if kw.get("precompute_ref_log_probs") else 0)
    calls = {"policy": packed_calls(trainer.model)}
    if trainer.ref_model is not None:
        calls["ref_model"] = packed_calls(trainer.ref_model)
    trainer.train()
    packed = [h for h in trainer.state.log_history if "loss" in h and "train_loss" not in h]
    # Policy and reference ran one packed row per micro-batch (no attention_mask, position_ids).
    for seen in calls.values():
        assert seen and all(shape[0] == 1 and not has_mask and has_pos for shape, has_mask, has_pos in seen)
    assert_same_logs(packed, padded, tiny)
    assert_same_logs(packed, trl_logs, tiny)
    if kw.get("precompute_ref_log_probs"):  # the stored columns agree too (scored packed vs padded)
        for col in ("ref_chosen_logps", "ref_rejected_logps"):
            a = torch.tensor(trainer.train_dataset[col])
            b = torch.tensor(padded_trainer.train_dataset[col])
            assert (a - b).abs().max().item() <= 1e-5 * b.abs().max().item()
    if extra.get("eval"):
        a, b = trainer.evaluate(), padded_trainer.evaluate()
        timing = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
        a, b = ({k: v for k, v in d.items() if k not in timing} for d in (a, b))
        assert set(a) == set(b)
        assert_same_logs([{k[5:]: v for k, v in a.items()}] * 3, [{k[5:]: v for k, v in b.items()}] * 3, tiny,
                         moved=False)


def _load(kw):
    from transformers import AutoModelForCausalLM

    if isinstance(kw.get("ref_model"), str):
        kw["ref_model"] = AutoModelForCausalLM.from_pretrained(kw["ref_model"])
    return kw


def test_padding_free_with_lora_reference(tiny, torch_twins):
    from peft import LoraConfig

    def lora():
        return {"peft_config": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                          lora_dropout=0.0, task_type="CAUSAL_LM")}

    padded, _ = train(FusedDPOTrainer, tiny, trainer_kw=lora(), learning_rate=2e-2)
    packed, trainer = train(FusedDPOTrainer, tiny, trainer_kw=lora(), learning_rate=2e-2, padding_free=True)
    assert trainer.ref_model is None and trainer.padding_free
    assert_same_logs(packed, padded, tiny)


def test_what_padding_free_cannot_honour_is_refused_by_name(tiny):
    from transformers import AttentionInterface, AutoModelForCausalLM
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    def build(**kw):
        settings = kw.pop("settings", {})
        return FusedDPOTrainer(model=kw.pop("model", tiny["policy"]), args=config(tiny, padding_free=True, **settings),
                               train_dataset=tiny["ds"], processing_class=tiny["tok"], **kw)

    with pytest.raises(UnsupportedSetting, match="FusedDPOTrainer: data_collator='DataCollatorForPreference' is not"):
        build(data_collator=DataCollatorForPreference(pad_token_id=0))
    with pytest.raises(UnsupportedSetting, match="FusedDPOTrainer: compute_metrics='metrics' is not supported"):
        def metrics(p):
            return {}
        build(compute_metrics=metrics)
    with pytest.raises(UnsupportedSetting, match="accelerator_config.split_batches=True is not supported"):
        build(settings={"accelerator_config": {"split_batches": True}})
    # An attention transformers builds no mask for would let the packed sequences see each other.
    AttentionInterface.register("rdpo_test_unmasked", sdpa_attention_forward)
    model = AutoModelForCausalLM.from_pretrained(tiny["policy"], attn_implementation="rdpo_test_unmasked")
    with pytest.raises(UnsupportedSetting, match=r"attn_implementation \(model\)='rdpo_test_unmasked' is not"):
        build(model=model, ref_model=AutoModelForCausalLM.from_pretrained(tiny["other"]))
    ref = AutoModelForCausalLM.from_pretrained(tiny["other"], attn_implementation="rdpo_test_unmasked")
    with pytest.raises(UnsupportedSetting, match=r"attn_implementation \(ref_model\)='rdpo_test_unmasked' is not"):
        build(ref_model=ref)
