"""The generalized DPO preference head on the host: argument checks, backend dispatch and the autograd
op `preference_loss` (SPEC sections 3 and 4).

`preference_head` is the autograd-free step the fused linear losses call: it returns the per-pair
losses, implicit rewards and the four derivatives of the summed loss, from the Triton kernel (compiled
on CUDA, interpreted on CPU under TRITON_INTERPRET=1) or, on CPU otherwise, from the reference formulas
differentiated by torch. `preference_loss` wraps it for users with autograd. `kto_head` is the same
step for KTO's unpaired sequences (the kernel's KTO branch).

`loss_type` may be a list with `loss_weights` (TRL's combination, e.g. MPO's sigmoid + bco_pair + sft):
one head launch per member, summed. Batch-level members couple the pairs: aot / aot_unpaired through
the host's sort permutations (the kernel gathers and scatters by them), sft through the batch's NLL;
the autograd op routes a non-uniform upstream gradient through the same coupling.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rdpo_fast.ops.backend import backend
from rdpo_fast.oracle.preference import ref_kto_loss, ref_preference_loss

from . import table as lt

LOSS_TYPES = {name: i for i, name in enumerate(lt.LOSSES)}
REFERENCE_FREE_LOSSES = frozenset(n for n, i in lt.LOSSES.items() if i.reference == "free")
F_DIVERGENCE_TYPES = tuple(lt.F_DIVERGENCES)
_DEFAULT_TAU = lt.DEFAULT_TAU
_real = lt.real


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


@dataclass(frozen=True)
class HeadSpec:
    """A validated loss list: ((name, weight), ...), the f-divergence id, the reference mode."""
    members: tuple
    fdiv: int
    reference: str


def check_head_options(loss_type: str | list[str], *, beta: float = 0.1, label_smoothing: float = 0.0,
                       gamma: float = 0.0, tau: float = _DEFAULT_TAU, loss_weights: list[float] | None = None,
                       f_divergence_type: str = "reverse_kl", f_alpha_divergence_coef: float = lt.DEFAULT_F_ALPHA,
                       weighting: bool = False) -> HeadSpec:
    """The tensor-free part of validate_preference_args (the fused losses run it at construction)."""
    members = lt.normalise_losses(loss_type, loss_weights)
    beta = _real("beta", beta)
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    fdiv = lt.check_common_options(members, label_smoothing=label_smoothing, gamma=gamma, tau=tau,
                                   f_divergence_type=f_divergence_type,
                                   f_alpha_divergence_coef=f_alpha_divergence_coef, weighting=weighting)
    return HeadSpec(members, fdiv, lt.reference_mode(members))


def validate_preference_args(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                             ref_chosen_logps: torch.Tensor | None, ref_rejected_logps: torch.Tensor | None, *,
                             loss_type: str | list[str] = "sigmoid", beta: float = 0.1,
                             label_smoothing: float = 0.0, soft_labels: torch.Tensor | None = None,
                             chosen_lengths: torch.Tensor | None = None,
                             rejected_lengths: torch.Tensor | None = None, gamma: float = 0.0,
                             tau: float = _DEFAULT_TAU, loss_weights: list[float] | None = None,
                             weights: torch.Tensor | None = None, f_divergence_type: str = "reverse_kl",
                             f_alpha_divergence_coef: float = lt.DEFAULT_F_ALPHA) -> HeadSpec:
    """Raise ValueError (TypeError for non-tensors) for any argument the loss cannot use as given;
    an option no member of the loss list reads is an error, never silently dropped."""
    spec = check_head_options(loss_type, beta=beta, label_smoothing=label_smoothing, gamma=gamma, tau=tau,
                              loss_weights=loss_weights, f_divergence_type=f_divergence_type,
                              f_alpha_divergence_coef=f_alpha_divergence_coef, weighting=weights is not None)
    members, name = spec.members, lt.describe(spec.members)
    eps = float(label_smoothing)

    c = policy_chosen_logps
    _check_pair_tensor("policy_chosen_logps", c, None)
    if not c.is_floating_point():
        raise ValueError(f"policy_chosen_logps must be floating point, got {c.dtype}")
    named = {"policy_rejected_logps": policy_rejected_logps, "ref_chosen_logps": ref_chosen_logps,
             "ref_rejected_logps": ref_rejected_logps}
    given_refs = [n for n in ("ref_chosen_logps", "ref_rejected_logps") if named[n] is not None]
    if spec.reference == "optional" and len(given_refs) == 1:
        raise ValueError(f"give both ref_chosen_logps and ref_rejected_logps or neither, not only {given_refs[0]}")
    for arg, t in named.items():
        is_ref = arg.startswith("ref_")
        if t is None:
            if is_ref and spec.reference != "required":
                continue
            raise ValueError(f"{arg} is None; only the reference-free loss types "
                             f"({', '.join(sorted(REFERENCE_FREE_LOSSES))}) and sft run without reference log-probs")
        if is_ref and spec.reference == "free":
            raise ValueError(f"{name} is reference-free: pass {arg}=None (it would be ignored)")
        _check_pair_tensor(arg, t, c)
        if not t.is_floating_point():
            raise ValueError(f"{arg} must be floating point, got {t.dtype}")
    lt.reward_kind(members, has_reference=bool(given_refs))

    if soft_labels is not None:
        soft_readers = lt.readers(members, lt.SOFT_LABELS)
        if not soft_readers:
            raise ValueError(f"soft_labels are not used by loss_type={name!r} "
                             f"(only by {', '.join(n for n, i in lt.LOSSES.items() if lt.SOFT_LABELS in i.reads)})")
        if "sigmoid" in soft_readers and eps != 0:
            raise ValueError("sigmoid got both soft_labels and label_smoothing; give one: "
                             "label_smoothing=eps is soft_labels = 1 - eps")
        _check_pair_tensor("soft_labels", soft_labels, c)
        if not soft_labels.is_floating_point():
            raise ValueError(f"soft_labels must be floating point, got {soft_labels.dtype}")
        # One host sync; a p outside [0, 1] gives a loss unbounded below, NaN poisons the batch.
        if bool(((soft_labels < 0) | (soft_labels > 1) | soft_labels.isnan()).any()):
            raise ValueError("soft_labels must lie in [0, 1] (probability that chosen is preferred); "
                             "got values outside it or NaN")

    lengths = {lt.CHOSEN_LENGTHS: chosen_lengths, lt.REJECTED_LENGTHS: rejected_lengths}
    for arg, t in lengths.items():
        who = lt.readers(members, arg)
        if t is None:
            if who:
                raise ValueError(f"loss_type={who[0]!r} normalises by length: {arg} is required")
            continue
        if not who:
            raise ValueError(f"{arg} is not used by loss_type={name!r} "
                             f"(only by {', '.join(n for n, i in lt.LOSSES.items() if arg in i.reads)})")
        _check_pair_tensor(arg, t, c)
        if not bool((t > 0).all()) or (t.is_floating_point() and not bool(t.isfinite().all())):
            raise ValueError(f"{arg} must be finite and > 0 (completion token counts)")

    if weights is not None:
        _check_pair_tensor("weights", weights, c)
        if not weights.is_floating_point():
            raise ValueError(f"weights must be floating point, got {weights.dtype}")
        if not bool(((weights >= 0) & weights.isfinite()).all()):
            raise ValueError("weights (WPO per-pair weights) must be finite and >= 0")
    return spec


@dataclass
class _Member:
    """One member's contribution, already scaled by its loss weight: derivatives of its summed loss
    (dc, dr, dcref, drref), and how an upstream gradient couples the pairs ("pair": not at all)."""
    losses: torch.Tensor
    rew_c: torch.Tensor
    rew_r: torch.Tensor
    derivs: tuple
    coupling: str = "pair"
    perm_a: torch.Tensor | None = None
    perm_b: torch.Tensor | None = None
    sft_scale: float = 0.0        # sft: d loss_i / d c_j = sft_scale for every i, j


def _f64(t):
    return None if t is None else t.detach().to(torch.float64)


def _aot_perms(name, c, r, cref, rref):
    # Keys in float64 so a near-tie orders as the exact log-ratios do (the kernel reads the fp32 inputs).
    if name == "aot":
        a, b = _f64(c) - _f64(r), _f64(cref) - _f64(rref)
    else:
        a, b = _f64(c) - _f64(cref), _f64(r) - _f64(rref)
    return torch.sort(a, stable=True).indices, torch.sort(b, stable=True).indices


def _on_kernel(t):
    """Whether the head runs the Triton kernel for these log-probs, else the float64 reference formulas
    differentiated by autograd (the torch backend: CPU without the interpreter)."""
    return backend(t) != "torch"


def _members(c, r, cref, rref, spec, *, beta, label_smoothing, soft_labels, chosen_lengths, rejected_lengths,
             gamma, tau, weights, f_alpha_divergence_coef):
    use_kernel = _on_kernel(c)
    out = []
    for name, mw in spec.members:
        info = lt.LOSSES[name]
        kw = dict(beta=beta, eps=label_smoothing, gamma=gamma, tau=tau)
        soft = soft_labels if lt.SOFT_LABELS in info.reads else None
        len_c = chosen_lengths if lt.CHOSEN_LENGTHS in info.reads else None
        len_r = rejected_lengths if lt.REJECTED_LENGTHS in info.reads else None
        m_cref, m_rref = (None, None) if info.reference == "free" else (cref, rref)
        if name == "sft" and cref is None:
            m_cref = m_rref = torch.zeros_like(c, dtype=torch.float32)
        member = _Member(None, None, None, None)
        extra = {}
        if name in ("aot", "aot_unpaired"):
            member.coupling = name
            member.perm_a, member.perm_b = _aot_perms(name, c, r, cref, rref)
            extra = dict(perm_a=member.perm_a, perm_b=member.perm_b)
        if name == "sft":
            n_tok = float(_f64(chosen_lengths).sum())
            member.coupling, member.sft_scale = "sft", -1.0 / n_tok
            extra = dict(s1=float(-_f64(c).sum()) / n_tok, s2=-c.numel() / n_tok)
        if use_kernel:
            from rdpo_fast.kernels.preference_head import preference_head_fwd
            kname, eps = name, label_smoothing
            # sigmoid with soft labels is rdpo; rdpo without them is sigmoid with p = 1.
            if kname == "sigmoid" and soft is not None:
                kname = "rdpo"
            elif kname == "rdpo" and soft is None:
                kname, eps = "sigmoid", 0.0
            kw["eps"] = eps
            losses, rew_c, rew_r, *derivs = preference_head_fwd(
                c, r, m_cref, m_rref, soft, len_c, len_r, loss_id=LOSS_TYPES[kname], weights=weights,
                fdiv=spec.fdiv, f_alpha=f_alpha_divergence_coef, **kw, **extra)
        else:
            losses, rew_c, rew_r, derivs = _torch_member(
                name, c, r, m_cref, m_rref, soft, len_c, len_r, weights, spec, f_alpha_divergence_coef, **kw)
        if mw != 1.0:
            losses = losses * mw
            derivs = [d * mw for d in derivs]
            member.sft_scale *= mw
        member.losses, member.rew_c, member.rew_r, member.derivs = losses, rew_c, rew_r, tuple(derivs)
        out.append(member)
    return out


def _torch_member(name, c, r, cref, rref, soft, len_c, len_r, weights, spec, f_alpha, *, beta, eps, gamma, tau):
    # The reference formulas differentiated by autograd, in float64: P elements cost nothing on CPU,
    # and float64 forms d exactly where fp32 would lose the margin of large, nearly equal log-ratios.
    fdiv_name = next(k for k, v in lt.F_DIVERGENCES.items() if v == spec.fdiv)
    # Fresh leaves, so the caller's graph (and inference mode) is untouched.
    with torch.inference_mode(False), torch.enable_grad():
        leaves = [None if t is None else _f64(t).clone().requires_grad_(True) for t in (c, r, cref, rref)]
        losses, rew_c, rew_r = ref_preference_loss(
            *leaves, loss_type=name, beta=beta, label_smoothing=eps, soft_labels=_f64(soft),
            chosen_lengths=_f64(len_c), rejected_lengths=_f64(len_r), gamma=gamma, tau=tau, weights=_f64(weights),
            f_divergence_type=fdiv_name, f_alpha_divergence_coef=f_alpha)
        used = [t for t in leaves if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(losses.sum(), used, allow_unused=True))
    derivs = []
    for t in leaves:
        g = None if t is None else next(grads)
        derivs.append(torch.zeros_like(c, dtype=torch.float32) if g is None else g.float())
    return losses.detach().float(), rew_c.detach().float(), rew_r.detach().float(), derivs


def _combine(members):
    losses = members[0].losses
    derivs = list(members[0].derivs)
    for m in members[1:]:
        losses = losses + m.losses
        derivs = [a + b for a, b in zip(derivs, m.derivs)]
    return losses, members[0].rew_c, members[0].rew_r, tuple(derivs)


def _spec_from(loss_type, loss_weights, f_divergence_type, f_alpha_divergence_coef):
    members = lt.normalise_losses(loss_type, loss_weights)
    fdiv = lt.F_DIVERGENCES[f_divergence_type]
    if fdiv == 3 and abs(f_alpha_divergence_coef - 1.0) < 1e-6:
        fdiv = 0
    return HeadSpec(members, fdiv, lt.reference_mode(members))


def preference_head(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                    ref_chosen_logps: torch.Tensor | None, ref_rejected_logps: torch.Tensor | None, *,
                    loss_type: str | list[str] = "sigmoid", beta: float = 0.1, label_smoothing: float = 0.0,
                    soft_labels: torch.Tensor | None = None, chosen_lengths: torch.Tensor | None = None,
                    rejected_lengths: torch.Tensor | None = None, gamma: float = 0.0, tau: float = _DEFAULT_TAU,
                    loss_weights: list[float] | None = None, weights: torch.Tensor | None = None,
                    f_divergence_type: str = "reverse_kl", f_alpha_divergence_coef: float = lt.DEFAULT_F_ALPHA,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """Per pair (losses, chosen_rewards, rejected_rewards, (dc, dr, dcref, drref)), all float32 [P],
    d* = d (sum of the losses) / d input_i (for per-pair losses, each pair's own derivative). No
    autograd graph and no validation (callers run validate_preference_args once): this runs per chunk
    inside the fused losses. ref_* may be None for the reference-free losses; their ref derivatives are
    zeros."""
    spec = _spec_from(loss_type, loss_weights, f_divergence_type, f_alpha_divergence_coef)
    members = _members(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, spec,
                       beta=beta, label_smoothing=label_smoothing, soft_labels=soft_labels,
                       chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths, gamma=gamma, tau=tau,
                       weights=weights, f_alpha_divergence_coef=f_alpha_divergence_coef)
    return _combine(members)


def kto_head(logps: torch.Tensor, ref_logps: torch.Tensor, kl: torch.Tensor, desirable: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """KTO per sequence: (losses, rewards beta * rho, d loss / d logp), float32 [B]; kl: a [B] tensor,
    desirable: bool [B]. Autograd-free, no validation (FusedLinearKTOLoss checks its inputs)."""
    if _on_kernel(logps):
        from rdpo_fast.kernels.preference_head import KTO, preference_head_fwd

        losses, rew, _, dc, _, _, _ = preference_head_fwd(
            logps, kl, ref_logps, None, desirable.float(), None, None, loss_id=KTO, beta=beta, eps=0.0,
            gamma=0.0, tau=0.05)
        return losses, rew, dc
    with torch.inference_mode(False), torch.enable_grad():
        x = logps.detach().double().requires_grad_(True)
        losses, rew = ref_kto_loss(x, ref_logps.double(), desirable, beta=beta, kl=kl.double())
        (g,) = torch.autograd.grad(losses.sum(), [x])
    return losses.detach().float(), rew.detach().float(), g.float()


def _upstream_grads(members, up):
    """d (sum_i up_i losses_i) / d (c, r, cref, rref), each member by its coupling of the pairs."""
    grads = [torch.zeros_like(up) for _ in range(4)]
    for m in members:
        if m.coupling == "pair":
            parts = [up * d for d in m.derivs]
        elif m.coupling == "sft":
            parts = [torch.full_like(up, m.sft_scale) * up.sum(), torch.zeros_like(up), torch.zeros_like(up),
                     torch.zeros_like(up)]
        else:
            # Sorted position k holds entry perm[k]: entry i receives the upstream gradient of its position.
            u_a = torch.empty_like(up)
            u_a[m.perm_a] = up
            u_b = torch.empty_like(up)
            u_b[m.perm_b] = up
            # aot sorts (c - r) and (c_ref - r_ref); aot_unpaired rho_w and rho_l. Order (c, r, cref, rref).
            ups = (u_a, u_a, u_b, u_b) if m.coupling == "aot" else (u_a, u_b, u_a, u_b)
            parts = [u * d for u, d in zip(ups, m.derivs)]
        grads = [g + p for g, p in zip(grads, parts)]
    return grads


class _PreferenceLossFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, c, r, cref, rref, options):
        spec = options.pop("spec")
        members = _members(c, r, cref, rref, spec, **options)
        losses, rew_c, rew_r, _ = _combine(members)
        ctx.members = members
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (c, r, cref, rref))
        ctx.mark_non_differentiable(rew_c, rew_r)
        return losses, rew_c, rew_r

    @staticmethod
    def backward(ctx, grad_losses, _grad_rew_c, _grad_rew_r):
        grads = _upstream_grads(ctx.members, grad_losses.float())
        out = [(g.to(dtype) if need else None) for need, g, dtype in zip(ctx.needs_input_grad[:4], grads, ctx.dtypes)]
        return (*out, None)


def preference_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                    ref_chosen_logps: torch.Tensor | None, ref_rejected_logps: torch.Tensor | None, *,
                    loss_type: str | list[str] = "sigmoid", beta: float = 0.1, label_smoothing: float = 0.0,
                    soft_labels: torch.Tensor | None = None, chosen_lengths: torch.Tensor | None = None,
                    rejected_lengths: torch.Tensor | None = None, gamma: float = 0.0, tau: float = _DEFAULT_TAU,
                    loss_weights: list[float] | None = None, weights: torch.Tensor | None = None,
                    f_divergence_type: str = "reverse_kl", f_alpha_divergence_coef: float = lt.DEFAULT_F_ALPHA,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses [P] (float32, differentiable w.r.t. the four log-probs) and the implicit rewards
    (float32, detached, as in TRL). Average the losses yourself. See SPEC section 4 for each loss_type.

    loss_type: a name or a list of names summed with loss_weights (TRL's loss combination).
    weights: per-pair WPO weights (constants, as TRL computes them without gradient), multiplying every
    member's losses. f_divergence_type / f_alpha_divergence_coef: TRL's f-DPO scores of the log-ratios.
    Batch-level losses: aot / aot_unpaired losses[k] is the loss of sorted position k; sft gives every pair
    the batch's chosen NLL -sum(c) / sum(chosen_lengths) (c must then be token sums). soft_labels and
    weights are constants: no gradient flows to them."""
    spec = validate_preference_args(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                    ref_rejected_logps, loss_type=loss_type, beta=beta,
                                    label_smoothing=label_smoothing, soft_labels=soft_labels,
                                    chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths,
                                    gamma=gamma, tau=tau, loss_weights=loss_weights, weights=weights,
                                    f_divergence_type=f_divergence_type,
                                    f_alpha_divergence_coef=f_alpha_divergence_coef)
    options = dict(spec=spec, beta=float(beta), label_smoothing=float(label_smoothing),
                   soft_labels=None if soft_labels is None else soft_labels.detach(),
                   chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths,
                   gamma=float(gamma), tau=float(tau), weights=None if weights is None else weights.detach(),
                   f_alpha_divergence_coef=float(f_alpha_divergence_coef))
    return _PreferenceLossFn.apply(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                   ref_rejected_logps, options)
