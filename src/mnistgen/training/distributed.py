"""Data-parallel training under ``torchrun``: process-group set-up and tear-down.

``torchrun --nproc_per_node=K -m mnistgen train ...`` sets WORLD_SIZE, RANK and LOCAL_RANK;
each process then trains on its shard of the in-memory data set with
DistributedDataParallel (nccl on CUDA, gloo on CPU), and only rank 0 writes files.
``train.batch_size`` is per process: the effective batch is batch_size x K.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> torch.device:
    """Join the process group when launched by torchrun; returns this process's device."""
    if not launched_by_torchrun() or dist.is_initialized():
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return torch.device("cuda", local)
    dist.init_process_group("gloo")
    return device


def teardown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0
