"""Training images/s of the `reference` diffusion networks: the common way of training them against mnistgen's.

    python bench/gpu_throughput.py                      # on a CUDA machine: ddpm and cfg, reference preset
    python bench/gpu_throughput.py --preset smoke --steps 4 --rounds 1 --device cpu   # a quick check anywhere

"baseline" is how such a network is usually trained (and how the study's original code trains
it): a torch Dataset that turns each uint8 image into a PIL image and runs per-item transforms
(Pad, ToTensor, Normalize), a DataLoader with worker processes and pinned memory, fp16 autocast
with a GradScaler, the default Adam, ``loss.item()`` every step, and an EMA written as a Python
loop over the parameters. The same network, objective, batch size, LR and clipping are used.

The mnistgen variants run the shared Trainer: the dataset resident on the device, bf16 autocast
where supported (no GradScaler), fused Adam, one fused EMA update, no host sync inside the
step; then with channels_last and with torch.compile added. Every variant is timed in
interleaved rounds (A B C ... A B C ...) after a warm-up, with the device synchronised at the
ends of each timed window. Prints a table and writes bench/results/gpu-<date>-<host>.json.
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Callable

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from mnistgen.config import RunConfig, apply_overrides, preset
from mnistgen.data.mnist import load_split
from mnistgen import kinds
from mnistgen.runs import build_trainer
from mnistgen.training.device import configure_backends
from results_io import stamp, write_results

VARIANTS = {  # name -> overrides of the preset (the preset's own amp setting stays on)
    "mnistgen": {"train.channels_last": False, "train.compile": False},
    "+channels_last": {"train.channels_last": True, "train.compile": False},
    "+channels_last+compile": {"train.channels_last": True, "train.compile": True},
}


class PerItemMNIST(Dataset):
    """MNIST the usual way: one PIL image and one transform pipeline per item."""

    def __init__(self, cfg: RunConfig):
        split = load_split("train", cfg.data.dataset)
        self.images, self.labels = split.images.numpy(), split.labels
        pad = (cfg.data.resolution - 28) // 2
        self.transform = transforms.Compose([transforms.Pad(pad), transforms.ToTensor(),
                                             transforms.Normalize((0.5,), (0.5,))])  # [0, 1] -> [-1, 1]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(Image.fromarray(self.images[i], mode="L")), self.labels[i]


class Baseline:
    """One training step the usual way; ``run(steps)`` trains that many steps."""

    def __init__(self, cfg: RunConfig, device: torch.device, workers: int):
        self.cfg, self.device = cfg, device
        self.model = kinds.get(cfg.kind).build_model(cfg).to(device)
        self.objective = kinds.get(cfg.kind).build_objective(cfg, device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr)
        self.fp16 = device.type == "cuda" and cfg.train.amp != "off"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.fp16)
        loader = DataLoader(PerItemMNIST(cfg), batch_size=cfg.train.batch_size, shuffle=True, drop_last=True,
                            num_workers=workers, pin_memory=device.type == "cuda",
                            persistent_workers=workers > 0)
        self.loader, self.batches = loader, iter(loader)
        self.losses: list[float] = []

    def _next(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            return next(self.batches)

    def step(self) -> None:
        x, y = self._next()
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16):
            loss = self.objective.loss(self.model, x, y)
        self.optimizer.zero_grad()
        self.scaler.scale(loss).backward()
        if self.cfg.train.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.losses.append(loss.item())  # a host sync every step
        decay = self.cfg.train.ema_decay or 0.999
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.model.parameters()):
                e.mul_(decay).add_(p, alpha=1 - decay)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()


class Ours:
    """The shared Trainer on device-resident data, stepping through its own shuffled batches."""

    def __init__(self, cfg: RunConfig, device: torch.device):
        self.trainer = build_trainer(cfg, ".", device, preview=False)
        self.batches: list[torch.Tensor] = []

    def run(self, steps: int) -> None:
        for _ in range(steps):
            if not self.batches:
                self.batches = self.trainer.epoch_batches()
            self.trainer.train_step(self.batches.pop(0))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(kind: str, preset_name: str, device: torch.device, steps: int, rounds: int, warmup: int,
            workers: int) -> list[dict]:
    base_cfg = apply_overrides(preset(kind, preset_name), {"train.ema_start": 0})
    runners: dict[str, Callable[[int], None]] = {"baseline": Baseline(base_cfg, device, workers).run}
    for name, overrides in VARIANTS.items():
        runners[name] = Ours(apply_overrides(base_cfg, overrides), device).run
    for run in runners.values():  # warm-up: worker start, cuDNN autotuning, compilation
        run(warmup)
    seconds = dict.fromkeys(runners, 0.0)
    for _ in range(rounds):
        for name, run in runners.items():
            _sync(device)
            start = time.perf_counter()
            run(steps)
            _sync(device)
            seconds[name] += time.perf_counter() - start
    images = base_cfg.train.batch_size * steps * rounds
    return [{"model": f"{kind}/{preset_name}", "variant": name, "batch": base_cfg.train.batch_size,
             "train_images_per_s": round(images / sec, 1), "vs_baseline": round(seconds["baseline"] / sec, 2)}
            for name, sec in seconds.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default="ddpm,cfg")
    parser.add_argument("--preset", default="reference")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=50, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--workers", type=int, default=4, help="the baseline's DataLoader worker processes")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    configure_backends(device, tf32=True)  # both ways, as `mnistgen train` runs: cuDNN autotuning, TF32
    rows = []
    print(f"device: {name}")
    print(f"{'model':16s} {'variant':24s} {'images/s':>9s} {'vs baseline':>11s}")
    for kind in args.kinds.split(","):
        for row in compare(kind, args.preset, device, args.steps, args.rounds, args.warmup, args.workers):
            rows.append(row)
            print(f"{row['model']:16s} {row['variant']:24s} {row['train_images_per_s']:9.1f} "
                  f"{row['vs_baseline']:10.2f}x", flush=True)
    results = {**stamp(), "device": name, "torch": torch.__version__, "steps": args.steps, "rounds": args.rounds,
               "rows": rows}
    print(f"wrote {write_results(results, 'gpu-' if device.type == 'cuda' else 'gpu-check-')}")


if __name__ == "__main__":
    main()
