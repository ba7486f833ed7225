"""Installs rdpo_fast and its device code; kernels/ is installed as rdpo_fast.kernels (SPEC section 2)."""
from setuptools import setup

setup(
    name="rdpo_fast",
    version="0.1.0",
    description="Triton kernels for DPO-family preference training: fused log-probs and preference losses",
    packages=["rdpo_fast", "rdpo_fast.reference", "rdpo_fast.kernels"],
    package_dir={"rdpo_fast.kernels": "kernels"},
    python_requires=">=3.10",
    install_requires=["torch>=2.6", "triton>=3.6", "transformers", "safetensors", "tqdm"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "liger-kernel", "numpy"],
        "bench": ["pytest-benchmark", "liger-kernel", "cut-cross-entropy", "matplotlib"],
        "gpu": ["flash-attn"],
    },
)
