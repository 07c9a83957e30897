"""Sample quality per CPU-minute: DDPM networks trained for the same wall-clock budget, side by side.

    python bench/quality_budget.py --minutes 10 --candidates cpu,small,reference --n 1000

Each candidate's schedule is planned for the budget: a short warm-up measures its
images/s, the run is then sized to ``minutes`` (whole epochs of equal size, so the cosine
or step LR schedule ends with the budget) with a warm-up EMA from the first step
(BUDGET_RECIPE, the same for every candidate), trained with the shared trainer, and judged
by MNIST-FD of ``n`` DDIM-50 samples, eta = 1 (EMA weights) at every epoch end.
Prints a table, writes bench/results/quality-<date>-<host>.json and a plot of MNIST-FD
against CPU-minutes.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mnistgen.config import apply_overrides, preset  # noqa: E402
from mnistgen.evaluation.fd import load_classifier  # noqa: E402
from mnistgen import kinds  # noqa: E402
from mnistgen.diffusion.samplers import SamplerSettings  # noqa: E402
from mnistgen.evaluation.metrics import reference_set  # noqa: E402
from mnistgen.runs import build_trainer, load_run, train  # noqa: E402
from mnistgen.storage.rundir import RunDir  # noqa: E402
from results_io import result_path, stamp, write_results  # noqa: E402

CANDIDATES = {
    "cpu": ("cpu", {}),
    # two resolution levels at 14x14 / 7x7, 0.49 M parameters: the fastest per image
    "small": ("cpu", {"data.resolution": 28, "model.channels": "32,64", "model.bottleneck": 64, "model.blocks": 2,
                      "model.attention": False}),
    # the study's network and recipe
    "reference": ("reference", {}),
    # the cpu network with its preset's EMA (0.999 from step 1000) instead of BUDGET_RECIPE's: an ablation
    "cpu-preset-ema": ("cpu", {"train.ema_start": preset("ddpm", "cpu").train.ema_start,
                               "train.ema_warmup_power": preset("ddpm", "cpu").train.ema_warmup_power}),
}


# Shared by every candidate: the presets start EMA after 1,000-2,000 steps with a fixed decay,
# sized for their full runs; in a budget of a few thousand steps that average would still
# be mostly its starting weights. Here EMA starts at once and warms up (decay_n rises
# with the update count n, see training/ema.py), so it always spans the recent steps.
BUDGET_RECIPE = {"train.ema_start": 0, "train.ema_warmup_power": 2 / 3}


# One sampler for every candidate (not each preset's default): DDIM-50 with eta = 1, the
# best 50-step sampler measured on the cpu DDPM (docs/benchmarks.md, "DDIM against the full chain").
JUDGED_BY = SamplerSettings(sampler="ddim", steps=50, eta=1.0, grid="time")  # one sampler for every candidate


def images_per_second(cfg, steps: int = 6) -> float:
    trainer = build_trainer(cfg, ".", preview=False)
    batches = trainer.epoch_batches()
    trainer.train_step(batches[0])
    start = time.perf_counter()
    for idx in batches[1: 1 + steps]:
        trainer.train_step(idx)
    return steps * cfg.train.batch_size / (time.perf_counter() - start)


def plan(name: str, minutes: float):
    preset_name, overrides = CANDIDATES[name]
    cfg = apply_overrides(preset("ddpm", preset_name), {**BUDGET_RECIPE, **overrides, "data.val_limit": 256,
                                                        "train.checkpoint_minutes": 0})
    ips = images_per_second(cfg)
    total = ips * 60 * minutes
    epochs = max(1, math.ceil(total / 60_000))
    per_epoch = max(cfg.train.batch_size, int(total / epochs))
    return apply_overrides(cfg, {"train.epochs": epochs, "data.train_limit": per_epoch}), ips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--candidates", default="cpu,small,reference")
    parser.add_argument("--n", type=int, default=1000, help="DDIM-50 samples per MNIST-FD")
    parser.add_argument("--name", default="quality", help="results: bench/results/<name>-<minutes>min-<date>-<host>")
    args = parser.parse_args()
    classifier = load_classifier()
    reference = reference_set(classifier, None, "cpu")
    results = {**stamp(), "minutes": args.minutes, "n_samples": args.n, "sampler": asdict(JUDGED_BY),
               "recipe": BUDGET_RECIPE, "candidates": []}
    for name in args.candidates.split(","):
        cfg, ips = plan(name, args.minutes)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            history = train(cfg, Path(tmp), show_progress=False)
            seconds = time.perf_counter() - start
            points = []
            for record in history:
                trained = load_run(tmp, checkpoint=RunDir(Path(tmp)).epoch_checkpoint(record.epoch))
                q = kinds.get("ddpm").sample_quality(trained, classifier, reference, args.n, 0, JUDGED_BY)
                minutes = sum(r.seconds for r in history[: record.epoch]) / 60
                points.append({"epoch": record.epoch, "cpu_minutes": round(minutes, 2), "step": record.step,
                               "mnist_fd": round(q.mnist_fd, 2)})
        params = sum(p.numel() for p in kinds.get("ddpm").build_model(cfg).parameters())
        row = {"candidate": name, "params_M": round(params / 1e6, 2), "planned_images_per_s": round(ips, 1),
               "train_seconds": round(seconds, 1), "steps": history[-1].step, "points": points,
               "final_mnist_fd": points[-1]["mnist_fd"]}
        results["candidates"].append(row)
        print(f"{name:10s} {row['params_M']:5.2f}M  {ips:6.1f} img/s  {row['steps']:6d} steps  "
              f"{seconds / 60:5.1f} min  MNIST-FD {row['final_mnist_fd']:8.2f}", flush=True)
    best = min(results["candidates"], key=lambda r: r["final_mnist_fd"])
    for row in results["candidates"]:
        row["fd_ratio_to_best"] = round(row["final_mnist_fd"] / best["final_mnist_fd"], 2)
    prefix = f"{args.name}-{args.minutes:g}min-"
    out = write_results(results, prefix)
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in results["candidates"]:
        ax.plot([p["cpu_minutes"] for p in row["points"]], [p["mnist_fd"] for p in row["points"]], "o-",
                label=f"{row['candidate']} ({row['params_M']} M)")
    ax.set_xlabel("CPU-minutes of training (2 cores)")
    ax.set_ylabel(f"MNIST-FD, {args.n} DDIM-50 samples (eta = 1)")
    ax.set_yscale("log")
    ax.set_title(f"DDPM quality per CPU-minute ({args.minutes:g}-minute budget each)")
    ax.legend()
    plot = result_path(results, prefix, ".png")
    fig.savefig(plot, dpi=120, bbox_inches="tight")
    print(f"wrote {out} and {plot}")


if __name__ == "__main__":
    main()
