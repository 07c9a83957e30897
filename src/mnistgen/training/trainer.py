"""One training loop for every model: EMA, mixed precision, checkpoints, resume, history, previews.

The trainer is handed what it needs (a model, an objective, device-resident data and a
preview function) and builds none of it. Everything random in a step comes from one
``torch.Generator`` whose state is checkpointed, and each epoch's shuffle is derived
from (seed, epoch), so a resumed run ends with the same weights as an uninterrupted one.
Under ``torchrun`` each rank trains on its shard with DistributedDataParallel, draws from
its own generator, and rank 0 writes every rank's generator and RNG state into the
checkpoint, so a resumed data-parallel run also ends with the uninterrupted run's weights.
Checkpoints load to the CPU; load_state_dict then moves each tensor to where its owner lives.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import sys
import threading
import time
from typing import Callable, NamedTuple, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mnistgen.config import RunConfig, TrainConfig
from mnistgen.data.mnist import TensorData
from mnistgen.errors import Interrupted, RunStopped, StopNow, UserError
from mnistgen.progress import Progress, say
from mnistgen.training import device as policy
from mnistgen.training import distributed
from mnistgen.training.ema import EMA, ema_in_use
from mnistgen.storage.checkpoint import describe_error, load_checkpoint, save_checkpoint
from mnistgen.storage.rundir import EpochRecord, RunDir


class Objective(Protocol):
    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean loss over the batch, a scalar tensor."""


class RunLog(Protocol):
    """Where the trainer reports what it measures (``training.tensorboard.TensorBoardLog``)."""

    def start(self, step: int) -> None:
        """Open the log; a resumed run passes the step it resumes from."""

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One value per tag at optimizer step ``step``."""

    def images(self, step: int, tag: str, images: torch.Tensor, nrow: int | None = None) -> None:
        """A grid of images (N, 1, H, W) in [0, 1] at optimizer step ``step``."""

    def close(self) -> None:
        """Flush and close; called however training ends."""


class Preview(NamedTuple):
    """The per-epoch sample grid: ``draw(model)`` gives images in [0, 1], (N, 1, H, W), laid out ``nrow`` per row."""

    draw: Callable[[nn.Module], torch.Tensor]
    nrow: int


class NonFiniteLossError(RunStopped):
    """The loss, a weight or the validation loss became NaN or infinite; nothing was saved."""


class StopRequest:
    """Notes SIGINT / SIGTERM during training so that the loop can stop between two steps; a second
    signal interrupts at once. Handlers are installed only in the main thread, and restored on exit."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict = {}

    def _note(self, signal_number: int, frame) -> None:
        if self.signal is not None:
            raise StopNow(signal_number)
        self.signal = signal_number

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._note) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)  # None: set outside Python


def lr_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """LR multiplier at optimizer step ``s``: linear warm-up, then constant, step decay or cosine to 0."""
    total = config.epochs * steps_per_epoch

    def factor(s: int) -> float:
        warm = min(1.0, (s + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        if config.lr_schedule == "step":
            return warm * config.lr_gamma ** (s // (config.lr_step_epochs * steps_per_epoch))
        if config.lr_schedule == "cosine":
            progress = min(1.0, max(0.0, (s - config.warmup_steps) / max(1, total - config.warmup_steps)))
            return warm * 0.5 * (1 + math.cos(math.pi * progress))
        return warm

    return factor


def _rng_state() -> dict:
    """The global RNGs' states as tensors and plain values (checkpoint format 3: loadable weights-only)."""
    algorithm, key, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"algorithm": algorithm, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state(saved) -> tuple:
    """``np.random.set_state``'s tuple from format 3's dict, or format 2's tuple (its key an ndarray) as is."""
    if not isinstance(saved, dict):
        return saved
    key = saved["key"].numpy().astype(np.uint32)  # (624,) MT19937 key
    return saved["algorithm"], key, saved["pos"], saved["has_gauss"], saved["cached_gaussian"]


def _set_rng_state(state: dict) -> None:
    """Restore the global RNGs; the torch states are CPU ByteTensors, as the setters require."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state(state["numpy"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():  # as many GPUs as both machines have
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def _load_optimizer(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load Adam's moments, keeping this device's kernel choice (fused or not): a checkpoint from
    another device may carry flags this device has no kernel for. (AdamW itself keeps its weight
    decay decoupled when it loads a checkpoint written by mnistgen 0.1's coupled Adam.)"""
    flags = [{k: g[k] for k in ("fused", "foreach", "capturable") if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, flags):
        group.update(own)
        if not (group.get("fused") or group.get("capturable")):  # the unfused step keeps its count on the CPU
            for p in group["params"]:
                if torch.is_tensor(optimizer.state.get(p, {}).get("step")):
                    optimizer.state[p]["step"] = optimizer.state[p]["step"].cpu()


class Trainer:
    def __init__(self, model: nn.Module, objective: Objective, train_data: TensorData, val_data: TensorData,
                 config: RunConfig, run: RunDir, preview: Preview | None = None, show_progress: bool = True,
                 log: RunLog | None = None):
        self.config, self.tc = config, config.train
        self.run, self.objective, self.preview = run, objective, preview
        self.log = log  # per-step and per-epoch measurements (rank 0 only), or None
        self.train_data, self.val_data = train_data, val_data
        self.device = train_data.x.device
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.show_progress = show_progress and self.rank == 0
        self.memory_format = torch.channels_last if self.tc.channels_last else torch.contiguous_format
        self.model = model.to(memory_format=self.memory_format)
        net = DistributedDataParallel(model) if self.world > 1 else model
        self.net = torch.compile(net) if self.tc.compile else net  # what the objective calls
        self.optimizer = policy.adamw(model.parameters(), self.device, lr=self.tc.lr, weight_decay=self.tc.weight_decay)
        self.steps_per_epoch = math.ceil(len(train_data) // self.world / self.tc.batch_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(self.tc, self.steps_per_epoch))
        self.amp_dtype = policy.amp_dtype(self.device, self.tc.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=policy.needs_grad_scaler(self.amp_dtype))
        self.ema = EMA(model, self.tc.ema_decay, self.tc.ema_warmup_power) if self.tc.ema_decay > 0 else None
        self.generator = torch.Generator(self.device).manual_seed(self.tc.seed * 1000 + self.rank)
        self.step = 0
        self.epoch = 0  # completed epochs
        self.batch = 0  # batches done in the current epoch
        self.epoch_loss = torch.zeros((), device=self.device)  # float32: MPS has no float64
        self.epoch_count = 0
        self.epoch_seconds = 0.0
        self.history: list[EpochRecord] = []
        self.last_loss = torch.zeros((), device=self.device)  # the latest batch's loss (read at log steps)
        self.grad_norm = torch.zeros((), device=self.device)  # measured on log steps when a log is kept

    # -- state --------------------------------------------------------------------------
    @property
    def sampling_model(self) -> nn.Module:
        """The EMA weights once EMA has started, else the raw weights."""
        if self.ema is not None and ema_in_use(self.step, self.tc.ema_start):
            return self.ema.module
        return self.model

    def _rank_states(self) -> list[dict]:
        """Every rank's generator and global RNG states, in rank order (a collective under DDP)."""
        mine = {"generator": self.generator.get_state(), "rng": _rng_state()}
        if self.world == 1:
            return [mine]
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, mine)
        return gathered

    def state_dict(self) -> dict:
        ranks = self._rank_states()
        return {
            "config": self.config.to_dict(), "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "world_size": self.world,
            "generator": [r["generator"] for r in ranks], "rng": [r["rng"] for r in ranks],
            "step": self.step, "epoch": self.epoch, "batch": self.batch,
            "epoch_loss": self.epoch_loss.item(), "epoch_count": self.epoch_count,
            "epoch_seconds": self.epoch_seconds, "history": [r.to_json() for r in self.history],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a checkpoint loaded to the CPU: weights and optimizer state are copied to the
        training device by their owners; this rank's generator and RNG states stay CPU tensors."""
        generators, rngs = state["generator"], state["rng"]
        if not isinstance(generators, list):  # format 1 (mnistgen 0.1): rank 0's streams only
            if self.world > 1:
                raise UserError("this checkpoint (format 1) holds the random streams of one process only; "
                                "resume it without torchrun, in a single process")
            generators, rngs = [generators], [rngs]
        saved_world = state.get("world_size", len(generators))
        if saved_world != self.world:
            raise UserError(f"the checkpoint was written by {saved_world} process(es) in all and this job has "
                            f"{self.world}; resume it with {saved_world} process(es) in total")
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        _load_optimizer(self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler.is_enabled() and state["scaler"]:  # empty when saved without fp16 (another device)
            self.scaler.load_state_dict(state["scaler"])
        self._restore_generator(generators[self.rank], state["step"])
        _set_rng_state(rngs[self.rank])
        self.step, self.epoch, self.batch = state["step"], state["epoch"], state["batch"]
        self.epoch_loss.fill_(state["epoch_loss"])
        self.epoch_count, self.epoch_seconds = state["epoch_count"], state["epoch_seconds"]
        self.history = [EpochRecord.from_json(r) for r in state["history"]]

    def _restore_generator(self, saved: torch.Tensor, step: int) -> None:
        """This rank's stream continues where it stopped. A state saved by another kind of device
        (a CUDA Philox state on a CPU, say) does not fit this generator: the stream is then
        reseeded from (seed, rank, step), and the run goes on without being bit-identical."""
        try:
            self.generator.set_state(saved)
        except RuntimeError:
            self.generator.manual_seed(self.tc.seed * 1000 + self.rank + 7919 * step)
            if self.rank == 0:
                print("mnistgen: the checkpoint's random stream comes from another kind of device; weights and "
                      "optimizer resume exactly, the noise stream is reseeded (not bit-identical)", file=sys.stderr)

    def resume(self) -> bool:
        """Load the run's newest checkpoint (``RunDir.newest_checkpoint``); True when there was one."""
        path = self.run.newest_checkpoint()
        if path is None:
            return False
        state = load_checkpoint(path, self.config.kind)
        try:
            self.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
            raise UserError(f"{path} is damaged or does not fit {self.run.config} ({describe_error(e)}); "
                            f"resume from an epoch_NNN.pt copied over it, or start a new run") from None
        return True

    def save(self, epoch_file: bool) -> None:
        """Write ``last.pt`` (and ``epoch_NNN.pt``); every rank calls it, rank 0 writes."""
        state = self.state_dict()
        if self.rank != 0:
            return
        if epoch_file:
            save_checkpoint(self.run.epoch_checkpoint(self.epoch), state)
        save_checkpoint(self.run.last_checkpoint, state)

    # -- loop ---------------------------------------------------------------------------
    def epoch_batches(self) -> list[torch.Tensor]:
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

    def optimizer_step(self, measure: bool = False) -> None:
        """Gradient clipping, Adam, LR schedule; ``measure`` also keeps the gradient's global norm,
        taken after ``scaler.unscale_`` (which the scaler's step then skips). The update is the same
        bits as an unmeasured step's: unscaling multiplies by 1 / scale where a fused step would
        divide by the scale, and GradScaler's scales are powers of two, for which both are exact."""
        if self.tc.grad_clip > 0 or measure:
            self.scaler.unscale_(self.optimizer)
        if self.tc.grad_clip > 0:
            self.grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)  # the norm before clipping
        elif measure:
            self.grad_norm = nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1

    def ema_step(self) -> None:
        if self.ema is not None and self.step >= self.tc.ema_start:
            self.ema.update_parameters(self.model)

    def train_step(self, idx: torch.Tensor, measure: bool = False) -> None:
        x, y = self.batch_at(idx)
        loss = self.forward(x, y)
        self.backward(loss)
        self.optimizer_step(measure)
        self.ema_step()
        self.last_loss = loss.detach().float()
        self.epoch_loss += self.last_loss * len(idx)
        self.epoch_count += len(idx)

    def _check_finite(self) -> float:
        """The epoch's mean training loss so far, after checking that it and every weight are finite."""
        value = self.epoch_loss.item() / max(1, self.epoch_count)
        self._stop_unless_finite("training loss", value)
        weights = [*self.model.parameters(), *(self.ema.parameters() if self.ema is not None else ())]
        if not bool(torch.stack([torch.isfinite(w).all() for w in weights]).all()):  # one host sync
            self._stop_unless_finite("a weight", math.nan)
        return value

    def _stop_unless_finite(self, what: str, value: float) -> None:
        """Raise before anything non-finite can reach a checkpoint, naming what is kept on disk."""
        if math.isfinite(value):
            return
        raise NonFiniteLossError(f"{what} became non-finite ({value}) in epoch {self.epoch + 1} near step "
                                 f"{self.step}; stopped without saving; {self._kept()}")

    def _kept(self) -> str:
        newest = self.run.newest_checkpoint()
        return f"the last good checkpoint is {newest}" if newest is not None else "no checkpoint had been written"

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
        val_loss = self.validate() if len(self.val_data) else float("nan")
        if len(self.val_data):
            self._stop_unless_finite("the validation loss", val_loss)
        self.epoch += 1
        self.batch = 0
        record = EpochRecord(
            epoch=self.epoch, step=self.step, train_loss=train_loss, val_loss=val_loss,
            lr=self.optimizer.param_groups[0]["lr"], seconds=round(self.epoch_seconds, 3),
            images_per_s=round(self.epoch_count * self.world / max(self.epoch_seconds, 1e-9), 2),
            compute_dtype=str(self.amp_dtype or torch.float32).removeprefix("torch."))
        self.history.append(record)
        self.epoch_loss.zero_()
        self.epoch_count, self.epoch_seconds = 0, 0.0
        if self.rank == 0:
            if self.preview is not None:
                self._save_preview(record.step)
            self.run.write_history(self.history)
            self._log_epoch(record)
        self.save(epoch_file=True)
        return record

    def _save_preview(self, step: int) -> None:
        """The epoch's preview grid into samples/ (and the log)."""
        model = self.sampling_model
        model.eval()
        with torch.no_grad():
            images = self.preview.draw(model)  # (N, 1, H, W) in [0, 1]
        model.train()
        self.run.save_epoch_samples(self.epoch, images, self.preview.nrow)
        if self.log is not None:
            self.log.images(step, "preview", images, self.preview.nrow)

    def _log_epoch(self, record: EpochRecord) -> None:
        """The history.json record as epoch/* scalars at the epoch's last step."""
        if self.log is not None:
            self.log.scalars(record.step, {f"epoch/{name}": float(getattr(record, name)) for name in
                                           ("train_loss", "val_loss", "lr", "images_per_s", "seconds")})

    def _log_step(self, images_per_s: float) -> None:
        """The per-step scalars of a log step (the values are read from the device here, where the
        progress update syncs anyway)."""
        values = {"train/loss": self.last_loss.item(), "train/lr": self.optimizer.param_groups[0]["lr"],
                  "train/images_per_s": images_per_s, "train/grad_norm": float(self.grad_norm)}
        if self.scaler.is_enabled():
            values["train/loss_scale"] = float(self.scaler.get_scale())
        self.log.scalars(self.step, values)

    def _decide(self, last_save: float, stop: StopRequest) -> tuple[bool, int | None]:
        """(a mid-epoch checkpoint is due, the signal to stop on), agreed by every rank: rank 0's clock
        decides the checkpoint, a signal seen by any rank stops all (saving is a collective)."""
        minutes = self.tc.checkpoint_minutes
        mine = (minutes > 0 and time.monotonic() - last_save > 60 * minutes, stop.signal)
        if self.world == 1:
            return mine
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, mine)
        return gathered[0][0], next((g[1] for g in gathered if g[1] is not None), None)

    def _interrupt_if_signalled(self, stop: StopRequest) -> None:
        """Between epochs: stop on a signal any rank has seen (agreed, since saving is a collective)."""
        signal_number = stop.signal if self.world == 1 else self._decide(time.monotonic(), stop)[1]
        if signal_number is not None:
            self._interrupt(signal_number)

    def _interrupt(self, signal_number: int) -> None:
        """Save between two steps (unless something is non-finite) and stop."""
        self._check_finite()
        self.save(epoch_file=False)
        name = signal.Signals(signal_number).name
        where = ("after the last epoch (the run is complete)" if self.epoch >= self.tc.epochs else
                 f"in epoch {self.epoch + 1} after step {self.step}" if self.batch else
                 f"before epoch {self.epoch + 1} (step {self.step})")
        raise Interrupted(f"interrupted by {name} {where}; saved {self.run.last_checkpoint}; "
                          f"continue with --resume", signal_number)

    def fit(self, stop: StopRequest | None = None) -> list[EpochRecord]:
        """Train until ``config.train.epochs`` epochs are complete; returns the per-epoch history.
        SIGINT / SIGTERM (noted by ``stop``, or by this call's own :class:`StopRequest`) save a
        checkpoint between two steps or epochs and raise :class:`Interrupted`; a failed write (a full
        disk) raises :class:`RunStopped` naming the checkpoint that is kept."""
        self.model.train()
        if self.log is not None:
            self.log.start(self.step)
        with contextlib.nullcontext(stop) if stop is not None else StopRequest() as stop:
            try:
                while self.epoch < self.tc.epochs:
                    self._interrupt_if_signalled(stop)  # noted before training or during an epoch's end
                    record = self._fit_epoch(stop)
                    if self.show_progress:
                        say(f"{self.config.kind} epoch {record.epoch}: train {record.train_loss:.4f}  "
                                   f"val {record.val_loss:.4f}  {record.images_per_s:.0f} img/s  {record.seconds:.1f}s")
                self._interrupt_if_signalled(stop)  # a signal during the last epoch's end still stops the command
            except OSError as e:
                raise RunStopped(f"could not write into {self.run.root} ({e.strerror or e}); stopped; "
                                 f"{self._kept()}") from None
            finally:
                if self.log is not None:
                    self.log.close()
        return self.history

    def _fit_epoch(self, stop: StopRequest) -> EpochRecord:
        batches = self.epoch_batches()
        bar = Progress(len(batches), f"{self.config.kind} epoch {self.epoch + 1}/{self.tc.epochs}", self.show_progress,
                       initial=self.batch, leave=False)  # in a log file the epoch's own line says it all
        last_save, tick, tick_images = time.monotonic(), time.perf_counter(), 0
        for idx in batches[self.batch:]:
            log_step = (self.batch + 1) % self.tc.log_every == 0 or self.batch + 1 == len(batches)
            self.train_step(idx, measure=log_step and self.log is not None)
            self.batch += 1
            tick_images += len(idx) * self.world
            if not log_step and not (self.world == 1 and stop.signal is not None):
                continue
            now = time.perf_counter()
            self.epoch_seconds += now - tick
            loss = self._check_finite()
            images_per_s = tick_images / max(now - tick, 1e-9)
            bar.set_postfix(loss=f"{loss:.4g}", img_s=f"{images_per_s:.0f}")
            bar.update(self.batch - bar.n)
            if log_step and self.log is not None:
                self._log_step(images_per_s)
            due, signal_number = self._decide(last_save, stop)
            if signal_number is not None:
                bar.close()
                self._interrupt(signal_number)
            if due and self.batch < len(batches):
                self.save(epoch_file=False)
                last_save = time.monotonic()
            tick, tick_images = time.perf_counter(), 0
        bar.close()
        return self._end_epoch()
