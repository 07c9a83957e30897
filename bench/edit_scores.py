"""Scores of the edits of several models side by side (what ``mnistgen evaluate --edits`` measures for
one run), judged by the bundled classifier.

    python bench/edit_scores.py                     # the shipped models, 1,000 test digits
    python bench/edit_scores.py --digits 200 --models runs/study-cpu/vae,runs/study-cpu/ddpm

For the first ``--digits`` MNIST test digits with the lower half hidden: the largest change of a known
pixel, the share of completions the judge reads as the true digit (the VAE's fitted code, the DDPM
unguided, the CFG model unconditional and guided to the true digit), the share of CFG completions guided
to (y + 1) mod 10 that read as that digit, the mean PSNR of the DDIM round trip, and the share of
midpoints between two test digits of one class that keep the class. Prints a table (one column per
model, with its seconds) and writes bench/results/<name>-<date>-<host>.json.
"""

from __future__ import annotations

import argparse

from mnistgen.defaults import run_path
from mnistgen.evaluation.edits import EditRequest
from mnistgen.runs import edit_scores
from mnistgen.training.device import pick_device
from results_io import stamp, write_results

ROWS = ("method", "known_max_diff", "method_known_max_diff", "accuracy", "guidance", "guided_accuracy", "other_label_share",
        "inversion_steps", "inversion_psnr", "interpolation_pairs", "midpoints_keep_class", "seconds")


def cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="pretrained:vae,pretrained:ddpm,pretrained:cfg",
                        help="comma-separated runs or pretrained:NAME")
    parser.add_argument("--digits", type=int, default=1000, help="test digits to complete")
    parser.add_argument("--pairs", type=int, default=100, help="same-class pairs to interpolate between")
    parser.add_argument("--inversion-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--name", default="edits", help="results file: bench/results/<name>-<date>-<host>.json")
    args = parser.parse_args(argv)

    request = EditRequest(args.digits, args.pairs, args.inversion_steps, args.seed)
    device = pick_device(args.device)
    results = {**stamp(), "device": str(device), "request": vars(args), "models": {}}
    for name in args.models.split(","):
        scores = edit_scores(run_path(name), device, request)
        results["models"][name] = scores.to_json()
        print(f"{name}: done in {scores.seconds} s", flush=True)
    names = list(results["models"])
    print(f"\n{'score (' + str(args.digits) + ' digits, lower half hidden)':40s}" + "".join(f"{n:>24s}" for n in names))
    for row in ROWS:
        print(f"{row:40s}" + "".join(f"{cell(results['models'][n].get(row))[:23]:>24s}" for n in names))
    print(f"written: {write_results(results, args.name + '-')}")


if __name__ == "__main__":
    main()
