"""Scaling a gradient by the upstream gradient without a host sync: the kernel reads the scalar on the
device (and does nothing when it is exactly 1); the torch twin multiplies. Both give bit for bit what
`t * s.to(t.dtype)` gives."""
from __future__ import annotations

import torch

from rdpo_fast.kernels.grad_scale import grad_scale

from .backend import backend


def scale_(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """t *= s in place and return t; s: a one-element tensor on t's device, never read by the host."""
    mode = backend(t)
    if mode == "torch" or not t.is_contiguous():
        return t.mul_(s.to(t.dtype))
    return grad_scale(t, s.reshape(1).to(torch.float32), interpreted=mode == "interpret")
