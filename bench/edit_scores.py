"""Scores of the edits on test digits, judged by the bundled classifier.

    python bench/edit_scores.py --n 1000          # the shipped models
    python bench/edit_scores.py --n 200 --vae runs/study-cpu/vae --ddpm runs/study-cpu/ddpm --cfg runs/study-cpu/cfg

For the first ``n`` MNIST test digits with the lower half hidden: the largest change of a known pixel
(every model), the share of completions the judge reads as the true digit (the VAE's fitted code, the
DDPM unguided, the CFG model unconditional and guided to the true label), and the share of CFG
completions guided to another digit ((y + 1) mod 10) that read as that digit. DDIM inversion: mean PSNR
of the round trip at ``--inversion-steps``. Interpolation: the share of midpoints between two test digits
of one class that keep the class. Prints a table with each part's seconds and writes
bench/results/<name>-<date>-<host>.json.
"""

from __future__ import annotations

import argparse
import time

import torch

import mnistgen
from mnistgen.data import load
from mnistgen.evaluation.fd import load_classifier
from mnistgen.images import named_mask
from results_io import stamp, write_results

CHUNK = 250  # images edited at once


def chunked(fn, *tensors):
    """``fn`` over CHUNK-sized slices of ``tensors`` (same length), concatenated."""
    return torch.cat([fn(*(t[i: i + CHUNK] for t in tensors)) for i in range(0, len(tensors[0]), CHUNK)])


def same_class_pairs(y: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (a, b) of ``count`` pairs of distinct test digits of one class, taken in order."""
    a, b = [], []
    for digit in range(10):
        idx = (y == digit).nonzero().flatten().tolist()
        pairs = list(zip(idx[0::2], idx[1::2]))[: max(1, count // 10)]
        a += [p[0] for p in pairs]
        b += [p[1] for p in pairs]
    return torch.tensor(a), torch.tensor(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="test digits to complete")
    parser.add_argument("--pairs", type=int, default=100, help="same-class pairs to interpolate between")
    parser.add_argument("--vae", default="pretrained:vae")
    parser.add_argument("--ddpm", default="pretrained:ddpm")
    parser.add_argument("--cfg", default="pretrained:cfg")
    parser.add_argument("--guidance", type=float, default=None, help="CFG completions' w (default: the run's)")
    parser.add_argument("--steps", type=int, default=None, help="RePaint's grid (default: mnistgen's)")
    parser.add_argument("--jump", type=int, default=None)
    parser.add_argument("--resample", type=int, default=None)
    parser.add_argument("--inversion-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="edits", help="results file: bench/results/<name>-<date>-<host>.json")
    args = parser.parse_args()

    test = load("test", "unit")
    x, y = test.x[: args.n], test.y[: args.n]
    mask = named_mask("lower")
    judge = load_classifier()
    read = lambda images: chunked(lambda t: judge(t).argmax(1), images)  # noqa: E731
    models = {name: mnistgen.load(path, device="cpu") for name, path in
              (("vae", args.vae), ("ddpm", args.ddpm), ("cfg", args.cfg))}
    repaint = dict(steps=args.steps, jump=args.jump, resample=args.resample)
    rows, results = [], {**stamp(), "n": args.n, "mask": "lower", "repaint": repaint, "seed": args.seed}

    def part(name: str, fn):
        start = time.perf_counter()
        value = fn()
        seconds = round(time.perf_counter() - start, 1)
        rows.append((name, value, seconds))
        results[name] = {"value": value, "seconds": seconds}
        print(f"{name:58s} {value:8.4f} {seconds:8.1f}", flush=True)

    def inpaint(model_name: str, labels=None, guidance=None):
        model, g = models[model_name], torch.Generator().manual_seed(args.seed)
        options = {} if model_name == "vae" else repaint
        if labels is None:
            return chunked(lambda t: model.inpaint(t, mask, generator=g, **options), x)
        return chunked(lambda t, lab: model.inpaint(t, mask, labels=lab, guidance=guidance, generator=g, **options),
                       x, labels)

    def completion_score(out: torch.Tensor, target: torch.Tensor, name: str) -> float:
        results[f"{name} known max diff"] = (out * mask - x * mask).abs().max().item()
        return (read(out) == target).float().mean().item()

    print(f"{'score (' + str(args.n) + ' test digits, lower half hidden)':58s} {'value':>8s} {'seconds':>8s}")
    with torch.no_grad():
        w = args.guidance if args.guidance is not None else models["cfg"].config.process.guidance
        results["guidance"] = w
        part("VAE (fitted code): accuracy", lambda: completion_score(inpaint("vae"), y, "vae"))
        part("DDPM (RePaint, unguided): accuracy", lambda: completion_score(inpaint("ddpm"), y, "ddpm"))
        part("CFG (RePaint, unconditional): accuracy", lambda: completion_score(inpaint("cfg"), y, "cfg-null"))
        part(f"CFG guided to the true digit (w = {w}): accuracy",
             lambda: completion_score(inpaint("cfg", y, w), y, "cfg-true"))
        other = (y + 1) % 10
        part(f"CFG guided to (y + 1) mod 10 (w = {w}): reads as it",
             lambda: completion_score(inpaint("cfg", other, w), other, "cfg-other"))
        for name, labels in (("ddpm", None), ("cfg", y)):
            model, k = models[name], args.inversion_steps

            def psnr(model=model, labels=labels, k=k):
                def trip(t, lab=None):
                    return model.from_noise(model.invert(t, labels=lab, steps=k), labels=lab, steps=k)
                back = chunked(trip, x) if labels is None else chunked(trip, x, labels)
                return (10 * torch.log10(1 / (back - x).pow(2).flatten(1).mean(1))).mean().item()

            part(f"{name.upper()} DDIM inversion round trip, {k} steps: mean PSNR (dB)", psnr)
        a, b = same_class_pairs(test.y, args.pairs)
        for name in ("vae", "ddpm"):
            model = models[name]

            def midpoints(model=model):
                mids = torch.cat([model.interpolate(test.x[i], test.x[j], 3, inversion_steps=args.inversion_steps)[1:2]
                                  for i, j in zip(a.tolist(), b.tolist())])
                return (read(mids) == test.y[a]).float().mean().item()

            part(f"{name.upper()} interpolation ({len(a)} same-class pairs): midpoints keep the class", midpoints)
    print(f"written: {write_results(results, args.name + '-')}")


if __name__ == "__main__":
    main()
