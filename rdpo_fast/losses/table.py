"""What each loss type of the generalized head reads and how it behaves, in one table, so validation
(rdpo_fast.losses.head), the fused losses and the README agree. Pure data plus the normalisation of a
loss list (TRL's `loss_type` list with `loss_weights`); no torch, no kernels.

Columns:
    reads:       the options the loss reads; any other option set away from its default is an error.
    reference:   "required" (reads ref log-probs), "free" (must not be given), "optional" (sft: only the
                 reported rewards use them).
    rewards:     the implicit rewards it reports: "ratio" beta (c - c_ref), "logp" beta c, "avg" beta c/|y|.
    batch_level: the loss of one pair depends on other pairs (sorting; sft's batch NLL). A fused pass
                 over sorted losses needs every pair's log-probs before any gradient (the two-phase
                 schedule, up to 8NHV); sft rides the fused pass's NLL term instead.
    f_divergence: TRL accepts a non-default f_divergence_type with it.
    weighting:   TRL's use_weighting (WPO) may scale it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

LABEL_SMOOTHING = "label_smoothing"
SOFT_LABELS = "soft_labels"
GAMMA = "gamma"
TAU = "tau"
CHOSEN_LENGTHS = "chosen_lengths"
REJECTED_LENGTHS = "rejected_lengths"
LENGTHS = frozenset({CHOSEN_LENGTHS, REJECTED_LENGTHS})


@dataclass(frozen=True)
class LossInfo:
    reads: frozenset = frozenset()
    reference: str = "required"
    rewards: str = "ratio"
    batch_level: bool = False
    f_divergence: bool = False
    weighting: bool = True
    source: str = ""


def _info(reads=(), **kw):
    return LossInfo(reads=frozenset(reads), **kw)


# Public head ids: rdpo_fast.losses.head.LOSS_TYPES maps these names to the kernel's constexpr ids, in
# this order.
LOSSES = {
    "sigmoid": _info({LABEL_SMOOTHING, SOFT_LABELS}, f_divergence=True,
                     source="DPO, Rafailov et al. 2023; cDPO with label_smoothing (TRL, Liger)"),
    "rdpo": _info({SOFT_LABELS}, f_divergence=True, source="refined DPO, Gallego 2024 (soft labels)"),
    "robust": _info({LABEL_SMOOTHING}, f_divergence=True, source="Chowdhury et al. 2024 (TRL, Liger)"),
    "hinge": _info(f_divergence=True, source="SLiC, Zhao et al. 2023 (TRL, Liger)"),
    "ipo": _info(LENGTHS, f_divergence=True, source="Azar et al. 2023, TRL's per-token form (TRL, Liger)"),
    "exo_pair": _info({LABEL_SMOOTHING}, f_divergence=True, source="EXO, Ji et al. 2024 (TRL, Liger)"),
    "nca_pair": _info(source="NCA, Chen et al. 2024 (TRL, Liger)"),
    "bco_pair": _info(source="BCO, Jung et al. 2024 (TRL, Liger)"),
    "sppo_hard": _info(source="SPPO, Wu et al. 2024, hard labels (TRL, Liger)"),
    "apo_zero": _info(source="APO, D'Oosterlinck et al. 2024 (TRL, Liger)"),
    "apo_down": _info(source="APO, D'Oosterlinck et al. 2024 (TRL, Liger)"),
    "discopop": _info({TAU}, f_divergence=True, source="DiscoPOP, Chris Lu et al. 2024 (TRL, Liger)"),
    "sigmoid_norm": _info(LENGTHS, f_divergence=True, source="length-normalised DPO (TRL)"),
    "simpo": _info({LABEL_SMOOTHING, GAMMA} | LENGTHS, reference="free", rewards="avg",
                   source="SimPO, Meng et al. 2024 (Liger, TRL's CPO)"),
    "aot": _info({LABEL_SMOOTHING}, batch_level=True, weighting=False,
                 source="AOT, Melnyk et al. 2024 (TRL)"),
    "aot_unpaired": _info({LABEL_SMOOTHING}, batch_level=True, weighting=False,
                          source="AOT, Melnyk et al. 2024 (TRL)"),
    "orpo": _info(LENGTHS, reference="free", rewards="avg", source="ORPO, Hong et al. 2024 (Liger, TRL)"),
    "cpo": _info({LABEL_SMOOTHING}, reference="free", rewards="logp",
                 source="CPO, Xu et al. 2024 (Liger, TRL)"),
    # TRL 1.16 cannot weight sft (its in-place WPO product on the expanded batch NLL raises).
    "sft": _info({CHOSEN_LENGTHS}, reference="optional", batch_level=True, f_divergence=True, weighting=False,
                 source="NLL of the chosen completion, TRL's loss_type='sft' (MPO, RPO)"),
}

F_DIVERGENCES = {"reverse_kl": 0, "forward_kl": 1, "js_divergence": 2, "alpha_divergence": 3}
DEFAULT_F_ALPHA = 0.5
DEFAULT_TAU = 0.05
# A loss list: ((name, weight), ...).
Members = tuple[tuple[str, float], ...]


def real(name: str, value) -> float:
    """value as a float, or a ValueError naming it unless it is a finite real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


def normalise_losses(loss_type: str | list[str] | tuple[str, ...], loss_weights: list[float] | None = None) -> Members:
    """((name, weight), ...) from a loss_type name or list and TRL's loss_weights (None: all 1.0)."""
    if isinstance(loss_type, str):
        names = (loss_type,)
    elif isinstance(loss_type, (list, tuple)) and loss_type and all(isinstance(n, str) for n in loss_type):
        names = tuple(loss_type)
    else:
        raise ValueError(f"loss_type must be a loss name or a non-empty list of names, got {loss_type!r}")
    for n in names:
        if n not in LOSSES:
            raise ValueError(f"unknown loss_type {n!r}; valid: {', '.join(LOSSES)}")
    if loss_weights is None:
        weights = (1.0,) * len(names)
    else:
        if not isinstance(loss_weights, (list, tuple)) or len(loss_weights) != len(names):
            raise ValueError(f"loss_weights must be a list with one weight per loss type ({len(names)}), "
                             f"got {loss_weights!r}")
        weights = tuple(real("loss_weights entry", w) for w in loss_weights)
    return tuple(zip(names, weights))


def readers(members: Members, option: str) -> list[str]:
    """The members that read option."""
    return [n for n, _ in members if option in LOSSES[n].reads]


def describe(members: Members) -> str:
    """The list's name in messages: the loss name, or [a, b, ...]."""
    return members[0][0] if len(members) == 1 else "[" + ", ".join(n for n, _ in members) + "]"


def reference_mode(members: Members) -> str:
    """'required', 'free' or 'optional' for the whole list; a list mixing reference-free and
    reference-based members is refused (their implicit rewards do not share a definition)."""
    modes = {LOSSES[n].reference for n, _ in members}
    if "required" in modes and "free" in modes:
        raise ValueError(f"loss_type {describe(members)} mixes reference-free losses "
                         f"({', '.join(n for n, _ in members if LOSSES[n].reference == 'free')}) with "
                         "reference-based ones; combine losses of one kind")
    return "required" if "required" in modes else "free" if "free" in modes else "optional"


def reward_kind(members: Members, has_reference: bool) -> str:
    """The implicit rewards the list reports ('ratio', 'logp', ...), refused when its members differ."""
    kinds = {("ratio" if has_reference else "logp") if LOSSES[n].reference == "optional" else LOSSES[n].rewards
             for n, _ in members}
    if len(kinds) > 1:
        raise ValueError(f"loss_type {describe(members)} combines losses whose implicit rewards differ "
                         f"({', '.join(sorted(kinds))}); combine losses that report the same rewards")
    return kinds.pop()


def check_common_options(members: Members, *, label_smoothing: float, gamma: float, tau: float,
                         f_divergence_type: str, f_alpha_divergence_coef: float, weighting: bool) -> int:
    """The scalar options against the list: each must be read by some member, within each reader's
    range. Returns the f-divergence id (0 when it reduces to reverse_kl)."""
    name = describe(members)
    eps = real("label_smoothing", label_smoothing)
    gamma = real("gamma", gamma)
    tau = real("tau", tau)
    alpha = real("f_alpha_divergence_coef", f_alpha_divergence_coef)

    smooth = readers(members, LABEL_SMOOTHING)
    if eps != 0:
        if not smooth:
            raise ValueError(f"label_smoothing={eps} is not used by loss_type={name!r} (only by "
                             f"{', '.join(n for n, i in LOSSES.items() if LABEL_SMOOTHING in i.reads)})")
        if "sigmoid" in smooth and len(smooth) > 1:
            # TRL's sigmoid reads no label_smoothing; ours is cDPO with it. In a list the two readings
            # would silently differ, so the combination is refused.
            raise ValueError(f"label_smoothing in loss_type {name} would also make 'sigmoid' cDPO (TRL's "
                             "sigmoid ignores it); give 'sigmoid' alone for cDPO, or drop label_smoothing")
    for n in smooth:
        if n in ("sigmoid", "simpo", "cpo", "aot", "aot_unpaired") and not 0 <= eps <= 1:
            raise ValueError(f"label_smoothing must be in [0, 1] for {n}, got {eps}")
        if n == "robust" and not 0 <= eps < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5) for robust, got {eps}")
        if n == "exo_pair" and not 0 < eps <= 0.5:
            raise ValueError(f"label_smoothing must be in (0, 0.5] for exo_pair (it is the eps of log(eps); "
                             f"1e-3 is the EXO default), got {eps}")

    if gamma != 0 and not readers(members, GAMMA):
        raise ValueError(f"gamma={gamma} is only used by loss_type='simpo', not {name!r}")
    if readers(members, TAU):
        if tau <= 0:
            raise ValueError(f"tau must be > 0 for discopop, got {tau}")
    elif tau != DEFAULT_TAU:
        raise ValueError(f"tau={tau} is only used by loss_type='discopop', not {name!r}")

    if f_divergence_type not in F_DIVERGENCES:
        raise ValueError(f"unknown f_divergence_type {f_divergence_type!r}; valid: {', '.join(F_DIVERGENCES)}")
    if f_divergence_type != "alpha_divergence" and alpha != DEFAULT_F_ALPHA:
        raise ValueError(f"f_alpha_divergence_coef={alpha} is only used by f_divergence_type='alpha_divergence'")
    fdiv = F_DIVERGENCES[f_divergence_type]
    if fdiv:
        bad = [n for n, _ in members if not LOSSES[n].f_divergence]
        if bad:
            raise ValueError(f"f_divergence_type={f_divergence_type!r} is only defined for losses of the "
                             f"chosen-rejected reward difference ("
                             f"{', '.join(n for n, i in LOSSES.items() if i.f_divergence)}), not {', '.join(bad)}")
        # TRL's limit case: alpha -> 1 is reverse KL.
        if fdiv == 3 and abs(alpha - 1.0) < 1e-6:
            fdiv = 0
    if weighting:
        bad = [n for n, _ in members if not LOSSES[n].weighting]
        if bad:
            raise ValueError(f"WPO weighting (use_weighting / weights) is not defined for {', '.join(bad)}, as in "
                             "TRL 1.16: aot and aot_unpaired sort the pairs, which would misalign the per-pair "
                             "weights; sft is one batch NLL, which TRL's weighting cannot scale")
    return fdiv
