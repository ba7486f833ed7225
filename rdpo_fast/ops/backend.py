"""Which implementation runs for a given tensor: 'triton' (compiled kernels, CUDA tensors),
'interpret' (the same kernels under the Triton interpreter, on CPU), or 'torch' (the torch twins, also
for float64 logits, which the kernels are not built for).

The interpreter is on when TRITON_INTERPRET=1 was set before triton was imported (the kernels are then
built as interpreted functions) and is still set now; clearing the variable switches a process to the
torch path without reimporting (the tests use this)."""
from __future__ import annotations

import os

import torch


def kernels_interpreted() -> bool:
    from rdpo_fast.kernels.logprob_backward import logprob_bwd_kernel

    return type(logprob_bwd_kernel).__name__ == "InterpretedFunction"


def backend(t: torch.Tensor) -> str:
    if t.dtype == torch.float64:
        return "torch"  # float64 logits (rdpo_fast.logprobs accepts them, as TRL does): the torch twin
    if kernels_interpreted():
        return "interpret" if os.environ.get("TRITON_INTERPRET") == "1" else "torch"
    return "triton" if t.is_cuda else "torch"
