"""The generalized DPO preference head on the host: argument checks, backend dispatch and the autograd
op `preference_loss` (SPEC sections 3 and 4).

`preference_head` is the autograd-free per-chunk step the fused linear losses call: it returns the
per-pair losses, implicit rewards and the four per-pair derivatives of the loss, from the Triton kernel
(compiled on CUDA, interpreted on CPU under TRITON_INTERPRET=1) or, on CPU otherwise, from the
reference formulas differentiated by torch. `preference_loss` wraps it for users with autograd.
"""
from __future__ import annotations

import math

import torch

from .backend import backend
from .reference.preference import ref_preference_loss

LOSS_TYPES = {
    "sigmoid": 0, "rdpo": 1, "robust": 2, "hinge": 3, "ipo": 4, "exo_pair": 5, "nca_pair": 6,
    "bco_pair": 7, "sppo_hard": 8, "apo_zero": 9, "apo_down": 10, "discopop": 11, "sigmoid_norm": 12,
    "simpo": 13,
}
_USES_LABEL_SMOOTHING = ("sigmoid", "robust", "exo_pair", "simpo")
_USES_SOFT_LABELS = ("sigmoid", "rdpo")
_USES_LENGTHS = ("ipo", "sigmoid_norm", "simpo")
_DEFAULT_TAU = 0.05


def _real(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


def _check_pair_tensor(name, t, like):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} has dtype {t.dtype}; a real-valued tensor is needed")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D with one entry per pair, got shape {tuple(t.shape)}")
    if like is not None:
        if t.shape != like.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but policy_chosen_logps has "
                             f"{tuple(like.shape)}")
        if t.device != like.device:
            raise ValueError(f"{name} is on {t.device} but policy_chosen_logps is on {like.device}")


def validate_preference_args(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                             ref_rejected_logps, *, loss_type="sigmoid", beta=0.1, label_smoothing=0.0,
                             soft_labels=None, chosen_lengths=None, rejected_lengths=None, gamma=0.0,
                             tau=_DEFAULT_TAU):
    """Raise ValueError (TypeError for non-tensors) for any argument the loss cannot use as given;
    an option the chosen loss_type does not read is an error, never silently dropped."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(LOSS_TYPES)}")
    beta = _real("beta", beta)
    eps = _real("label_smoothing", label_smoothing)
    gamma = _real("gamma", gamma)
    tau = _real("tau", tau)
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")

    c = policy_chosen_logps
    _check_pair_tensor("policy_chosen_logps", c, None)
    if not c.is_floating_point():
        raise ValueError(f"policy_chosen_logps must be floating point, got {c.dtype}")
    named = {"policy_rejected_logps": policy_rejected_logps, "ref_chosen_logps": ref_chosen_logps,
             "ref_rejected_logps": ref_rejected_logps}
    for name, t in named.items():
        if t is None:
            if loss_type == "simpo" and name.startswith("ref_"):
                continue
            raise ValueError(f"{name} is None; only loss_type='simpo' runs without reference log-probs")
        if loss_type == "simpo" and name.startswith("ref_"):
            raise ValueError(f"simpo is reference-free: pass {name}=None (it would be ignored)")
        _check_pair_tensor(name, t, c)
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {t.dtype}")

    if eps != 0 and loss_type not in _USES_LABEL_SMOOTHING:
        raise ValueError(f"label_smoothing={eps} is not used by loss_type={loss_type!r} "
                         f"(only by {', '.join(_USES_LABEL_SMOOTHING)})")
    if loss_type in ("sigmoid", "simpo") and not 0 <= eps <= 1:
        raise ValueError(f"label_smoothing must be in [0, 1] for {loss_type}, got {eps}")
    if loss_type == "robust" and not 0 <= eps < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5) for robust, got {eps}")
    if loss_type == "exo_pair" and not 0 < eps <= 0.5:
        raise ValueError(f"label_smoothing must be in (0, 0.5] for exo_pair (it is the eps of "
                         f"log(eps); 1e-3 is the EXO default), got {eps}")

    if gamma != 0 and loss_type != "simpo":
        raise ValueError(f"gamma={gamma} is only used by loss_type='simpo', not {loss_type!r}")
    if loss_type == "discopop":
        if tau <= 0:
            raise ValueError(f"tau must be > 0 for discopop, got {tau}")
    elif tau != _DEFAULT_TAU:
        raise ValueError(f"tau={tau} is only used by loss_type='discopop', not {loss_type!r}")

    if soft_labels is not None:
        if loss_type not in _USES_SOFT_LABELS:
            raise ValueError(f"soft_labels are not used by loss_type={loss_type!r} "
                             f"(only by {', '.join(_USES_SOFT_LABELS)})")
        if loss_type == "sigmoid" and eps != 0:
            raise ValueError("sigmoid got both soft_labels and label_smoothing; give one: "
                             "label_smoothing=eps is soft_labels = 1 - eps")
        _check_pair_tensor("soft_labels", soft_labels, c)
        if not soft_labels.is_floating_point():
            raise ValueError(f"soft_labels must be floating point, got {soft_labels.dtype}")
        # One host sync; a p outside [0, 1] gives a loss unbounded below, NaN poisons the batch.
        if bool(((soft_labels < 0) | (soft_labels > 1) | soft_labels.isnan()).any()):
            raise ValueError("soft_labels must lie in [0, 1] (probability that chosen is preferred); "
                             "got values outside it or NaN")

    lengths = {"chosen_lengths": chosen_lengths, "rejected_lengths": rejected_lengths}
    for name, t in lengths.items():
        if t is None:
            if loss_type in _USES_LENGTHS:
                raise ValueError(f"loss_type={loss_type!r} normalises by length: {name} is required")
            continue
        if loss_type not in _USES_LENGTHS:
            raise ValueError(f"{name} is not used by loss_type={loss_type!r} "
                             f"(only by {', '.join(_USES_LENGTHS)})")
        _check_pair_tensor(name, t, c)
        if not bool((t > 0).all()) or (t.is_floating_point() and not bool(t.isfinite().all())):
            raise ValueError(f"{name} must be finite and > 0 (completion token counts)")


def preference_head(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
                    loss_type="sigmoid", beta=0.1, label_smoothing=0.0, soft_labels=None,
                    chosen_lengths=None, rejected_lengths=None, gamma=0.0, tau=_DEFAULT_TAU):
    """Per pair (losses, chosen_rewards, rejected_rewards, (dc, dr, dcref, drref)), all float32 [P],
    d* = d loss_i / d input_i. No autograd graph and no validation (callers run
    validate_preference_args once): this runs per chunk inside the fused losses. ref_* may be None for
    simpo; its ref derivatives are zeros."""
    c = policy_chosen_logps
    if backend(c) != "torch":
        from .kernels.preference_head import preference_head_fwd
        name = loss_type
        # sigmoid with soft labels is rdpo; rdpo without them is sigmoid with p = 1.
        if name == "sigmoid" and soft_labels is not None:
            name = "rdpo"
        elif name == "rdpo" and soft_labels is None:
            name, label_smoothing = "sigmoid", 0.0
        losses, rew_c, rew_r, *derivs = preference_head_fwd(
            c, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, soft_labels, chosen_lengths,
            rejected_lengths, loss_id=LOSS_TYPES[name], beta=beta, eps=label_smoothing, gamma=gamma,
            tau=tau)
        return losses, rew_c, rew_r, tuple(derivs)
    return _torch_head(c, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                       loss_type=loss_type, beta=beta, label_smoothing=label_smoothing,
                       soft_labels=soft_labels, chosen_lengths=chosen_lengths,
                       rejected_lengths=rejected_lengths, gamma=gamma, tau=tau)


def _torch_head(c, r, cref, rref, *, soft_labels, chosen_lengths, rejected_lengths, **kw):
    # The reference formulas differentiated by autograd, in float64: P elements cost nothing on CPU,
    # and float64 forms d exactly where fp32 would lose the margin of large, nearly equal log-ratios.
    def f64(t):
        return None if t is None else t.detach().to(torch.float64)

    # Fresh leaves, so the caller's graph (and inference mode) is untouched.
    with torch.inference_mode(False), torch.enable_grad():
        leaves = [None if t is None else f64(t).clone().requires_grad_(True) for t in (c, r, cref, rref)]
        losses, rew_c, rew_r = ref_preference_loss(
            *leaves, soft_labels=f64(soft_labels), chosen_lengths=f64(chosen_lengths),
            rejected_lengths=f64(rejected_lengths), **kw)
        used = [t for t in leaves if t is not None]
        grads = iter(torch.autograd.grad(losses.sum(), used))
    derivs = [torch.zeros_like(c, dtype=torch.float32) if t is None else next(grads).float()
              for t in leaves]
    return losses.detach().float(), rew_c.detach().float(), rew_r.detach().float(), tuple(derivs)


class _PreferenceLossFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, c, r, cref, rref, options):
        losses, rew_c, rew_r, derivs = preference_head(c, r, cref, rref, **options)
        ctx.save_for_backward(*derivs)
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (c, r, cref, rref))
        ctx.mark_non_differentiable(rew_c, rew_r)
        return losses, rew_c, rew_r

    @staticmethod
    def backward(ctx, grad_losses, _grad_rew_c, _grad_rew_r):
        grads = []
        for need, d, dtype in zip(ctx.needs_input_grad[:4], ctx.saved_tensors, ctx.dtypes):
            grads.append((grad_losses * d).to(dtype) if need else None)
        return (*grads, None)


def preference_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
                    loss_type="sigmoid", beta=0.1, label_smoothing=0.0, soft_labels=None,
                    chosen_lengths=None, rejected_lengths=None, gamma=0.0, tau=_DEFAULT_TAU):
    """Per-pair losses [P] (float32, differentiable w.r.t. the four log-probs) and the implicit rewards
    (float32, detached, as in TRL). Average the losses yourself. See SPEC section 4 for each loss_type.
    soft_labels are constants: no gradient flows to them."""
    validate_preference_args(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                             ref_rejected_logps, loss_type=loss_type, beta=beta,
                             label_smoothing=label_smoothing, soft_labels=soft_labels,
                             chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths,
                             gamma=gamma, tau=tau)
    options = dict(loss_type=loss_type, beta=float(beta), label_smoothing=float(label_smoothing),
                   soft_labels=None if soft_labels is None else soft_labels.detach(),
                   chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths,
                   gamma=float(gamma), tau=float(tau))
    return _PreferenceLossFn.apply(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                   ref_rejected_logps, options)
