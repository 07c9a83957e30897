"""Fast sampling against the full chain: MNIST-FD and seconds of DDPM samplers on one trained run.

    python bench/sampler_quality.py RUN --n 1000 --samplers ancestral,ddim-50,ddim-20

RUN is a trained DDPM run (e.g. ``study/ddpm`` after ``mnistgen reproduce``). Every sampler
draws ``n`` samples from the same seed with the run's sampling weights; each is judged by
MNIST-FD against the 10,000 test images. Prints a table with each sampler's FD relative to
ancestral-1000 and its speed-up, and writes bench/results/samplers-<date>-<host>.json.
"""

from __future__ import annotations

import argparse
import re

from mnistgen.evaluation.fd import load_classifier
from mnistgen import kinds
from mnistgen.diffusion.samplers import SamplerSettings
from mnistgen.evaluation.metrics import reference_set
from mnistgen.runs import load_run
from results_io import stamp, write_results


def settings(name: str) -> SamplerSettings:
    """'ancestral' (all T steps), 'ancestral-K', 'dpm++2m-K', 'dpm++2m-sde-K', 'ddim-K' (eta = 0) or
    'ddim-K-etaE' (e.g. ddim-50-eta0.5)."""
    if name == "ancestral":
        return SamplerSettings(sampler="ancestral")
    match = re.fullmatch(r"(ancestral|dpm\+\+2m|dpm\+\+2m-sde)-(\d+)", name)
    if match is not None:
        return SamplerSettings(sampler=match[1], steps=int(match[2]))
    match = re.fullmatch(r"ddim-(\d+)(?:-eta(\d+(?:\.\d+)?))?", name)
    if match is None:
        raise SystemExit(f"unknown sampler {name!r}; use ancestral, ancestral-K, dpm++2m-K, dpm++2m-sde-K, ddim-K "
                         "or ddim-K-etaE (e.g. ddim-50-eta0.5)")
    return SamplerSettings(sampler="ddim", steps=int(match[1]), eta=float(match[2] or 0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--samplers", default="ancestral,ddim-50,ddim-20")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="samplers", help="results file: bench/results/<name>-<date>-<host>.json")
    args = parser.parse_args()
    trained = load_run(args.run, kind="ddpm")
    classifier = load_classifier()
    reference = reference_set(classifier, None, "cpu")
    rows = []
    print(f"{'sampler':16s} {'steps':>6s} {'MNIST-FD':>9s} {'seconds':>9s} {'s/100':>7s}", flush=True)
    for name in args.samplers.split(","):
        q = kinds.get("ddpm").sample_quality(trained, classifier, reference, args.n, args.seed, settings(name))
        rows.append({"sampler": name, "steps": q.settings.steps, "eta": q.settings.eta,
                     "mnist_fd": round(q.mnist_fd, 2), "seconds": q.sample_seconds,
                     "seconds_per_100": q.seconds_per_100_samples})
        print(f"{name:16s} {q.settings.steps:6d} {q.mnist_fd:9.2f} {q.sample_seconds:9.1f} "
              f"{q.seconds_per_100_samples:7.2f}", flush=True)
    base = next((r for r in rows if r["sampler"] == "ancestral"), None)
    if base is not None:
        for r in rows:
            r["fd_vs_ancestral"] = round(r["mnist_fd"] / base["mnist_fd"], 3)
            r["speedup_vs_ancestral"] = round(base["seconds"] / r["seconds"], 1)
            print(f"{r['sampler']:16s} FD x{r['fd_vs_ancestral']:.3f} of ancestral-1000, "
                  f"{r['speedup_vs_ancestral']:.1f}x faster")
    results = {**stamp(), "run": str(args.run),
               "preset": trained.config.preset, "step": trained.history[-1].step if trained.history else 0,
               "n_samples": args.n, "seed": args.seed, "samplers": rows}
    print(f"wrote {write_results(results, f'{args.name}-')}")


if __name__ == "__main__":
    main()
