"""Input validation for the public ops: every bad input is a ValueError (or TypeError for wrong types)
that names the argument, raised before any kernel runs."""
from __future__ import annotations

import math
import os

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Ready logits may also be float64 (TRL's selective_log_softmax takes them); the log-probs stay float32.
LOGITS_DTYPES = FLOAT_DTYPES + (torch.float64,)


def out_of_range(labels: torch.Tensor, V: int, ignore_index: int) -> torch.Tensor:
    """Device-side count of labels outside [0, V) that are not ignore_index (no host sync)."""
    return ((labels != ignore_index) & ((labels < 0) | (labels >= V))).sum()


def raise_out_of_range(labels: torch.Tensor, V: int, ignore_index: int, name: str = "labels") -> None:
    """ValueError naming the first label outside [0, V) (one host read: only once one is known to exist)."""
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= V))
    first = labels[bad].flatten()[0].item()
    raise ValueError(f"{name} holds {first}, outside [0, {V}) and not ignore_index={ignore_index}")


def check_labels(labels: torch.Tensor, expected_shape: tuple[int, ...], V: int, ignore_index: int, device: torch.device,
                 name: str = "labels", check_range: bool = True) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer class ids, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor (int64 class ids), got dtype {labels.dtype}")
    if tuple(labels.shape) != tuple(expected_shape):
        raise ValueError(f"{name} has shape {tuple(labels.shape)} but the input's leading dimensions are "
                         f"{tuple(expected_shape)}")
    if labels.device != device:
        raise ValueError(f"{name} is on {labels.device} but the input is on {device}")
    # One reduction and one host sync: cheap next to the GEMMs, and an out-of-range label would
    # otherwise read out of bounds inside the kernel. Callers that sync anyway pass check_range=False
    # and fold out_of_range() into their own single transfer.
    if check_range and int(out_of_range(labels, V, ignore_index)):
        raise_out_of_range(labels, V, ignore_index, name)


def check_transform(temperature: float, softcap: float | None) -> None:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if softcap is not None and not (isinstance(softcap, (int, float)) and math.isfinite(softcap)
                                    and softcap > 0):
        raise ValueError(f"softcap must be None or a finite number > 0, got {softcap!r}")


def check_linear_inputs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, bias: torch.Tensor | None,
                        ignore_index: int, temperature: float, softcap: float | None, check_range: bool = True,
                        vocab_size: int | None = None) -> None:
    """vocab_size: the labels' range when weight is one rank's vocabulary slice (None: weight's rows)."""
    for name, t in (("hidden", hidden), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if hidden.dim() < 1:
        raise ValueError("hidden must have shape [..., H], got a scalar")
    if weight.dim() != 2:
        raise ValueError(f"weight must have shape [V, H], got {tuple(weight.shape)}")
    if hidden.dtype not in FLOAT_DTYPES:
        raise ValueError(f"hidden dtype {hidden.dtype} is not supported (float32, bfloat16, float16)")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight dtype {weight.dtype} differs from hidden dtype {hidden.dtype}")
    if weight.device != hidden.device:
        raise ValueError(f"weight is on {weight.device} but hidden is on {hidden.device}")
    V, H = weight.shape
    if hidden.shape[-1] != H:
        raise ValueError(f"hidden's last dimension is {hidden.shape[-1]} but weight is [V={V}, H={H}]")
    # A vocabulary slice may be empty (a rank past the end when V < ranks); a whole weight may not.
    if (V == 0 and vocab_size is None) or H == 0:
        raise ValueError(f"weight is empty: shape {tuple(weight.shape)}")
    if hidden.numel() == 0:
        raise ValueError(f"hidden is empty: shape {tuple(hidden.shape)}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be None or a torch.Tensor, got {type(bias).__name__}")
        if tuple(bias.shape) != (V,):
            raise ValueError(f"bias must have shape [V={V}], got {tuple(bias.shape)}")
        if bias.dtype != hidden.dtype:
            raise ValueError(f"bias dtype {bias.dtype} differs from hidden dtype {hidden.dtype}")
        if bias.device != hidden.device:
            raise ValueError(f"bias is on {bias.device} but hidden is on {hidden.device}")
    check_labels(labels, hidden.shape[:-1], V if vocab_size is None else vocab_size, ignore_index, hidden.device,
                 check_range=check_range)
    check_transform(temperature, softcap)


def check_logits_inputs(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, temperature: float,
                        softcap: float | None) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() < 1 or logits.shape[-1] == 0 or logits.numel() == 0:
        raise ValueError(f"logits must be a non-empty [..., V] tensor, got shape {tuple(logits.shape)}")
    if logits.dtype not in LOGITS_DTYPES:
        raise ValueError(f"logits dtype {logits.dtype} is not supported (float32, bfloat16, float16, float64)")
    check_labels(labels, logits.shape[:-1], logits.shape[-1], ignore_index, logits.device)
    check_transform(temperature, softcap)


def check_segment_ids(segment_ids: torch.Tensor, labels: torch.Tensor) -> None:
    _check_segment_tensor(segment_ids, labels, "labels")
    if bool((segment_ids < 0).any()):
        raise ValueError("segment_ids must be >= 0")


def _check_segment_tensor(segment_ids, labels, name):
    if not isinstance(segment_ids, torch.Tensor):
        raise TypeError(f"segment_ids must be a torch.Tensor, got {type(segment_ids).__name__}")
    if segment_ids.is_floating_point() or segment_ids.is_complex() or segment_ids.dtype == torch.bool:
        raise ValueError(f"segment_ids must be an integer tensor, got dtype {segment_ids.dtype}")
    if segment_ids.numel() != labels.numel():
        raise ValueError(f"segment_ids has {segment_ids.numel()} entries but {name} has {labels.numel()}; "
                         "packed rows need one segment id per token")
    if segment_ids.device != labels.device:
        raise ValueError(f"segment_ids is on {segment_ids.device} but {name} is on {labels.device}")


def check_packed_row(_input: torch.Tensor, target: torch.Tensor, name: str = "_input") -> None:
    """A fused loss's packed input (`name`: _input or ref_input): one row, [1, N, H] or [N, H], and target
    with its leading shape."""
    shape = getattr(_input, "shape", None)
    if not isinstance(_input, torch.Tensor) or _input.dim() not in (2, 3) or (_input.dim() == 3 and shape[0] != 1):
        raise ValueError(f"with segment_ids, {name} must be one packed row [1, N, H] (or [N, H]), got "
                         f"{tuple(shape) if shape is not None else type(_input).__name__}")
    if not isinstance(target, torch.Tensor) or tuple(target.shape) != tuple(shape[:-1]):
        raise ValueError(f"with segment_ids, target must have {name}'s leading shape {tuple(shape[:-1])} "
                         f"(one label per packed token), got {getattr(target, 'shape', type(target).__name__)}")


def packed_segments(segment_ids: torch.Tensor, target: torch.Tensor, ignore_index: int, n_seq: int,
                    *, paired: bool, sync: bool = True) -> tuple[torch.Tensor, int]:
    """The fused losses' packed (padding-free) layout: segment_ids names the sequence of each token of
    target (paired: chosen 0..B-1, then rejected B..2B-1). Only completion tokens' ids are read (prompt and
    padding may carry any id, -1 included); they must lie in [0, n_seq). n_seq comes from the caller (the
    length of host_counts, or of KTO's preference_labels), never from the ids: a trailing sequence with no
    completion token would make their largest + 1 too small. Returns (ids [N] int64 with every entry a
    valid index: ignored tokens' set to 0, n_seq). sync=False queues the range check on the device
    (torch._assert_async) instead of reading it back."""
    _check_segment_tensor(segment_ids, target, "target")
    if tuple(segment_ids.shape) != tuple(target.shape):
        raise ValueError(f"segment_ids has shape {tuple(segment_ids.shape)} but target has {tuple(target.shape)}: "
                         "one sequence id per packed token")
    keep = target.reshape(-1) != ignore_index
    seg = segment_ids.reshape(-1).long()
    what = "chosen/rejected pairs need an even, non-zero number" if paired else "there must be at least one"
    if n_seq == 0 or (paired and n_seq % 2):
        source = "host_counts" if paired else "preference_labels"
        raise ValueError(f"{source} names {n_seq} packed sequences: {what}")
    bad = keep & ((seg < 0) | (seg >= n_seq))
    layout = " (2B sequences: chosen 0..B-1, then rejected B..2B-1)" if paired else ""
    msg = f"segment_ids of completion tokens must lie in [0, {n_seq}){layout}"
    if not sync:
        torch._assert_async(~bad.any(), msg)
    elif bool(bad.any()):
        raise ValueError(f"{msg}; got {int(seg[bad][0])}")
    # Out-of-range ids (possible only while a queued check has not fired) are clamped, so that no kernel
    # reads out of bounds before it does.
    return torch.where(keep, seg, 0).clamp(0, n_seq - 1), n_seq


# ---------------------------------------------------------------------------------------- finiteness
# Off by default: NaN/inf then stays in exactly the rows and pairs it touches (no host sync is spent on
# looking). check_finite=True on an op, or RDPO_FAST_CHECK_FINITE=1, raises instead.
CHECK_FINITE_ENV = "RDPO_FAST_CHECK_FINITE"


class NonFiniteError(ValueError):
    """A NaN or inf in an input or the result of an op, with check_finite on; names the tensor."""


def check_finite_on(flag: bool | None) -> bool:
    if flag is not None:
        return bool(flag)
    return os.environ.get(CHECK_FINITE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def check_finite(op: str, *items, result: bool = False) -> None:
    """items: (name, tensor or None[, keep]) where keep is a bool mask of the tensor's leading dims
    (the rows that enter the result; others, e.g. ignored prompt rows, are not looked at). One host
    transfer when everything is finite; raises NonFiniteError naming the first tensor that is not."""
    checked = []
    for name, t, *keep in items:
        if t is None:
            continue
        bad, unit = ~torch.isfinite(t.detach()), "values"
        if keep and keep[0] is not None:
            if bad.dim() > keep[0].dim():
                bad = bad.flatten(keep[0].dim()).any(-1)
            bad, unit = bad & keep[0], "kept rows"
        checked.append((name, bad, unit))
    if not checked:
        return
    counts = torch.stack([b.sum() for _, b, _ in checked]).tolist()
    for (name, bad, unit), n in zip(checked, counts):
        if n:
            first = tuple(bad.nonzero()[0].tolist())
            where = f"{n} non-finite {unit}"
            hint = (" although every input is finite (an overflow: fp16 logits beyond 65504? use bf16 or fp32)"
                    if result else "")
            raise NonFiniteError(f"{op}: {name} holds NaN or inf ({where}, the first at index {first}){hint}")
