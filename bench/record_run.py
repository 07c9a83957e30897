"""One trained and evaluated run as a result file: what it was, its config, its history and its metrics.

    mnistgen train ddpm --preset cpu --set process.prediction=x0 --out runs/ddpm-x0
    mnistgen evaluate runs/ddpm-x0 --n 1000
    python bench/record_run.py runs/ddpm-x0 --name ddpm-x0 --what "the cpu DDPM predicting x_0 instead of v"

writes bench/results/<name>-<date>-<host>.json with ``date``, ``host``, ``what``, ``config``,
``history`` and ``metrics`` (the run's config.json, history.json and metrics.json as they are), and
prints the run's headline numbers. The run must have been evaluated.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from results_io import stamp, write_results

HEADLINE = ("mnist_fd", "mnist_fd_std", "class_accuracy", "val_neg_elbo", "iwae_nll", "sample_seconds")


def record(run: Path, what: str) -> dict:
    """The result record of an evaluated run directory."""
    missing = [name for name in ("config.json", "history.json", "metrics.json") if not (run / name).is_file()]
    if missing:
        raise SystemExit(f"record_run.py: {run} has no {', '.join(missing)} (train and evaluate it first)")
    read = lambda name: json.loads((run / name).read_text())  # noqa: E731
    return {**stamp(), "what": what, "config": read("config.json"), "history": read("history.json"),
            "metrics": read("metrics.json")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--name", required=True, help="results file: bench/results/<name>-<date>-<host>.json")
    parser.add_argument("--what", required=True, help="one line: what was trained and how; name the commit in it")
    args = parser.parse_args(argv)
    results = record(args.run, args.what)
    metrics = results["metrics"]
    for key in HEADLINE:
        if key in metrics:
            print(f"{key:>16}: {metrics[key]}")
    print(f"written: {write_results(results, args.name + '-')}", file=sys.stderr)


if __name__ == "__main__":
    main()
