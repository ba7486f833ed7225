"""The chunk schedule's host-side helpers, shared by the per-token ops and the fused losses: the logits
workspace budget and the chunk / vocabulary-slice sizes it allows, the dropping of ignored rows, the
plan of chunks of whole pairs, and the GEMMs every chunk runs (logits into the workspace; products
added into an fp32 accumulator, or, for the one-pass epilogue's dX, row-scaled in fp32). Plans are made
from host ints: none of these reads the device."""
from __future__ import annotations

import os

import torch

from .epilogue import torch_workspace_factor

DEFAULT_WORKSPACE_BYTES = 512 * 2**20
# The narrowest vocabulary slice backward recomputes: narrower GEMMs waste the tensor cores' tiles.
MIN_SLICE_COLS = 128


def workspace_bytes() -> int:
    """The logits workspace budget: RDPO_FAST_WORKSPACE_MB in the environment, else 512 MiB."""
    mb = os.environ.get("RDPO_FAST_WORKSPACE_MB")
    return DEFAULT_WORKSPACE_BYTES if mb is None else int(float(mb) * 2**20)


def chunk_rows(n_rows: int, V: int, like: torch.Tensor, budget: int | None) -> int:
    """Rows of logits per chunk within the budget (None: workspace_bytes()); a multiple of 128 when that
    large, so the GEMM's row tiles are all full."""
    budget = workspace_bytes() if budget is None else budget
    rows = max(1, budget // (V * torch_workspace_factor(like)))
    if rows > 256:
        rows -= rows % 128
    return min(n_rows, rows)


def vocab_slice_cols(n_rows: int, V: int, like: torch.Tensor, budget: int | None) -> int:
    """Vocabulary columns per slice when all n_rows rows are recomputed at once within the budget (at
    least MIN_SLICE_COLS, or V when smaller)."""
    budget = workspace_bytes() if budget is None else budget
    return max(min(V, MIN_SLICE_COLS), min(V, budget // (max(n_rows, 1) * torch_workspace_factor(like))))


def chunks_of_pairs(rows_per_pair: list[int], max_rows: int) -> list[tuple[int, int, int, int]]:
    """[(first pair, end pair, first row, end row)], each chunk whole pairs and at most max_rows rows
    (a single pair longer than max_rows gets a chunk of its own). A "pair" is whatever must share a
    chunk: a chosen/rejected pair for the paired losses, one sequence for KTO."""
    bounds = []
    p0 = r0 = r = 0
    for p, n in enumerate(rows_per_pair):
        if r + n - r0 > max_rows and p > p0:
            bounds.append((p0, p, r0, r))
            p0, r0 = p, r
        r += n
    bounds.append((p0, len(rows_per_pair), r0, r))
    return bounds


def kept_rows(labels: torch.Tensor, ignore_index: int, n_kept: int | None = None) -> torch.Tensor:
    """Flat indices of the rows whose label is not ignore_index, in order. n_kept: their number when the
    caller knows it on the host; the rows then come from a stable sort (no nonzero, which waits for the
    device to learn its output size)."""
    lab = labels.reshape(-1)
    if n_kept is None:
        return (lab != ignore_index).nonzero().squeeze(1)
    return torch.sort((lab == ignore_index).to(torch.uint8), stable=True).indices[:n_kept]


def compact(hidden: torch.Tensor, labels: torch.Tensor, ignore_index: int, n_kept: int | None = None,
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row compaction: (hidden as [rows, H], the kept rows' flat indices, their hidden states, their
    labels). Prompt and pad rows then cost no GEMM (SPEC section 6)."""
    h2 = hidden.reshape(-1, hidden.shape[-1])
    rows = kept_rows(labels, ignore_index, n_kept)
    return h2, rows, h2.index_select(0, rows), labels.reshape(-1).index_select(0, rows)


def logits_into(out: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """out = h @ weight^T (+ bias): the logits GEMM, straight into a workspace slice."""
    if bias is None:
        torch.mm(h, weight.t(), out=out)
    else:
        torch.addmm(bias, h, weight.t(), out=out)
    return out


def accumulate_mm(acc32: torch.Tensor, a: torch.Tensor, b: torch.Tensor, first: bool = False) -> None:
    """acc32 += a @ b (acc32 = a @ b when first: acc32 may then hold garbage, it is not read) with an
    fp32 accumulator whatever a and b's dtype."""
    beta = 0.0 if first else 1.0
    if a.dtype == torch.float32:
        acc32.addmm_(a, b, beta=beta)
    elif a.is_cuda:
        # cuBLAS adds into the fp32 accumulator inside its epilogue: no rounding of partial sums.
        torch.addmm(acc32, a, b, beta=beta, out_dtype=torch.float32, out=acc32)
    elif first:
        acc32.copy_(torch.mm(a, b))
    else:
        acc32 += torch.mm(a, b).float()


def row_scaled_mm(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """diag(scale) (a @ b) as a fresh tensor of out_dtype: the product accumulated in fp32 (see
    accumulate_mm), each row scaled (scale: [rows] fp32) in the same pass that rounds it once to out_dtype.
    The one-pass schedule's dX: dZ = diag(g) S is never formed, g scales the rows of S W."""
    acc = torch.empty(a.shape[0], b.shape[1], device=a.device, dtype=torch.float32)
    accumulate_mm(acc, a, b, first=True)
    if out_dtype == torch.float32:
        return acc.mul_(scale[:, None])
    return torch.mul(acc, scale[:, None], out=torch.empty_like(acc, dtype=out_dtype))
