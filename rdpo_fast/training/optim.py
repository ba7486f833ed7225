"""Precision, memory, the optimizer and the learning-rate schedule of the training loop.

Precision (--dtype, --bf16). The weights are stored in --dtype (bf16 by default on CUDA, fp32 on CPU):
every frozen weight (the reference copy, frozen layers, a LoRA base) and the activations take half the
memory in bf16/fp16. The weights that are *trained* are kept in fp32, and the forward runs under
autocast in the low-precision dtype, i.e. the trained weights are their own fp32 master copies. Why not
train bf16 weights in place: an AdamW update is about lr per element, and at DPO's learning rates
(1e-7..1e-5) it is far below half a bf16 ulp of a typical weight (2^-9 * |w|, ~4e-5 for |w| = 0.02), so
round-to-nearest would silently drop most updates. The fused loss sums dW over its chunks in fp32
(dw_accumulation="fp32") and hands autograd a gradient in the compute dtype, which autograd adds into
the fp32 weight's .grad; micro-batch accumulation therefore runs in fp32 too.
fp16 (CUDA only) adds dynamic loss scaling (torch.amp.GradScaler) so small gradients do not flush to
zero; bf16 needs none.

Memory: --gradient-checkpointing recomputes each decoder layer in backward (non-reentrant, so frozen
inputs are fine) instead of storing its activations.

Non-finite steps: a step whose loss or gradient norm is NaN or infinite is skipped, as AMP's GradScaler
skips a step whose scaled gradients overflowed: the optimizer does not step (weights and moments stay
as they were), and neither does the learning-rate schedule, as the Hugging Face Trainer leaves it when
the scaler skipped (the schedule counts updates). The step still counts as a step of the run: its pairs
are used up. With fp16 loss scaling a non-finite gradient under a finite loss is the scaler's ordinary
overflow (it lowers the scale and goes on), so only a non-finite loss counts as a divergence there.

Optimizer: `adamw` is torch's AdamW, fused (one kernel for all parameters) where every parameter is a
plain tensor on CPU or CUDA, the for-each implementation otherwise (FSDP2's DTensors); `adamw_8bit` is
bitsandbytes' AdamW8bit (8-bit moments: 2 bytes per parameter instead of 8), when it is importable.
The schedule is transformers' (linear warmup, then constant, cosine or linear decay).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
OPTIMIZERS = ("adamw", "adamw_8bit")
# Our schedule names -> transformers' (ours all warm up first: "constant" is constant after the warmup).
SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}


@dataclass(frozen=True)
class Precision:
    weights: torch.dtype  # storage of the weights as loaded (frozen ones stay so)
    compute: torch.dtype | None  # autocast dtype; None: compute in the weights' own dtype (fp32)

    @property
    def loss_scaling(self) -> bool:
        return self.compute == torch.float16

    def key(self) -> str:
        """What a cached reference pass depends on."""
        return f"{self.weights}/{self.compute}"


def resolve_precision(dtype: str | None, bf16: bool | None, device: torch.device) -> Precision:
    """The weights' and the compute dtype for --dtype and --bf16 on this device; impossible combinations
    are refused with the reason."""
    cuda = device.type == "cuda"
    name = dtype or ("bf16" if cuda else "fp32")
    if name not in DTYPES:
        raise ValueError(f"dtype must be bf16, fp16 or fp32, got {name!r}")
    if name == "fp16" and not cuda:
        raise ValueError("dtype fp16 needs CUDA: on CPU there is no fp16 autocast with loss scaling here; "
                         "use --dtype bf16 or fp32")
    if name == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU has no bf16: use --dtype fp16 (with loss scaling) or fp32")
    if name == "fp16" and bf16:
        raise ValueError("dtype fp16 computes in fp16: drop --bf16, or use --dtype bf16")
    weights = DTYPES[name]
    if name != "fp32":
        return Precision(weights, weights)
    on = cuda if bf16 is None else bool(bf16)
    return Precision(weights, torch.bfloat16 if on else None)


def prepare_model(model: torch.nn.Module, *, precision: Precision, gradient_checkpointing: bool,
                  disable_dropout: bool) -> None:
    """Before freezing/LoRA: dropout off (as TRL) and gradient checkpointing on, as asked."""
    if disable_dropout:
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        for name in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
            if isinstance(getattr(model.config, name, None), float):
                setattr(model.config, name, 0.0)
    if gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def master_weights(model: torch.nn.Module) -> int:
    """Trained weights to fp32 (their own master copies); frozen ones keep the storage dtype. Returns
    how many parameters were upcast."""
    n = 0
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
            n += p.numel()
    return n


def build_optimizer(name: str, params: list, *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adamw":
        plain = all(type(p) is torch.nn.Parameter and p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **({"fused": True} if plain else {}))
    if name == "adamw_8bit":
        try:
            import bitsandbytes as bnb
        except Exception as e:  # ImportError, or a broken CUDA setup raising at import
            raise ValueError(f"optim adamw_8bit needs bitsandbytes, which cannot be imported here ({e}); "
                             "pip install bitsandbytes, or use optim adamw") from None
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optim must be adamw or adamw_8bit, got {name!r}")


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, *, warmup_steps: int, warmup_ratio: float,
                    total_steps: int) -> tuple[torch.optim.lr_scheduler.LRScheduler, int]:
    """(the learning-rate schedule, its warmup steps): warmup_steps, else warmup_ratio of all steps."""
    from transformers import get_scheduler

    warmup = warmup_steps or math.ceil(warmup_ratio * total_steps)
    return get_scheduler(SCHEDULES[name], optimizer, num_warmup_steps=warmup, num_training_steps=total_steps), warmup


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """The gradients' total norm before clipping, after clipping them to max_norm (0: no clipping). A
    DTensor norm (FSDP2) is the full one."""
    grads = [p.grad for p in params if p.grad is not None]
    if _mixed(grads):
        return _clip_mixed(grads, max_norm)
    if max_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
    full = getattr(norm, "full_tensor", None)
    return float(full() if full is not None else norm)


def _mixed(grads: list[torch.Tensor]) -> bool:
    """Gradients of which some are DTensors and some plain tensors (transformers' tensor-parallel plan
    shards the linear layers and leaves the norms plain, replicated), which torch's foreach norm refuses."""
    kinds = {hasattr(g, "full_tensor") for g in grads}
    return len(kinds) == 2


def _clip_mixed(grads: list[torch.Tensor], max_norm: float) -> float:
    """clip_gradients over DTensor and plain gradients together: each DTensor's norm is its full one (a
    sharded gradient's over its shards, a replicated one once), a plain gradient counts once."""
    squares = []
    for g in grads:
        n = torch.linalg.vector_norm(g, dtype=torch.float32)
        full = getattr(n, "full_tensor", None)
        squares.append((full() if full is not None else n).square())
    total = float(torch.stack(squares).sum().sqrt())
    if max_norm > 0 and total > max_norm:
        coef = max_norm / (total + 1e-6)  # torch's clip_grad_norm_ formula
        for g in grads:
            g.mul_(coef)
    return total


@dataclass(frozen=True)
class StepOutcome:
    """What Stepper.step did."""
    grad_norm: float  # before clipping, unscaled; NaN or inf when the gradients were not finite
    applied: bool  # the update reached the weights
    nonfinite: str | None = None  # "loss" or "grad_norm": skipped as a divergence (the first non-finite of the two)


class Stepper:
    """backward and the optimizer step, with fp16 loss scaling when the precision needs it; step() skips
    the update when the step's loss or gradient norm is not finite (see the module's docstring)."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], *, precision: Precision,
                 max_grad_norm: float):
        self.optimizer, self.params, self.max_grad_norm = optimizer, params, max_grad_norm
        self.scaler = torch.amp.GradScaler("cuda") if precision.loss_scaling else None

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, loss: float) -> StepOutcome:
        """The update for the step whose loss (summed over ranks, so every rank decides alike) is `loss`.
        The gradient norm is the same on every rank too (DDP's averaged gradients, FSDP2's full norm)."""
        loss_ok = math.isfinite(loss)
        if self.scaler is None:
            norm = clip_gradients(self.params, self.max_grad_norm)
            if not loss_ok or not math.isfinite(norm):
                return StepOutcome(norm, False, "loss" if not loss_ok else "grad_norm")
            self.optimizer.step()
            return StepOutcome(norm, True)
        self.scaler.unscale_(self.optimizer)
        norm = clip_gradients(self.params, self.max_grad_norm)
        if loss_ok:
            self.scaler.step(self.optimizer)  # skipped when the scaled gradients overflowed
        self.scaler.update()  # lowers the scale after an overflow (unscale_ recorded it)
        return StepOutcome(norm, loss_ok and math.isfinite(norm), None if loss_ok else "loss")


def weights_finite(params: list[torch.nn.Parameter]) -> bool:
    """Whether every element of this rank's part of the weights is finite (its shard of a DTensor)."""
    local = [getattr(p, "to_local", lambda p=p: p)().detach() for p in params]
    checks = [torch.isfinite(t).all() for t in local if t.is_floating_point() and t.numel()]
    return bool(torch.stack(checks).all()) if checks else True  # one host sync
