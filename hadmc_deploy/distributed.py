"""torchrun support for recovery: process-group setup, per-rank sample order, buffer sync.

`recover` calls `init_distributed` first: when RANK/WORLD_SIZE say torchrun
started several processes it opens the process group (gloo on CPU, NCCL on
GPU) and `recover` wraps the student in DDP; otherwise everything here is a
no-op on one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_distributed() -> bool:
    """True when started by torchrun (or torch.distributed.run) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_pref: str) -> tuple[DistInfo, torch.device]:
    if not launched_distributed() and not (dist.is_available() and dist.is_initialized()):
        use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
        return DistInfo(), torch.device("cuda" if use_cuda else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_pref != "cpu" and torch.cuda.is_available()
    created = False
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        created = True
    info = DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, created_group=created)
    return info, torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")


def epoch_order(n: int, epoch: int, seed: int, info: DistInfo) -> list[int]:
    if info.distributed:
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(range(n), num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return list(iter(sampler))
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    return torch.randperm(n, generator=gen).tolist()


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BN running stats) to every rank. DDP broadcasts them at the
    start of each forward, so the last step's update on the other ranks would otherwise linger."""
    for buf in model.buffers():
        dist.broadcast(buf, src=0)
