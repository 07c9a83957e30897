"""Where a training step of a network spends its time: torch.profiler's operator table.

    python bench/profile_step.py --kind ddpm --preset cpu --steps 5 --top 15

Runs warm-up steps, then profiles ``steps`` full trainer steps (forward, backward, Adam,
clipping, EMA from step 0) on random data and prints the operators with the most
self CPU time, and the share of time in convolutions, normalisation, activations,
attention matmuls and the optimizer's multi-tensor kernels.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from torch.profiler import ProfilerActivity, profile

from run import bench_trainer  # bench/run.py

GROUPS = {  # operator-name fragments -> group
    "convolution": ("conv", "mkldnn_convolution"),
    "normalisation": ("group_norm", "native_group_norm", "layer_norm"),
    "activation": ("silu", "gelu", "relu", "sigmoid"),
    "matmul / attention": ("bmm", "mm", "addmm", "matmul", "softmax", "baddbmm", "attention"),
    "optimizer / EMA (foreach)": ("_foreach", "adam", "lerp", "clip_grad", "norm"),
}


def group_of(name: str) -> str:
    low = name.lower()
    for group, keys in GROUPS.items():
        if any(k in low for k in keys):
            return group
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", default="ddpm")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    trainer, batches = bench_trainer(args.kind, args.preset, args.steps)
    for idx in batches[:3]:
        trainer.train_step(idx)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for idx in batches[3: 3 + args.steps]:
            trainer.train_step(idx)
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.top))
    shares: dict[str, float] = defaultdict(float)
    for e in events:
        shares[group_of(e.key)] += e.self_cpu_time_total
    total = sum(shares.values())
    print(f"{'group':28s} {'ms / step':>10s} {'share':>7s}")
    for group, us in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"{group:28s} {us / 1000 / args.steps:10.2f} {100 * us / total:6.1f}%")


if __name__ == "__main__":
    main()
