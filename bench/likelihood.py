"""Bits per MNIST pixel of several models side by side (what ``mnistgen evaluate --likelihood`` measures
for one run), with each estimate's standard error and seconds.

    python bench/likelihood.py                       # the shipped models, 1,000 test images
    python bench/likelihood.py --models runs/vae-grey,pretrained:ddpm --images 200 --tolerance 1e-3

The DDPM: its variational bound term by term and the probability-flow ODE; the CFG model: its
continuous-time bound (decoder at the process's end, and at the level best on 200 training images)
and the ODE, each with the true and with the null label; a VAE: its IWAE bound (grey levels under the
discretized-logistic decoder; binarized images under the Bernoulli one). Prints a table and writes
bench/results/<name>-<date>-<host>.json.
"""

from __future__ import annotations

import argparse
import time

import torch

from mnistgen.defaults import run_path
from mnistgen.evaluation.likelihood import BitsPerDim, LikelihoodRequest
from mnistgen.runs import likelihood_scores
from mnistgen.training.device import pick_device
from results_io import stamp, write_results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="pretrained:vae,pretrained:ddpm,pretrained:cfg",
                        help="comma-separated runs or pretrained:NAME")
    parser.add_argument("--images", type=int, default=None, help="test images (default 1000, or all of a run's)")
    parser.add_argument("--strata", type=int, default=None,
                        help="levels per image of a variational bound (default 100, or all of a short DDPM's)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="the ODE solver's tolerance")
    parser.add_argument("--probes", type=int, default=1, help="Hutchinson's probes")
    parser.add_argument("--iwae-k", type=int, default=1000, help="the VAE's importance samples")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--name", default="likelihood", help="results file: bench/results/<name>-<date>-<host>.json")
    args = parser.parse_args(argv)

    request = LikelihoodRequest(args.images, args.strata, args.tolerance, args.probes, args.iwae_k, args.seed, args.batch)
    device = pick_device(args.device)
    results = {**stamp(), "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "request": vars(args), "models": {}}
    for name in args.models.split(","):
        start = time.perf_counter()
        scores = likelihood_scores(run_path(name), device, request)
        results["models"][name] = {**scores.to_json(), "seconds": round(time.perf_counter() - start, 1)}
        print(f"{name}: done in {results['models'][name]['seconds']} s", flush=True)
        write_results(results, args.name + "-")  # what is done so far survives a stop
    print(f"\n{'model':18s} {'estimate':80s} {'bits/dim':>9s} {'s.e.':>7s} {'seconds':>8s}")
    for name, scores in results["models"].items():
        for row in scores["rows"]:
            r = BitsPerDim.from_json(row)
            print(f"{name:18s} {r.name[:80]:80s} {r.bits_per_dim:9.4f} {r.standard_error:7.4f} {r.seconds:8.1f}")
    print(f"written: {write_results(results, args.name + '-')}")


if __name__ == "__main__":
    main()
