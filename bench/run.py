"""mnistgen benchmarks: one run, one machine, everything side by side.

    python bench/run.py            # full table (about 10 minutes on a 2-core CPU)
    python bench/run.py --quick    # fewer repetitions, for a quick look

Prints a table and writes bench/results/<date>-<host>.json. Measures:
  - the machine's fp32 matrix-product GFLOP/s (the ceiling);
  - training images/s, FLOPs per image and achieved GFLOP/s of every preset's network, with the
    optimizer step (Adam, grad clipping, EMA) included, as the trainer runs it, and the split of
    the step time into data, forward, backward, optimizer and EMA;
  - the `cpu` DDPM network in NCHW (contiguous), in channels_last (NHWC, its preset) and under torch.compile,
    timed in interleaved rounds so the ratios hold on a noisy machine;
  - one EMA update (torch's AveragedModel against mnistgen's EMA) and one clipping + Adam step
    (torch's per-tensor loop, foreach and fused kernels);
  - seconds to draw 64 samples: DDPM ancestral-1000, DDIM-50, DDIM-20 (cpu network) and the CFG
    sampler at its default steps (reported per 100 samples too).
Timings use untrained weights: the cost of a forward pass does not depend on the weights.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mnistgen.config import apply_overrides, preset
from mnistgen.data.mnist import TensorData
from mnistgen import kinds
from mnistgen.runs import build_trainer
from mnistgen.diffusion.samplers import SamplerSettings
from mnistgen.training.ema import EMA
from mnistgen.training.trainer import Trainer
from results_io import stamp, write_results


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    a = torch.randn(n, n)
    a @ a
    start = time.perf_counter()
    for _ in range(reps):
        a @ a
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def _batch(cfg, n):
    r = cfg.data.resolution
    x = torch.rand(n, 1, r, r) if kinds.get(cfg.kind).data_scale == "unit" else torch.rand(n, 1, r, r) * 2 - 1
    return x, torch.randint(0, 10, (n,))


def train_flops_per_image(cfg) -> float:
    model, objective = kinds.get(cfg.kind).build_model(cfg), kinds.get(cfg.kind).build_objective(cfg)
    x, y = _batch(cfg, 8)
    with FlopCounterMode(display=False) as counter:
        objective.loss(model, x, y).backward()
    return counter.get_total_flops() / 8


PHASES = ("data", "forward", "backward", "optimizer", "ema")


VARIANTS = {  # name -> overrides
    "preset": {}, "contiguous": {"train.channels_last": False}, "channels_last": {"train.channels_last": True},
    "compile": {"train.compile": True},
    "fp32": {"train.amp": "off"},  # channels_last in float32 (the cpu DDPM preset itself uses bf16 where native)
    "bf16": {"train.amp": "bf16"},  # channels_last under CPU bf16 autocast
    # the widths of the `cpu` U-Net's three levels (16x16, 8x8, 4x4; preset 32/64/128), docs/cpu-design.md
    # (results/widths-2026-11-26-vm.json: compare_variants("ddpm", "cpu", ["preset", "widths-40-64-96",
    # "widths-24-64-160"], steps=25, rounds=4))
    "widths-40-64-96": {"model.channels": (40, 64, 96), "model.bottleneck": 96},
    "widths-24-64-160": {"model.channels": (24, 64, 160), "model.bottleneck": 160},
}


def bench_trainer(kind: str, name: str, steps: int, variant: str = "preset") -> tuple[Trainer, list[torch.Tensor]]:
    """A trainer on random data with EMA from step 0, in one of the VARIANTS (memory format, compile, precision,
    level widths)."""
    cfg = apply_overrides(preset(kind, name), {"train.ema_start": 0, **VARIANTS[variant]})
    bs = cfg.train.batch_size
    x, y = _batch(cfg, bs * (steps + 3))
    trainer = build_trainer(cfg, ".", data=(TensorData(x, y), TensorData(x[:0], y[:0])), preview=False)
    return trainer, trainer.epoch_batches()


def train_throughput(kind: str, name: str, steps: int, variant: str = "preset") -> dict:
    """Images/s of full optimizer steps (forward, backward, Adam, clipping, EMA) through the real trainer,
    and the mean seconds per step spent in each phase."""
    trainer, batches = bench_trainer(kind, name, steps, variant)
    for idx in batches[:3]:  # warm-up (and compilation)
        trainer.train_step(idx)
    split = dict.fromkeys(PHASES, 0.0)
    for idx in batches[3: 3 + steps]:
        t = [time.perf_counter()]
        x, y = trainer.batch_at(idx)
        t.append(time.perf_counter())
        loss = trainer.forward(x, y)
        t.append(time.perf_counter())
        trainer.backward(loss)
        t.append(time.perf_counter())
        trainer.optimizer_step()
        t.append(time.perf_counter())
        trainer.ema_step()
        t.append(time.perf_counter())
        for phase, a, b in zip(PHASES, t, t[1:]):
            split[phase] += b - a
    seconds = sum(split.values())
    cfg, bs = trainer.config, trainer.tc.batch_size
    flops = train_flops_per_image(cfg)
    ips = bs * steps / seconds
    params = sum(p.numel() for p in trainer.model.parameters())
    return {"model": f"{kind}/{name}", "variant": variant, "params_M": round(params / 1e6, 3), "batch": bs,
            "train_images_per_s": round(ips, 1), "train_gflop_per_image": round(flops / 1e9, 4),
            "achieved_gflop_per_s": round(ips * flops / 1e9, 1),
            "step_ms": {k: round(1000 * v / steps, 2) for k, v in split.items()}}


def compare_variants(kind: str, name: str, variants: list[str], steps: int, rounds: int = 3) -> list[dict]:
    """Training images/s of one network in several variants, measured in interleaved rounds
    (A B C A B C ...) so that a noisy machine affects every variant alike."""
    trainers = {}
    for variant in variants:
        try:
            trainers[variant] = bench_trainer(kind, name, steps * rounds, variant)
            for idx in trainers[variant][1][:3]:  # warm-up (and compilation)
                trainers[variant][0].train_step(idx)
        except Exception as error:  # e.g. torch.compile without a working C++ toolchain
            print(f"{kind}/{name} {variant}: failed: {type(error).__name__}: {str(error)[:200]}")
            trainers.pop(variant, None)
    seconds = dict.fromkeys(trainers, 0.0)
    for r in range(rounds):
        for variant, (trainer, batches) in trainers.items():
            start = time.perf_counter()
            for idx in batches[3 + r * steps: 3 + (r + 1) * steps]:
                trainer.train_step(idx)
            seconds[variant] += time.perf_counter() - start
    bs = preset(kind, name).train.batch_size
    base = seconds.get(variants[0])
    return [{"model": f"{kind}/{name}", "variant": v, "train_images_per_s": round(bs * steps * rounds / sec, 1),
             "speedup": round(base / sec, 3) if base else None} for v, sec in seconds.items()]


def optimizer_step_ms(kind: str, name: str, reps: int = 50) -> dict:
    """Milliseconds per gradient clipping + Adam step: torch's default CPU loop, foreach, fused (what the trainer uses)."""
    model = kinds.get(kind).build_model(preset(kind, name))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    out = {}
    for label, kw in [("loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})]:
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, **kw)
        opt.step()
        start = time.perf_counter()
        for _ in range(reps):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        out[label] = round(1000 * (time.perf_counter() - start) / reps, 3)
    return out


def ema_update_ms(kind: str, name: str, reps: int = 200) -> dict:
    """Milliseconds per EMA update: torch's AveragedModel (EMA multi-avg fn) against mnistgen's EMA."""
    model = kinds.get(kind).build_model(preset(kind, name))
    out = {}
    for label, ema in [("AveragedModel", AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999),
                                                       use_buffers=True)),
                       ("EMA", EMA(model, 0.999))]:
        ema.update_parameters(model)
        start = time.perf_counter()
        for _ in range(reps):
            ema.update_parameters(model)
        out[label] = round(1000 * (time.perf_counter() - start) / reps, 3)
    return out


@torch.no_grad()
def sampling_seconds(kind: str, name: str, n: int, **kwargs) -> float:
    cfg = preset(kind, name)
    model_kind = kinds.get(kind)
    model = model_kind.build_model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 10 if model_kind.takes_labels else None
    start = time.perf_counter()
    model_kind.sample(cfg, model, n, g, SamplerSettings(**kwargs), labels)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--variants", default="channels_last,compile",
                        help=f"extra ddpm/cpu training variants to time ({', '.join(VARIANTS)}); empty for none")
    args = parser.parse_args()
    steps = 3 if args.quick else 10
    torch.manual_seed(0)
    results: dict = {**stamp(), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
                     "matmul_gflop_per_s": round(matmul_gflops(), 1)}
    print(f"# mnistgen bench  {results['date']}  {results['machine']}")
    print(f"fp32 matmul: {results['matmul_gflop_per_s']} GFLOP/s\n")

    print(f"{'network':22s} {'params':>8s} {'batch':>6s} {'img/s':>8s} {'GFLOP/img':>10s} {'GFLOP/s':>8s}  "
          + " ".join(f"{p + ' ms':>12s}" for p in PHASES))
    rows = []
    networks = [("vae", "reference", steps * 10), ("classifier", "cpu", steps), ("ddpm", "cpu", steps),
                ("cfg", "cpu", steps), ("ddpm", "reference", max(2, steps // 3))]
    for kind, name, n in networks:
        row = train_throughput(kind, name, n)
        rows.append(row)
        print(f"{row['model']:22s} "
              f"{row['params_M']:7.2f}M {row['batch']:6d} {row['train_images_per_s']:8.1f} "
              f"{row['train_gflop_per_image']:10.4f} {row['achieved_gflop_per_s']:8.1f}  "
              + " ".join(f"{row['step_ms'][p]:12.2f}" for p in PHASES), flush=True)
    results["training"] = rows

    variants = ["contiguous"] + [v for v in args.variants.split(",") if v]
    print(f"\n{'ddpm/cpu variant (interleaved rounds)':40s} {'img/s':>8s} {'speed-up':>9s}")
    results["variants"] = compare_variants("ddpm", "cpu", variants, steps)
    for row in results["variants"]:
        print(f"{row['variant']:40s} {row['train_images_per_s']:8.1f} {row['speedup']:9.3f}", flush=True)
    print("(contiguous: NCHW; channels_last: NHWC, the cpu preset's setting; compile: the preset + torch.compile; "
          "bf16: the preset under bf16 autocast)")
    results["ema_update_ms_ddpm_cpu"] = ema_update_ms("ddpm", "cpu")
    print(f"\nEMA update, ddpm/cpu network (ms): {results['ema_update_ms_ddpm_cpu']}")
    results["optimizer_step_ms_ddpm_cpu"] = optimizer_step_ms("ddpm", "cpu")
    print(f"clip + Adam step, ddpm/cpu network (ms): {results['optimizer_step_ms_ddpm_cpu']}")

    print(f"\n{'sampler (cpu presets, 64 images)':40s} {'seconds':>8s} {'s / 100':>8s}")
    sampling = []
    for label, kind, kw in [("DDPM ancestral-1000", "ddpm", {"sampler": "ancestral"}),
                            ("DDPM DDIM-50", "ddpm", {"sampler": "ddim", "steps": 50}),
                            ("DDPM DDIM-20", "ddpm", {"sampler": "ddim", "steps": 20}),
                            (f"CFG guided-{preset('cfg', 'cpu').process.sample_steps} (2 passes/step)", "cfg", {})]:
        seconds = sampling_seconds(kind, "cpu", 64, **kw)
        sampling.append({"sampler": label, "seconds_64": round(seconds, 2), "seconds_per_100": round(seconds / 0.64, 2)})
        print(f"{label:40s} {seconds:8.2f} {seconds / 0.64:8.2f}", flush=True)
    results["sampling"] = sampling

    print(f"\nwrote {write_results(results)}")


if __name__ == "__main__":
    main()
