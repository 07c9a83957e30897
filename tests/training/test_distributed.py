"""Two CPU processes with gloo take the same optimizer step as one process on the same global batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mnistgen.config import apply_overrides, preset
from mnistgen.data.mnist import TensorData
from mnistgen import kinds
from mnistgen.runs import build_trainer

PER_RANK_BATCH = 16


def _cfg(batch_size):
    # The classifier with dropout off: a deterministic objective, so one DDP step must equal one big step.
    return apply_overrides(preset("classifier", "smoke"), {
        "train.batch_size": batch_size, "train.epochs": 1, "train.warmup_steps": 0, "model.dropout": 0.0})


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2 * PER_RANK_BATCH, 1, 28, 28, generator=g)
    return TensorData(x, torch.randint(0, 10, (2 * PER_RANK_BATCH,), generator=g))


def _one_step(cfg, out):
    data = _data()
    trainer = build_trainer(cfg, out, data=(data, TensorData(data.x[:4], data.y[:4])), preview=False)
    trainer.fit()
    assert trainer.step == 1
    return trainer.model.state_dict()


def _worker(rank, world, tmp):
    os.environ.update(MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    try:
        state = _one_step(_cfg(PER_RANK_BATCH), os.path.join(tmp, f"rank{rank}"))
        torch.save(state, os.path.join(tmp, f"weights{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_step_equals_single_process_step(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    single = _one_step(_cfg(2 * PER_RANK_BATCH), tmp_path / "single")
    ranks = [torch.load(tmp_path / f"weights{r}.pt", weights_only=True) for r in range(2)]
    torch.manual_seed(0)
    initial = kinds.get("classifier").build_model(_cfg(PER_RANK_BATCH)).state_dict()
    moved = 0
    for name, value in single.items():
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(ranks[1][name], ranks[0][name], rtol=0, atol=0, msg=name)
        moved += not torch.equal(value, initial[name])
    assert moved == len(single)  # the step changed every tensor
    assert (tmp_path / "rank0" / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "rank1").exists()  # rank 1 wrote nothing
