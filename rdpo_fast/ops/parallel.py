"""Vocabulary- and sequence-parallel execution of the fused ops (SPEC section 9): the layouts they read,
the collectives they make, and the maths that combines per-rank partial statistics exactly.

Vocabulary-parallel (a tensor-parallel lm_head, as Megatron and transformers' tp_plan shard it): each
rank of a process group holds the weight rows [vocab_start, vocab_start + V_r), either as a DTensor
sharded Shard(0) over one dimension of its DeviceMesh or as a plain tensor given with process_group=
and vocab_start=; the hidden states and labels are replicated over the group. Per chunk of rows each
rank computes its slice's logits and, per row, k = 3 fp32 statistics (4 for WPO), see
ops.epilogue.vocab_partials; ONE all-gather of those k x rows floats per chunk, combined in rank order
on every rank (so that every rank holds bit-identical results), gives
    lse = logsumexp over ranks of lse_r            log p(label) = sum_r target_r - lse
    logit sum = sum_r logit_sum_r                  log sum p^2  = logsumexp_r(lse2_r) - 2 lse
(target_r is 0 on every rank but the label's owner, so its sum is exact). dZ = g (onehot - softmax) on
a slice needs only the global lse, so dW and d bias stay local; dX = sum_r dZ_r W_r is summed by one
all-reduce of the [rows, H] fp32 gradient at the end of a pass. No rank holds the whole weight or the
whole logits.

Sequence-parallel (context parallel: torch's context_parallel, ring attention, Ulysses): each rank of
sequence_parallel_group holds some of every sequence's tokens. Per-sequence sums (log-probs, token
counts, logit sums, WPO sums) are summed over that group before anything non-linear reads them, again
by an all-gather summed in rank order, so every rank computes the whole batch's loss, counted once.
Each rank's gradients are then its own tokens' share: the dX of its tokens exactly, and a part of dW
that the data-parallel reduction over these ranks must SUM (not average).

Setup: one all-gather of 5 ints per sharded weight and call (group_layout) checks that the ranks'
slices tile [0, V) and that they hold the same labels; a DTensor's own layout is read from its metadata.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .epilogue import PART_LOGIT, PART_LSE, PART_LSE2, PART_TARGET, store_row_stats, vocab_partials

if TYPE_CHECKING:  # annotations only: a torch build without distributed support has no ProcessGroup
    from torch.distributed import ProcessGroup


def _dist():
    import torch.distributed as dist

    return dist


def is_dtensor(t: object) -> bool:
    """Whether t is a torch.distributed DTensor (checked without importing DTensor for plain tensors)."""
    if not (isinstance(t, torch.Tensor) and hasattr(t, "placements") and hasattr(t, "device_mesh")):
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local_replica(t, name: str):
    """A DTensor replicated over every dimension of its mesh -> its local tensor, through to_local's
    autograd (a gradient then arrives as a Replicate DTensor); anything else is returned as it is."""
    if not is_dtensor(t):
        return t
    if not all(p.is_replicate() for p in t.placements):
        raise ValueError(f"{name} is a DTensor with placements {tuple(t.placements)}: the fused ops read it "
                         "replicated (Replicate() on every mesh dimension). Give sequence-sharded tokens as the "
                         "rank's plain local tensor with sequence_parallel_group=")
    return t.to_local()


def _group_size(group) -> int:
    return _dist().get_world_size(group)


def sequence_group(group):
    """The sequence-parallel group as given (None, or one rank: no reduction to make)."""
    if group is None:
        return None
    dist = _dist()
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"sequence_parallel_group must be a torch.distributed ProcessGroup, got {type(group).__name__}")
    return None if _group_size(group) == 1 else group


def all_gather_stacked(t: torch.Tensor, group) -> torch.Tensor:
    """[world, *t.shape]: every rank's t, in the group's rank order."""
    world = _group_size(group)
    # Gathered flat (the concatenated form every backend takes; gloo refuses the stacked one).
    out = t.new_empty(world * t.numel())
    _dist().all_gather_single(out, t.contiguous().view(-1), group=group)
    return out.view(world, *t.shape)


def group_sum(t: torch.Tensor, group) -> torch.Tensor:
    """The sum of t over the group, added in rank order on every rank: unlike an all-reduce, whose
    reduction order is the backend's, every rank gets the same bits."""
    return all_gather_stacked(t, group).sum(0)


def gather_ints(values: list[int], group, device: torch.device) -> list[list[int]]:
    """Every rank's list of host ints (all of the same length), in rank order: one small all-gather."""
    return all_gather_stacked(torch.tensor(values, dtype=torch.int64, device=device), group).tolist()


def combine_partials(gathered: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(lse, label logit, logit sum, log sum p^2 or None), each [M] fp32, from every rank's
    vocab_partials stacked [world, k, M]. A rank with an empty slice contributes lse_r = -inf."""
    lse = torch.logsumexp(gathered[:, PART_LSE], dim=0)
    target = gathered[:, PART_TARGET].sum(0)
    logit = gathered[:, PART_LOGIT].sum(0)
    sq = None
    if gathered.shape[1] > PART_LSE2:
        sq = torch.logsumexp(gathered[:, PART_LSE2], dim=0) - 2.0 * lse
    return lse, target, logit, sq


@dataclass(frozen=True)
class VocabShard:
    """This rank's slice of a vocabulary-parallel lm_head: tokens [vocab_start, vocab_start + local_size)
    of vocab_size, over group (world ranks). plan_size: the largest slice of any rank; chunk plans are
    made with it so that every rank cuts the same chunks and makes the same collectives."""
    group: object
    world: int
    vocab_start: int
    local_size: int
    vocab_size: int
    plan_size: int

    def forward_epilogue(self, z: torch.Tensor, labels: torch.Tensor, *, seq_ids: torch.Tensor | None = None,
                         seq_logp: torch.Tensor | None = None, seq_logit: torch.Tensor | None = None,
                         log_sum_sq: torch.Tensor | None = None, seq_sq: torch.Tensor | None = None,
                         temperature: float = 1.0, softcap: float | None = None,
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """ops.epilogue.forward_epilogue over the whole vocabulary, from this rank's slice z of the
        logits: the same outputs and accumulations, with one all-gather of [k, M] fp32 values."""
        M = labels.numel()
        with_sq = log_sum_sq is not None or seq_sq is not None
        if M == 0:
            # Every rank of the group holds these same rows, so all of them skip the collective.
            empty = torch.empty(0, device=z.device, dtype=torch.float32)
            return empty, empty
        part = vocab_partials(z, labels, v_offset=self.vocab_start, temperature=temperature, softcap=softcap,
                              with_sq=with_sq)
        lse, target, logit, sq = combine_partials(all_gather_stacked(part, self.group))
        logp = target - lse
        store_row_stats(logp, logit, sq, seq_ids=seq_ids, seq_logp=seq_logp, seq_logit=seq_logit,
                        log_sum_sq=log_sum_sq, seq_sq=seq_sq)
        return lse, logp

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """t summed over the group in place (dX: each rank's dZ_r W_r), one all-reduce."""
        _dist().all_reduce(t, group=self.group)
        return t


def _labels_digest(labels) -> tuple[int, int]:
    """(numel, a position-weighted sum) of labels, to tell whether the ranks were given the same ones."""
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex():
        return -1, 0
    flat = labels.reshape(-1).long()
    weights = torch.arange(flat.numel(), device=flat.device) % 65521 + 1
    return flat.numel(), int((flat * weights).sum())


def _dtensor_layout(weight, bias, name):
    """(local weight, local bias, group, vocab_start, vocab_size) of a DTensor weight sharded Shard(0)
    over one mesh dimension; vocab_start None when it is replicated (nothing to combine)."""
    placements = tuple(weight.placements)
    dims = [d for d, p in enumerate(placements) if p.is_shard(0)]
    others = [p for d, p in enumerate(placements) if d not in dims and not p.is_replicate()]
    if len(dims) > 1 or others:
        raise ValueError(f"{name} is a DTensor with placements {placements}: the fused ops read a vocabulary "
                         "sharded Shard(0) over one mesh dimension (the tensor-parallel one) and replicated over "
                         "the others")
    if bias is not None and is_dtensor(bias):
        if tuple(bias.placements) != placements or bias.device_mesh != weight.device_mesh:
            raise ValueError(f"bias is a DTensor with placements {tuple(bias.placements)}, {name} with "
                             f"{placements}: they must be sharded alike")
        bias = bias.to_local()
    local = weight.to_local()
    if not dims:
        return local, bias, None, None, weight.shape[0]
    mesh, d = weight.device_mesh, dims[0]
    V, n = weight.shape[0], mesh.size(d)
    # DTensor's Shard(0) splits as torch.chunk does: ceil(V / n) rows a rank, the last ranks short or empty.
    step = math.ceil(V / n)
    start = min(V, mesh.get_coordinate()[d] * step)
    if local.shape[0] != min(V, start + step) - start:
        raise ValueError(f"{name}'s local shard has {local.shape[0]} rows where an even Shard(0) split of "
                         f"{V} over {n} ranks gives {min(V, start + step) - start}: an uneven layout; pass the "
                         "local tensor with process_group= and vocab_start= instead")
    return local, bias, mesh.get_group(d), start, V


def vocab_shard(weight, bias=None, *, process_group: ProcessGroup | None = None, vocab_start: int | None = None,
                labels=None, name: str = "weight") -> tuple[torch.Tensor, torch.Tensor | None, VocabShard | None]:
    """(local weight, local bias, this rank's VocabShard, or None for a whole weight). weight: a DTensor
    (Shard(0) over one mesh dimension: vocabulary-parallel; replicated: whole), or a plain tensor, which
    is this rank's slice starting at token vocab_start when process_group is given, else the whole
    weight. labels: this call's labels, which every rank of the group must hold alike (checked).
    A sharded weight costs one all-gather of 5 ints, made by every rank of the group."""
    dist_weight = is_dtensor(weight)
    if dist_weight:
        if process_group is not None or vocab_start is not None:
            raise ValueError(f"{name} is a DTensor, which carries its own layout: give either a DTensor or a "
                             "plain local tensor with process_group= and vocab_start=, not both")
        weight, bias, group, start, claimed = _dtensor_layout(weight, bias, name)
        if group is None:
            return weight, bias, None
    elif process_group is None:
        if vocab_start is not None:
            raise ValueError("vocab_start is the offset of this rank's slice in a process_group: give "
                             "process_group= too, or leave vocab_start out for a whole weight")
        return weight, bias, None
    else:
        if not isinstance(process_group, _dist().ProcessGroup):
            raise TypeError(f"process_group must be a torch.distributed ProcessGroup, got "
                            f"{type(process_group).__name__}")
        if isinstance(vocab_start, bool) or not isinstance(vocab_start, int) or vocab_start < 0:
            raise ValueError(f"a {name} sharded over process_group needs vocab_start=, the first token id of "
                             f"this rank's slice (an int >= 0), got {vocab_start!r}")
        if is_dtensor(bias):
            raise ValueError(f"bias is a DTensor but {name} is a plain local tensor: give this rank's bias slice")
        group, start, claimed = process_group, vocab_start, -1
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"{name} must have shape [V, H], got {getattr(weight, 'shape', type(weight).__name__)}")
    local_size = weight.shape[0]
    n, digest = _labels_digest(labels)
    rows = gather_ints([start, local_size, claimed, n, digest], group, weight.device)
    shard = _agree(rows, _dist().get_rank(group), group, name)
    # A group of one rank holds the whole vocabulary: the single-process path, exactly.
    return weight, bias, None if shard.world == 1 else shard


def _agree(rows: list[list[int]], me: int, group, name: str) -> VocabShard:
    """The VocabShard every rank agrees on, from every rank's [start, size, claimed V, labels numel,
    labels digest]; ValueError (on every rank alike) when the slices do not tile [0, V) or the labels
    differ."""
    slices = sorted((r[0], r[0] + r[1], rank) for rank, r in enumerate(rows))
    V = slices[-1][1]
    pos = 0
    for s, e, _rank in slices:
        if s != pos:
            shown = ", ".join(f"rank {k}: [{a}, {b})" for a, b, k in sorted(slices, key=lambda t: t[2]))
            what = f"a gap at tokens [{pos}, {s})" if s > pos else f"an overlap at tokens [{s}, {pos})"
            raise ValueError(f"vocab_start={rows[me][0]} on rank {me}: the ranks' {name} slices ({shown}) leave "
                             f"{what}; each rank's vocab_start must be where the previous slice ends, so that "
                             "together they cover the vocabulary once")
        pos = e
    if any(r[2] not in (-1, V) for r in rows):
        raise ValueError(f"{name}: the ranks' DTensor shapes disagree on the vocabulary size")
    if len({(r[3], r[4]) for r in rows}) > 1:
        raise ValueError(f"the ranks of {name}'s tensor-parallel group hold different labels: a vocabulary-"
                         "parallel op needs the same tokens on every rank of the group (its hidden states and "
                         "labels replicated). A weight sharded over data-parallel ranks (FSDP) must be gathered "
                         "first")
    return VocabShard(group=group, world=len(rows), vocab_start=rows[me][0], local_size=rows[me][1],
                      vocab_size=V, plan_size=max(r[1] for r in rows))


__all__ = ["VocabShard", "all_gather_stacked", "combine_partials", "gather_ints", "group_sum", "is_dtensor",
           "local_replica", "sequence_group", "vocab_shard"]
