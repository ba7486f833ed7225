"""What the paired Liger drop-ins share: Liger's public attributes, read at every call as Liger's
modules read them (changing one after construction takes effect, and is validated, at the next
forward), and the length-averaged log-probs Liger reports for its averaging losses."""
from __future__ import annotations

import torch

from .fused import FusedLinearPreferenceLoss


class LigerDropIn(torch.nn.Module):
    # Liger's constructor keywords in order, then ours (performance settings with no effect on results).
    LIGER_ARGS: tuple = ()
    EXTRA_ARGS = ("workspace_budget", "dw_accumulation")

    def _setup(self, values):
        for name, value in values.items():
            setattr(self, name, value)
        self._key = None
        self._loss = None
        self._inner()  # a bad setting fails at construction, as FusedLinearPreferenceLoss does

    def _inner(self) -> FusedLinearPreferenceLoss:
        key = tuple(getattr(self, n) for n in self.LIGER_ARGS + self.EXTRA_ARGS)
        if key != self._key:
            self._loss = FusedLinearPreferenceLoss(**self.settings())
            self._key = key
        return self._loss

    def settings(self) -> dict:
        """FusedLinearPreferenceLoss's keywords for the current attributes."""
        raise NotImplementedError


def check_nll_target(nll_target: torch.Tensor | None, target: torch.Tensor, ignore_index: int) -> None:
    """Liger's nll_target (other labels for the NLL term) is honoured only when it names the same chosen
    tokens as target: the fused pass scores one label per row."""
    if nll_target is None:
        return
    B = target.shape[0] // 2
    if (not isinstance(nll_target, torch.Tensor) or nll_target.shape[1:] != target.shape[1:]
            or nll_target.shape[0] < B or not torch.equal(nll_target[:B], target[:B])):
        raise ValueError("nll_target that differs from target on the chosen rows is not supported (the fused "
                         "pass scores one label per row); pass nll_target=None to take the NLL on target")


def averaged(logps: torch.Tensor, target: torch.Tensor, ignore_index: int, rows: slice) -> torch.Tensor:
    """Sequence sums -> Liger's length-averaged log-probs (rows: which half of the batch)."""
    counts = (target[rows] != ignore_index).sum(1)
    return logps / counts.to(logps.dtype)
