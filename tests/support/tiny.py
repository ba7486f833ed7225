"""A tiny Llama model and tokenizer built offline in well under a second, for the loop, resume and
torchrun tests: a byte-level BPE tokenizer trained on the shipped data (so the chat records tokenise
into short sequences) and a 2-layer LlamaForCausalLM with tied embeddings, saved as a Hugging Face
directory so the real loading path (AutoModelForCausalLM / AutoTokenizer from a local path) runs."""
from __future__ import annotations

import itertools
import json
import os

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = ["<|pad|>", "<|im_start|>", "<|im_end|>"]


def _corpus():
    from rdpo_fast.data.shipped import default_path

    for split in ("train", "eval"):
        with open(default_path(split)) as f:
            for line in f:
                rec = json.loads(line)
                for key in ("prompt", "chosen", "rejected"):
                    for m in rec[key]:
                        yield m["role"] + "\n" + m["content"]


def build_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer, *, seed: int = 0, hidden: int = 32, layers: int = 2, tied: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, tie_word_embeddings=tied,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      bos_token_id=None, attn_implementation="sdpa")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    return model


def save_tiny(path: str, *, seed: int = 0, **kw) -> str:
    """Writes the tiny model and tokenizer to `path` (a Hugging Face directory); returns path."""
    tok = build_tokenizer()
    model = build_model(tok, seed=seed, **kw)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_subset(path: str, n: int, split: str = "train", start: int = 0, transform=None) -> str:
    """The first n records (from `start`) of a shipped split, optionally transformed, as a JSONL file."""
    from rdpo_fast.data.shipped import default_path

    with open(default_path(split)) as f, open(path, "w") as out:
        for i, line in enumerate(itertools.islice(f, start, start + n)):
            rec = json.loads(line)
            if transform is not None:
                rec = transform(i, rec)
            out.write(json.dumps(rec) + "\n")
    return path


def run_files(root, pairs: int = 8) -> dict:
    """What a training test runs on, under the folder `root` (a pathlib.Path): the tiny model, the first
    `pairs` shipped training pairs, a reference cache; "root" is the folder itself."""
    return {"model": save_tiny(str(root / "model")), "train": write_subset(str(root / "train.jsonl"), pairs),
            "cache": str(root / "cache"), "root": root}


def exact_run_flags(files: dict, out, steps: int, *extra: str) -> list[str]:
    """`rdpo-fast train` flags of the short run the fault tests interrupt and resume: 8 pairs, 2 per step,
    4 steps per epoch (so 5 steps cross an epoch boundary), fp32 on CPU, no progress bar."""
    return ["--model", files["model"], "--data", files["train"], "--cache-dir", files["cache"], "--batch-size", "2",
            "--max-steps", str(steps), "--lr", "2e-3", "--warmup-steps", "1", "--max-length", "160", "--no-progress",
            "--no-bf16", "--output-dir", str(out), *extra]


def read_weights(run_dir: str) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(run_dir, "final", "model.safetensors"))
