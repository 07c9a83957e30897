"""One training loop for every model: EMA, mixed precision, checkpoints, resume, history, previews.

The trainer is handed what it needs (a model, an objective, device-resident data and a
preview function) and builds none of it. Everything random in a step comes from one
``torch.Generator`` whose state is checkpointed, and each epoch's shuffle is derived
from (seed, epoch), so a resumed run ends with the same weights as an uninterrupted one.
Under ``torchrun`` each rank trains on its shard with DistributedDataParallel and only
rank 0 writes.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from typing import Callable, NamedTuple, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from mnistgen.config import RunConfig, TrainConfig
from mnistgen.data.mnist import TensorData
from mnistgen.training.ema import EMA
from mnistgen.training.checkpoint import load_checkpoint, save_checkpoint, write_json
from mnistgen.training.rundir import RunDir


class Objective(Protocol):
    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean loss over the batch, a scalar tensor."""


class Preview(NamedTuple):
    """The per-epoch sample grid: ``draw(model)`` gives images in [0, 1], (N, 1, H, W), laid out ``nrow`` per row."""

    draw: Callable[[nn.Module], torch.Tensor]
    nrow: int


class NonFiniteLossError(RuntimeError):
    pass


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 1-based
    step: int  # optimizer steps so far
    train_loss: float
    val_loss: float
    lr: float
    seconds: float
    images_per_s: float


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """LR multiplier at optimizer step ``s``: linear warm-up, then constant, step decay or cosine to 0."""
    total = cfg.epochs * steps_per_epoch

    def factor(s: int) -> float:
        warm = min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        if cfg.lr_schedule == "step":
            return warm * cfg.lr_gamma ** (s // (cfg.lr_step_epochs * steps_per_epoch))
        if cfg.lr_schedule == "cosine":
            progress = min(1.0, max(0.0, (s - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)))
            return warm * 0.5 * (1 + math.cos(math.pi * progress))
        return warm

    return factor


def _amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    def __init__(self, model: nn.Module, objective: Objective, train_data: TensorData, val_data: TensorData,
                 cfg: RunConfig, run: RunDir, preview: Preview | None = None, show_progress: bool = True):
        self.cfg, self.tc = cfg, cfg.train
        self.run, self.objective, self.preview = run, objective, preview
        self.train_data, self.val_data = train_data, val_data
        self.device = train_data.x.device
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.show_progress = show_progress and self.rank == 0
        self.memory_format = torch.channels_last if self.tc.channels_last else torch.contiguous_format
        self.model = model.to(memory_format=self.memory_format)
        net = DistributedDataParallel(model) if self.world > 1 else model
        self.net = torch.compile(net) if self.tc.compile else net  # what the objective calls
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.tc.lr, weight_decay=self.tc.weight_decay,
                                          fused=self.device.type in ("cpu", "cuda"))  # one kernel for all tensors
        self.steps_per_epoch = math.ceil(len(train_data) // self.world / self.tc.batch_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(self.tc, self.steps_per_epoch))
        self.amp_dtype = _amp_dtype(self.device, self.tc.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.ema = EMA(model, self.tc.ema_decay, self.tc.ema_warmup_power) if self.tc.ema_decay > 0 else None
        self.generator = torch.Generator(self.device).manual_seed(self.tc.seed * 1000 + self.rank)
        self.step = 0
        self.epoch = 0  # completed epochs
        self.batch = 0  # batches done in the current epoch
        self.epoch_loss = torch.zeros((), device=self.device, dtype=torch.float64)
        self.epoch_count = 0
        self.epoch_seconds = 0.0
        self.history: list[EpochRecord] = []

    # -- state --------------------------------------------------------------------------
    @property
    def sampling_model(self) -> nn.Module:
        """The EMA weights once EMA has started, else the raw weights."""
        if self.ema is not None and self.step > self.tc.ema_start:
            return self.ema.module
        return self.model

    def state_dict(self) -> dict:
        return {
            "config": self.cfg.to_dict(), "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "generator": self.generator.get_state(), "rng": _rng_state(),
            "step": self.step, "epoch": self.epoch, "batch": self.batch,
            "epoch_loss": self.epoch_loss.item(), "epoch_count": self.epoch_count,
            "epoch_seconds": self.epoch_seconds, "history": [asdict(r) for r in self.history],
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        _set_rng_state(state["rng"])
        self.step, self.epoch, self.batch = state["step"], state["epoch"], state["batch"]
        self.epoch_loss.fill_(state["epoch_loss"])
        self.epoch_count, self.epoch_seconds = state["epoch_count"], state["epoch_seconds"]
        self.history = [EpochRecord(**r) for r in state["history"]]

    def resume(self) -> bool:
        """Load ``last.pt`` if the run has one; True when something was loaded."""
        if not self.run.last_checkpoint.is_file():
            return False
        self.load_state_dict(load_checkpoint(self.run.last_checkpoint, self.cfg.kind, self.device))
        return True

    def save(self, epoch_file: bool) -> None:
        if self.rank != 0:
            return
        state = self.state_dict()
        if epoch_file:
            save_checkpoint(self.run.epoch_checkpoint(self.epoch), state)
        save_checkpoint(self.run.last_checkpoint, state)

    # -- loop ---------------------------------------------------------------------------
    def _batches(self) -> list[torch.Tensor]:
        """This rank's index batches for the current epoch, shuffled by (seed, epoch)."""
        g = torch.Generator().manual_seed(self.tc.seed * 100_003 + self.epoch)
        perm = torch.randperm(len(self.train_data), generator=g)
        shard = perm[: len(perm) // self.world * self.world][self.rank:: self.world].to(self.device)
        return list(shard.split(self.tc.batch_size))

    # One optimizer step in its phases (bench/run.py times them one by one).
    def batch_at(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.train_data.x[idx].contiguous(memory_format=self.memory_format)  # (B, 1, H, W)
        return x, self.train_data.y[idx]  # (B,)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            return self.objective.loss(self.net, x, y, self.generator)

    def backward(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()

    def optimizer_step(self) -> None:
        """Gradient clipping, Adam, LR schedule."""
        if self.tc.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1

    def ema_step(self) -> None:
        if self.ema is not None and self.step >= self.tc.ema_start:
            self.ema.update_parameters(self.model)

    def _train_step(self, idx: torch.Tensor) -> None:
        x, y = self.batch_at(idx)
        loss = self.forward(x, y)
        self.backward(loss)
        self.optimizer_step()
        self.ema_step()
        self.epoch_loss += loss.detach().double() * len(idx)
        self.epoch_count += len(idx)

    def _check_finite(self) -> float:
        value = self.epoch_loss.item() / max(1, self.epoch_count)
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"training loss became non-finite ({value}) in epoch {self.epoch + 1} near step {self.step}; "
                f"stopped without saving, the last good checkpoint is {self.run.last_checkpoint}")
        return value

    @torch.no_grad()
    def validate(self) -> float:
        """Mean objective on the validation data with the sampling weights and a fixed generator."""
        model = self.sampling_model
        model.eval()
        g = torch.Generator(self.device).manual_seed(self.tc.seed + 12345)
        total, n = 0.0, 0
        for idx in torch.arange(len(self.val_data), device=self.device).split(max(self.tc.batch_size, 500)):
            x, y = self.val_data.x[idx], self.val_data.y[idx]
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                total += self.objective.loss(model, x, y, g).item() * len(idx)
            n += len(idx)
        model.train()
        return total / n

    def _end_epoch(self) -> EpochRecord:
        train_loss = self._check_finite()
        self.epoch += 1
        self.batch = 0
        record = EpochRecord(
            epoch=self.epoch, step=self.step, train_loss=train_loss,
            val_loss=self.validate() if len(self.val_data) else float("nan"),
            lr=self.optimizer.param_groups[0]["lr"], seconds=round(self.epoch_seconds, 3),
            images_per_s=round(self.epoch_count * self.world / max(self.epoch_seconds, 1e-9), 2))
        self.history.append(record)
        self.epoch_loss.zero_()
        self.epoch_count, self.epoch_seconds = 0, 0.0
        if self.rank == 0:
            if self.preview is not None:
                model = self.sampling_model
                model.eval()
                with torch.no_grad():
                    self.run.save_epoch_samples(self.epoch, self.preview.draw(model), self.preview.nrow)
                model.train()
            write_json(self.run.history, [asdict(r) for r in self.history])
        self.save(epoch_file=True)
        return record

    def fit(self) -> list[EpochRecord]:
        """Train until ``cfg.train.epochs`` epochs are complete; returns the per-epoch history."""
        self.model.train()
        last_save = time.monotonic()
        while self.epoch < self.tc.epochs:
            batches = self._batches()
            bar = tqdm(total=len(batches), initial=self.batch, disable=not self.show_progress, leave=False,
                       desc=f"{self.cfg.kind} epoch {self.epoch + 1}/{self.tc.epochs}", dynamic_ncols=True)
            tick, tick_images = time.perf_counter(), 0
            for idx in batches[self.batch:]:
                self._train_step(idx)
                self.batch += 1
                tick_images += len(idx) * self.world
                if self.batch % self.tc.log_every == 0 or self.batch == len(batches):
                    now = time.perf_counter()
                    self.epoch_seconds += now - tick
                    loss = self._check_finite()
                    bar.set_postfix(loss=f"{loss:.4g}", img_s=f"{tick_images / max(now - tick, 1e-9):.0f}")
                    bar.update(self.batch - bar.n)
                    minutes = self.tc.checkpoint_minutes
                    if minutes > 0 and time.monotonic() - last_save > 60 * minutes and self.batch < len(batches):
                        self.save(epoch_file=False)
                        last_save = time.monotonic()
                    tick, tick_images = time.perf_counter(), 0
            bar.close()
            record = self._end_epoch()
            last_save = time.monotonic()
            if self.show_progress:
                tqdm.write(f"{self.cfg.kind} epoch {record.epoch}: train {record.train_loss:.4f}  "
                           f"val {record.val_loss:.4f}  {record.images_per_s:.0f} img/s  {record.seconds:.1f}s")
        return self.history
