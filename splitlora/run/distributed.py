"""Data-parallel runs on PyTorch's own engine (``torchrun --nproc_per_node N main.py ...``).

Training uses DistributedDataParallel with a DistributedSampler (the global batch size is the
configured one, split over the processes). Evaluation and the covariance pass read disjoint,
unpadded shards, so the all-reduced counts and covariance sums cover every sample exactly
once: they equal the single-process ones. Only rank 0 writes to the run directory.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterator, Sized

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from .errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op for one process)."""
    world = launched_world_size()
    if world <= 1:
        return DistInfo()
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch(global_batch: int, info: DistInfo, key: str) -> int:
    """The global batch split over the processes (it must divide evenly)."""
    if global_batch % info.world_size:
        raise ConfigError(f"config key '{key}' = {global_batch} is not divisible by the "
                          f"{info.world_size} processes of this run; pick a multiple")
    return global_batch // info.world_size


def all_reduce_counts(correct: int, total: int, device: torch.device) -> tuple[int, int]:
    """Sum evaluation counts over the processes."""
    if not (dist.is_available() and dist.is_initialized()):
        return correct, total
    t = torch.tensor([correct, total], dtype=torch.long, device=device)
    dist.all_reduce(t)
    return int(t[0]), int(t[1])


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, ... of a dataset: disjoint, unpadded, in order."""

    def __init__(self, data: Sized, info: DistInfo) -> None:
        self.n = len(data)
        self.info = info

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.info.rank, self.n, self.info.world_size))

    def __len__(self) -> int:
        return len(range(self.info.rank, self.n, self.info.world_size))
