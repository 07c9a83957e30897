"""Samplers side by side: MNIST-FD (and class accuracy for a conditional model) and seconds of
several samplers on one trained diffusion run, in one process.

    python bench/sampler_quality.py RUN --n 1000 --samplers ancestral,ddim-50,ddim-20
    python bench/sampler_quality.py pretrained:cfg --n 1000 --guidance 1 --samplers ancestral-16,dpm++2m-10
    python bench/sampler_quality.py pretrained:ddpm --samplers ddim-50-eta1:time,dpm++2m-sde-10:trailing:0.8

RUN is a trained diffusion run (e.g. ``study/ddpm`` after ``mnistgen reproduce``) or a pretrained
model. Every sampler draws ``n`` samples from the same seed with the run's sampling weights (a
conditional model: n // 10 of each digit, at guidance ``--guidance`` or the run's); each is judged
by MNIST-FD against the 10,000 test images. Prints a table with each sampler's FD relative to the
first and its speed-up, and writes bench/results/<name>-<date>-<host>.json.
"""

from __future__ import annotations

import argparse
import re

from mnistgen.evaluation.fd import load_classifier
from mnistgen import kinds
from mnistgen.defaults import run_path
from mnistgen.diffusion.registry import parse_sampler
from mnistgen.diffusion.samplers import GRID_SPACINGS, SAMPLERS, SamplerSettings
from mnistgen.evaluation.metrics import reference_set
from mnistgen.runs import load_run
from results_io import stamp, write_results


def settings(name: str, guidance: float | None = None, grid: str | None = None) -> SamplerSettings:
    """A registry sampler's name, optionally with its steps, DDIM's eta and a grid with its power:
    'ancestral' (the run's default steps), 'ancestral-K', 'dpm++2m-K', 'dpm++2m-sde-K', 'ddim-K' (eta = 0),
    'ddim-K-etaE', each optionally followed by ':GRID' or ':GRID:POWER' (e.g. 'dpm++2m-sde-10:trailing:0.8';
    without one, ``grid`` or the run's)."""
    unknown = SystemExit(f"unknown sampler {name!r}; use NAME, NAME-K or ddim-K-etaE with NAME one of "
                         f"{', '.join(SAMPLERS)} (e.g. ddim-50-eta0.5), optionally :GRID or :GRID:POWER with GRID "
                         f"one of {', '.join(GRID_SPACINGS)}")
    head, _, grid_part = name.partition(":")
    match = re.fullmatch(r"(?P<sampler>.+?)(?:-(?P<steps>\d+))?(?:-eta(?P<eta>\d+(?:\.\d+)?))?", head)
    if match is None or (match["eta"] and match["sampler"] != "ddim"):
        raise unknown
    try:  # the sampler, its grid and the grid's power as `mnistgen evaluate --samplers` reads them
        entry = parse_sampler(match["sampler"] + (f":{grid_part}" if grid_part else ""))
    except ValueError:
        raise unknown from None
    eta = float(match["eta"] or 0.0) if match["sampler"] == "ddim" else None
    return SamplerSettings(match["sampler"], int(match["steps"]) if match["steps"] else None, eta, guidance,
                           entry.grid or grid, entry.grid_power)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--samplers", default="ancestral,ddim-50,ddim-20")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", type=float, default=None, help="conditional models: w (default: the run's)")
    parser.add_argument("--grid", default=None, help="grid spacing for samplers without ':GRID': time, log-snr or "
                        "trailing (default: the run's)")
    parser.add_argument("--name", default="samplers", help="results file: bench/results/<name>-<date>-<host>.json")
    args = parser.parse_args()
    trained = load_run(run_path(args.run), generative=True)
    kind = kinds.get(trained.config.kind)
    classifier = load_classifier()
    reference = reference_set(classifier, None, "cpu")
    rows = []
    print(f"{'sampler':32s} {'steps':>6s} {'MNIST-FD':>9s} {'std':>5s} {'KID':>6s} {'recall':>6s} {'accuracy':>9s} "
          f"{'seconds':>9s} {'s/100':>7s}", flush=True)
    for name in args.samplers.split(","):
        asked = settings(name, args.guidance, args.grid)
        kind.check_settings(trained.config, asked)
        q = kind.sample_quality(trained, classifier, reference, args.n, args.seed, asked, progress=False)
        rows.append({**q.settings.to_json(), "name": name, "mnist_fd": round(q.mnist_fd, 2),
                     "mnist_fd_std": round(q.fd_spread.std, 2) if q.fd_spread else None,
                     "kid": round(q.kid.mean, 2), "kid_std": round(q.kid.std, 2), "precision": round(q.prdc.precision, 3),
                     "recall": round(q.prdc.recall, 3), "class_accuracy": q.class_accuracy,
                     "seconds": q.sample_seconds, "seconds_per_100": q.seconds_per_100_samples})
        accuracy = f"{100 * q.class_accuracy:8.1f}%" if q.class_accuracy is not None else f"{'-':>9s}"
        print(f"{name:32s} {q.settings.steps:6d} {q.mnist_fd:9.2f} {q.fd_spread.std:5.2f} {q.kid.mean:6.2f} "
              f"{q.prdc.recall:6.3f} {accuracy} {q.sample_seconds:9.1f} {q.seconds_per_100_samples:7.2f}", flush=True)
    base = rows[0]
    for r in rows:
        r["fd_vs_first"] = round(r["mnist_fd"] / base["mnist_fd"], 3)
        r["speedup_vs_first"] = round(base["seconds"] / r["seconds"], 1)
        print(f"{r['name']:32s} FD x{r['fd_vs_first']:.3f} of {base['name']}'s, "
              f"{r['speedup_vs_first']:.1f}x its speed")
    results = {**stamp(), "run": str(args.run),
               "preset": trained.config.preset, "step": trained.history[-1].step if trained.history else 0,
               "n_samples": args.n, "seed": args.seed, "samplers": rows}
    print(f"wrote {write_results(results, f'{args.name}-')}")


if __name__ == "__main__":
    main()
