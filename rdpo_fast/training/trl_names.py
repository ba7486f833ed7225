"""TRL / transformers.TrainingArguments names for `rdpo-fast train`, in config files and as flags, so an
existing TRL DPO config runs unchanged where its settings are supported and is refused by name where not.

translate(key, value) maps one TRL-style setting to rdpo_fast's own options ({name: value}, possibly
empty for a setting that changes nothing here), or raises Unsupported naming the key. Four kinds:
- RENAMED: the same setting under another name (learning_rate -> lr), values checked as ours are;
- TRANSLATED: a name whose values differ too (lr_scheduler_type constant_with_warmup -> scheduler
  constant, torch_dtype bfloat16 -> dtype bf16, bf16 / fp16, loss_type as a one-element list, ...);
- INERT: settings that cannot change the result here (logging verbosity, dataloader workers, padding
  multiples, the attention kernel among exact ones): accepted and dropped;
- anything else TRL or TrainingArguments defines: refused, "not supported: KEY ...".
"""
from __future__ import annotations

import dataclasses

from .typed import BOOL_WORDS


class Unsupported(ValueError):
    """A TRL/TrainingArguments setting rdpo_fast cannot honour; the message names it."""


RENAMED = {
    "model_name_or_path": "model", "learning_rate": "lr", "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "per_device_eval_batch_size": "eval_batch_size",
    "rpo_alpha": "nll_alpha", "discopop_tau": "tau", "simpo_gamma": "gamma", "padding_free": "packed",
    "dataset_name": "data", "dataset_train_split": "dataset_split", "dataset_test_split": "eval_dataset_split",
    "resume_from_checkpoint": "resume", "overwrite_output_dir": "overwrite",
}
# Same name, same meaning (listed so the table says which TRL names are ours as they are).
SAME = ("output_dir", "beta", "max_length", "max_prompt_length", "warmup_steps", "warmup_ratio", "weight_decay",
        "max_grad_norm", "logging_steps", "save_steps", "save_total_limit", "eval_steps", "seed",
        "gradient_checkpointing", "label_smoothing", "ld_alpha", "report_to", "run_name", "logging_dir", "optim",
        "bf16", "disable_dropout", "lora_r", "lora_alpha", "lora_dropout")
SCHEDULERS = {"constant": "constant", "constant_with_warmup": "constant", "cosine": "cosine", "linear": "linear"}
OPTIMIZERS = {"adamw": "adamw", "adamw_torch": "adamw", "adamw_torch_fused": "adamw", "adamw_hf": "adamw",
              "adamw_8bit": "adamw_8bit", "adamw_bnb_8bit": "adamw_8bit", "adamw_torch_8bit": "adamw_8bit"}
DTYPES = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16", "half": "fp16",
          "fp32": "fp32", "float32": "fp32", "float": "fp32", "auto": None}
ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3")
# Accepted and dropped: none of these can change a number rdpo_fast computes.
INERT = {"do_train", "do_eval", "do_predict", "log_level", "log_level_replica", "log_on_each_node",
         "logging_first_step", "logging_nan_inf_filter", "disable_tqdm", "dataloader_num_workers",
         "dataloader_pin_memory", "dataloader_persistent_workers", "dataloader_prefetch_factor",
         "dataloader_drop_last", "remove_unused_columns", "dataset_num_proc", "preprocessing_num_workers",
         "pad_to_multiple_of", "precompute_ref_batch_size", "skip_memory_metrics", "include_num_input_tokens_seen",
         "include_tokens_per_second", "save_safetensors", "save_only_model", "ddp_find_unused_parameters",
         "ddp_bucket_cap_mb", "ddp_broadcast_buffers", "ddp_timeout", "ddp_backend", "local_rank", "use_cache",
         "label_names", "prediction_loss_only", "eval_do_concat_batches", "data_seed", "hub_token",
         "hub_private_repo", "hub_model_id", "hub_strategy", "hub_revision", "hub_always_push", "project",
         "greater_is_better", "metric_for_best_model", "eval_accumulation_steps", "full_determinism",
         "torch_empty_cache_steps", "average_tokens_across_devices", "eval_on_start", "eval_delay"}
# TRL names outside TrainingArguments (DPOConfig, ModelConfig, ScriptArguments, older releases), so that
# they are refused as "not supported" rather than as unknown.
TRL_NAMES = {"model_init_kwargs", "ref_model_init_kwargs", "trust_remote_code", "router_aux_loss_coef",
             "truncation_mode", "precompute_ref_log_probs", "loss_type", "loss_weights", "f_divergence_type",
             "f_alpha_divergence_coef", "use_weighting", "activation_offloading", "sync_ref_model",
             "ref_model_mixup_alpha", "ref_model_sync_steps", "pad_token", "max_completion_length",
             "reference_free", "generate_during_eval", "is_encoder_decoder", "model_adapter_name",
             "ref_adapter_name", "force_use_ref_model", "use_num_logits_to_keep", "tools", "label_pad_token_id",
             "padding_value", "dataset_config", "dataset_streaming", "gradient_checkpointing_use_reentrant",
             "ignore_bias_buffers", "model_revision", "torch_dtype", "dtype", "attn_implementation", "use_peft",
             "lora_target_modules", "lora_modules_to_save", "lora_task_type", "use_rslora", "use_dora",
             "load_in_8bit", "load_in_4bit", "bnb_4bit_quant_type", "use_bnb_nested_quant", "dataset_mixture",
             "evaluation_strategy", "warmup_ratio", "logging_dir", "rpo_alpha", "discopop_tau", "simpo_gamma",
             "cpo_alpha", "use_logits_to_keep", "tr_dpo", "padding_free", "max_prompt_length"}


def _bool(key, v) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in BOOL_WORDS:
        return BOOL_WORDS[v.strip().lower()]
    raise Unsupported(f"{key} must be true or false, got {v!r}")


def _num(key, v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise Unsupported(f"{key} must be a number, got {v!r}") from None


def _refuse(key, v, why=""):
    raise Unsupported(f"not supported: {key}={v!r}" + (f" ({why})" if why else ""))


def _only_if(key, v, ok_values, why):
    if v in ok_values or (isinstance(v, str) and v.lower() in [str(x).lower() for x in ok_values]):
        return {}
    _refuse(key, v, why)


def _listish(v) -> list:
    if isinstance(v, (list, tuple)):
        return list(v)
    if isinstance(v, str):
        return [p for p in v.replace(",", " ").split() if p]
    return [v]


def _epochs(key, v):
    n = _num(key, v)
    if n != int(n) or n < 1:
        _refuse(key, v, "whole epochs only; give max_steps for part of an epoch")
    return {"epochs": int(n)}


def _max_steps(key, v):
    # TrainingArguments: -1 (any value <= 0) means "from the epochs"; anything else goes to the type check.
    try:
        unset = v is not None and not isinstance(v, bool) and float(v) <= 0
    except (TypeError, ValueError):
        unset = False
    return {"max_steps": None if unset else v}


def _warmup_steps(key, v):
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        return {"warmup_steps": v}  # the type check names it
    try:
        n = float(v)
    except ValueError:
        return {"warmup_steps": v}
    if 0 < n < 1:  # transformers >= 5: a fraction is a ratio
        return {"warmup_ratio": n}
    return {"warmup_steps": int(n) if n == int(n) else v}


def _scheduler(key, v):
    if v not in SCHEDULERS:
        _refuse(key, v, f"supported: {', '.join(SCHEDULERS)}")
    out = {"scheduler": SCHEDULERS[v]}
    if key == "lr_scheduler_type" and v == "constant":
        out["_constant_without_warmup"] = True
    return out


def _optim(key, v):
    if v not in OPTIMIZERS:
        _refuse(key, v, f"supported: {', '.join(OPTIMIZERS)}")
    return {"optim": OPTIMIZERS[v]}


def _dtype(key, v):
    if v is None:
        return {}
    name = str(v).replace("torch.", "")
    if name not in DTYPES:
        _refuse(key, v, "supported: bfloat16, float16, float32, auto")
    return {} if DTYPES[name] is None else {"dtype": DTYPES[name]}


def _fp16(key, v):
    return {"dtype": "fp16"} if _bool(key, v) else {}


def _loss_type(key, v):
    types = _listish(v)
    if len(types) != 1:
        _refuse(key, v, "one loss type per run; combined losses (loss_weights) are not implemented")
    return {"loss_type": types[0]}


def _loss_weights(key, v):
    if v is None or _listish(v) in ([1], [1.0]):
        return {}
    _refuse(key, v, "combined losses are not implemented")


def _report_to(key, v):
    names = _listish(v) if v is not None else ["none"]
    if names == ["all"]:
        import importlib.util

        names = [n for n in ("tensorboard", "wandb") if importlib.util.find_spec(n) is not None] or ["none"]
    return {"report_to": ",".join(str(n) for n in names)}


def _strategy(field_name):
    def f(key, v):
        if v in ("steps", None):
            return {}
        if v == "no":
            return {field_name: 0} if field_name else {}
        _refuse(key, v, "only 'steps' (with the matching *_steps) or 'no'")
    return f


def _model_init_kwargs(key, v):
    if not v:
        return {}
    if not isinstance(v, dict) or set(v) - {"torch_dtype", "dtype", "attn_implementation"}:
        _refuse(key, v, "only torch_dtype / dtype / attn_implementation can be given here")
    out = {}
    for k in ("torch_dtype", "dtype"):
        if k in v:
            out.update(_dtype(f"{key}.{k}", v[k]))
    if "attn_implementation" in v:
        _only_if(f"{key}.attn_implementation", v["attn_implementation"], ATTENTION + (None,), "unknown attention")
    return out


def _gc_kwargs(key, v):
    if not v or (isinstance(v, dict) and set(v) <= {"use_reentrant"} and not v.get("use_reentrant", False)):
        return {}
    _refuse(key, v, "gradient checkpointing here is always non-reentrant; only {use_reentrant: false}")


def _reference_free(key, v):
    return {"reference": "none"} if _bool(key, v) else {}


def _precompute(key, v):
    # false (a reference forward each step) gives the same numbers as the cached pass rdpo_fast prefers.
    return {"reference": "precompute"} if _bool(key, v) else {}


def _use_peft(key, v):
    return {"_use_peft": _bool(key, v)}


def _lora_targets(key, v):
    targets = _listish(v)
    if "all-linear" in targets:
        _refuse(key, v, "give the module names, e.g. q_proj,k_proj,v_proj,o_proj")
    return {"lora_targets": ",".join(targets)}


def _false_only(why):
    return lambda key, v: _only_if(key, v, (False, None, "false", "False", 0), why)


def _empty_only(why):
    return lambda key, v: {} if not v else _refuse(key, v, why)


TRANSLATED = {
    "num_train_epochs": _epochs, "max_steps": _max_steps, "warmup_steps": _warmup_steps,
    "lr_scheduler_type": _scheduler, "optim": _optim, "torch_dtype": _dtype, "dtype": _dtype, "fp16": _fp16,
    "loss_type": _loss_type, "loss_weights": _loss_weights, "report_to": _report_to,
    "save_strategy": _strategy("save_steps"), "eval_strategy": _strategy(None),
    "evaluation_strategy": _strategy(None), "logging_strategy": _strategy(None),
    "model_init_kwargs": _model_init_kwargs, "ref_model_init_kwargs": _model_init_kwargs,
    "gradient_checkpointing_kwargs": _gc_kwargs, "reference_free": _reference_free,
    "precompute_ref_log_probs": _precompute, "use_peft": _use_peft, "lora_target_modules": _lora_targets,
    "attn_implementation": lambda k, v: _only_if(k, v, ATTENTION + (None,), f"one of {', '.join(ATTENTION)}"),
    "truncation_mode": lambda k, v: _only_if(k, v, ("keep_start",), "completions are cut at their end"),
    "f_divergence_type": lambda k, v: _only_if(k, v, ("reverse_kl",), "only the reverse-KL (standard) DPO"),
    "model_revision": lambda k, v: _only_if(k, v, ("main", None), "give a local snapshot directory instead"),
    "trust_remote_code": _false_only("models with custom code are not loaded"),
    "use_liger_kernel": _false_only("rdpo_fast's own fused loss is always on; Liger is not used"),
    "deepspeed": _empty_only("use torchrun with --distributed ddp or fsdp"),
    "fsdp": _empty_only("use torchrun with --distributed fsdp"),
    "fsdp_config": _empty_only("use torchrun with --distributed fsdp"),
    "push_to_hub": _false_only("upload RUN/final yourself"),
    "torch_compile": _false_only("not implemented"), "tf32": _false_only("not implemented"),
    "bf16_full_eval": _false_only("evaluation runs in the training precision"),
    "fp16_full_eval": _false_only("evaluation runs in the training precision"),
    "load_best_model_at_end": _false_only("the final model is the last step's"),
    "auto_find_batch_size": _false_only("not implemented"),
    "use_weighting": _false_only("WPO weighting is not implemented"),
    "sync_ref_model": _false_only("TR-DPO is not implemented"),
    "activation_offloading": _false_only("not implemented"),
    "generate_during_eval": _false_only("not implemented"),
    "load_in_4bit": _false_only("quantised training is not implemented"),
    "load_in_8bit": _false_only("quantised training is not implemented"),
    "use_dora": _false_only("not implemented"), "use_rslora": _false_only("not implemented"),
    "max_completion_length": lambda k, v: _only_if(k, v, (None,), "completions are cut to fit max_length"),
    "router_aux_loss_coef": lambda k, v: _only_if(k, v, (None,), "MoE auxiliary losses are not implemented"),
    "neftune_noise_alpha": lambda k, v: _only_if(k, v, (None,), "not implemented"),
}


def known_elsewhere() -> set[str]:
    """Every TRL / TrainingArguments name (for "not supported" rather than "unknown option")."""
    names = set(TRL_NAMES)
    try:
        from transformers import TrainingArguments

        names |= {f.name for f in dataclasses.fields(TrainingArguments)}
    except Exception:  # transformers is a dependency; this only guards an odd install
        pass
    return names


def is_alias(key: str) -> bool:
    return key in RENAMED or key in TRANSLATED or key in INERT


def translate(key: str, value: object, own: set[str]) -> dict:
    """{our option: value} for one setting named `key` (ours or TRL's). Raises Unsupported naming the key,
    or KeyError for a name nobody defines."""
    if key in TRANSLATED:
        return TRANSLATED[key](key, value)
    if key in own:
        return {key: value}
    if key in RENAMED:
        return {RENAMED[key]: value}
    if key in INERT:
        return {}
    if key in known_elsewhere():
        raise Unsupported(f"not supported: {key} (a TRL/TrainingArguments option rdpo_fast does not implement)")
    raise KeyError(key)


def finish(values: dict) -> dict:
    """Settings that only mean something together: TRL's use_peft turns lora_r on (TRL's default rank 16),
    and without it its lora_* settings are inert."""
    use_peft = values.pop("_use_peft", None)
    if use_peft is True and not values.get("lora_r"):
        values["lora_r"] = 16
    if use_peft is False:
        for k in ("lora_r", "lora_alpha", "lora_dropout", "lora_targets"):
            values.pop(k, None)
    if values.pop("_constant_without_warmup", False) and (values.get("warmup_steps") or values.get("warmup_ratio")):
        raise Unsupported("not supported: lr_scheduler_type='constant' with warmup (TRL ignores the warmup there); "
                          "use lr_scheduler_type constant_with_warmup, or no warmup")
    return values
