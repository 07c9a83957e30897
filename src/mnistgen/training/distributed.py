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
    """After a successful run: wait for every rank, then leave the group."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def abort() -> None:
    """After an error on this rank: leave at once. A barrier here would hang, since the other ranks
    wait for this one inside a collective; torchrun stops them when this process exits non-zero."""
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - already failing; the original error is what matters
            pass


def lost_a_peer(error: BaseException) -> bool:
    """True for the error gloo raises in a collective when another process of the job has gone away."""
    return any(s in str(error) for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))


def record_for_torchrun(error: BaseException) -> None:
    """Leave the traceback where torchrun looks for it (TORCHELASTIC_ERROR_FILE): its summary of the
    failed job then shows the root cause in full, while mnistgen prints one line."""
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(error)


def rank() -> int:
    """This process's rank (0 outside torchrun), known before the process group is joined."""
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0
