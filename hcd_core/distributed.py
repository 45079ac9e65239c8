"""Data parallelism with torch.distributed: the process group of a run and the few collectives the
trainer needs beyond DDP's own gradient all-reduce.

A run is data-parallel when it is started by `torch.distributed.run` (torchrun) or any launcher that
sets torch's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT): `join_group`
then joins the group, NCCL on CUDA and gloo on the CPU, and every rank trains on its part of each
global batch. Control traffic (the stop flag, RNG states, metric sums) goes over a second, gloo
group so that it never waits on the GPU's stream.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor

from hcd_core.data import Shard

# How long a collective may wait for a rank before the run fails (a rank that died, a hung GPU).
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class Dist:
    """This process' place in the run; `world == 1` is a plain single-process run (no group)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    control: Any = None  # the gloo group for host-side collectives

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.world)

    def mean_async(self, values: Tensor) -> tuple[Tensor, Any]:
        """Start the all-ranks mean of `values` (on the training device); (result, handle to wait on)."""
        if not self.active:
            return values, None
        out = values / self.world
        return out, dist.all_reduce(out, async_op=True)

    def sum_host(self, values: Tensor) -> Tensor:
        """All-ranks sum of a host tensor (float64), over the control group."""
        if self.active:
            dist.all_reduce(values, group=self.control)
        return values

    def any(self, flag: bool) -> bool:
        """True on every rank when any rank says True (the stop decision)."""
        if not self.active:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return bool(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, on rank 0 (others get [])."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world if self.is_main else []
        dist.gather_object(obj, out if self.is_main else None, dst=0, group=self.control)
        return out

    def broadcast_state(self, module: nn.Module) -> None:
        """Make every rank's floating-point state of `module` rank 0's (BN statistics drift apart
        in the forward passes after DDP's own broadcast at each step's start)."""
        if not self.active:
            return
        for value in module.state_dict().values():
            if value.dtype.is_floating_point:
                dist.broadcast(value, src=0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier(group=self.control)


def join_group(device_type: str) -> Dist:
    """Join the run's process group when the environment describes one (else a single process)."""
    world = world_size_from_env()
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    control = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT)
    return Dist(rank=rank, world=world, local_rank=local_rank, control=control)


def leave_group(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()
