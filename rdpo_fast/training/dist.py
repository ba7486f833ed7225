"""How this process joins the others under torchrun: its rank, world size and device, the process
group (NCCL on CUDA, gloo on CPU), the sums across ranks, and DDP or FSDP2 around the training module.
A plain `python` run is a world of one and none of this costs anything.

Under tensor parallelism (--tp N, N = the number of processes) the ranks hold shards of one model
(transformers' tp_plan="auto") and all see the same pairs: there is one data-parallel replica, so the
data's rank and world are 0 and 1, the sums of per-pair statistics are this rank's own (`data_sum`),
and only a stop vote needs every rank (`any_rank`)."""
from __future__ import annotations

import contextlib
import inspect
import os

import torch

from rdpo_fast.models import loading as modeling

STRATEGIES = ("ddp", "fsdp")  # --distributed: what wrap() puts around the training module


class Dist:
    """Rank, world size and device of this process; torch.distributed is set up under torchrun."""

    def __init__(self, tp: int = 1):
        import torch.distributed as dist

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if tp > 1 and tp != self.world:
            raise ValueError(f"--tp {tp} needs exactly {tp} processes (torchrun --nproc_per_node {tp}); this run has "
                             f"{self.world}. Data parallelism across tensor-parallel groups is not supported yet")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        self.device = torch.device(f"cuda:{local}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        self.started = False
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
            self.started = True
        self.dist = dist if self.world > 1 else None
        self.tp = tp
        # The data-parallel layout: each replica (a tensor-parallel group of ranks) takes its own pairs.
        self.data_world = self.world // tp
        self.data_rank = self.rank // tp

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over ranks (on this process's device when there are several)."""
        if self.dist is not None:
            t = t.to(self.device)
            self.dist.all_reduce(t)
        return t

    def broadcast(self, obj: object) -> object:
        """Rank 0's `obj` (picklable) on every rank."""
        if self.dist is None:
            return obj
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def data_sum(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over the data-parallel replicas (under --tp there is one: `t` itself)."""
        return self.all_sum(t) if self.data_world > 1 else t

    def any_rank(self, flag: bool) -> bool:
        """Whether `flag` holds on some rank (every rank must call it)."""
        return bool(int(self.all_sum(torch.tensor([int(flag)], dtype=torch.int64))[0]))

    def barrier(self) -> None:
        if self.dist is not None:
            self.dist.barrier()

    def close(self) -> None:
        """Ends the process group this object started (one that was already there is left alone)."""
        if self.started:
            self.dist.destroy_process_group()

    def wrap(self, module: torch.nn.Module, strategy: str) -> torch.nn.Module:
        """DDP or FSDP2 (every decoder layer, then the whole) around `module`, whose `.model` is the
        causal LM, under torchrun; the module itself in a world of one and under --tp (the model is sharded
        already, and every rank computes the same step)."""
        if self.world == 1 or self.tp > 1:
            return module
        if strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            # Buffers (rotary tables) are never trained: no need to sync them every forward.
            params = inspect.signature(DDP).parameters
            no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in params
                       else {"broadcast_buffers": False})
            return DDP(module, device_ids=[self.device.index] if self.device.type == "cuda" else None, **no_sync)
        from torch.distributed.fsdp import fully_shard

        for layer in modeling.decoder_layers(module.model):
            fully_shard(layer)
        fully_shard(module)
        return module

    def grad_sync(self, wrapped: torch.nn.Module, strategy: str, enabled: bool) -> contextlib.AbstractContextManager:
        """A context for one micro-batch's backward: gradients are all-reduced only when `enabled` (the
        last micro-batch of an optimizer step)."""
        if self.world == 1 or self.tp > 1:
            return contextlib.nullcontext()
        if strategy == "ddp":
            return contextlib.nullcontext() if enabled else wrapped.no_sync()
        wrapped.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()
