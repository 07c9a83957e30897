"""One piece of `mnistgen reproduce`, so that the study's models can run side by side on one GPU.

    python bench/study_parts.py start  --preset reference --out DIR --device cuda
    python bench/study_parts.py ddpm   --preset reference --out DIR --device cuda   (vae | ddpm | cfg)
    python bench/study_parts.py report --preset reference --out DIR --device cuda
    python bench/study_parts.py summary --out DIR

Each model's piece is exactly the study's (mnistgen.study.study_model: train or resume, evaluate, draw);
`report` writes the same report.html as `mnistgen reproduce`, which would now skip every finished part.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mnistgen import study  # noqa: E402
from mnistgen.training.device import pick_device  # noqa: E402
from mnistgen.errors import RunStopped, UserError  # noqa: E402
from mnistgen.files import write_json  # noqa: E402


def summary(out: Path) -> None:
    """Per model: epochs trained, training seconds, images/s of the last epoch, evaluation seconds, headline scores."""
    for kind in study.MODELS:
        run = out / kind
        history = json.loads((run / "history.json").read_text()) if (run / "history.json").is_file() else []
        metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
        line = f"{kind}: {len(history)} epochs"
        if history:
            line += (f", {sum(r['seconds'] for r in history):.0f} s of training, epoch 1 {history[0]['images_per_s']:.0f}"
                     f" / last {history[-1]['images_per_s']:.0f} images/s")
        if metrics:
            line += f"; evaluated in {metrics.get('evaluation_seconds')} s"
            for key in ("mnist_fd", "mnist_fd_std", "kid", "class_accuracy", "seconds_per_100_samples",
                        "val_neg_elbo", "iwae_nll", "binarized_iwae_nll"):
                if metrics.get(key) is not None:
                    line += f", {key} {metrics[key]:.4g}"
            for point in metrics.get("guidance_sweep") or ():
                line += f", w={point['guidance']:g}: FD {point['mnist_fd']:.2f} acc {point['class_accuracy']:.3f}"
        print(line)


def write_record(out: Path, path: Path) -> None:
    """The study's files a bench result keeps: per model its history, config and metrics (where written),
    and the study's provenance, in one JSON file."""
    record = {kind: {name: json.loads((out / kind / f"{name}.json").read_text())
                     for name in ("history", "config", "metrics") if (out / kind / f"{name}.json").is_file()}
              for kind in study.MODELS}
    record["provenance"] = study.read_provenance(out)
    write_json(path, record)  # atomic, never through a link


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=("start", *study.MODELS, "report", "summary"))
    p.add_argument("--preset", default="reference", choices=tuple(study.SETTINGS))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", type=Path, default=None, help="summary: also write the histories, configs, metrics "
                                                           "and provenance of the study here")
    args = p.parse_args(argv)
    try:
        if args.part == "summary":
            summary(args.out)
            if args.json is not None:
                write_record(args.out, args.json)
            return 0
        device = pick_device(args.device)
        if args.part == "start":
            args.out.mkdir(parents=True, exist_ok=True)
            study.check_study(args.preset, args.out)
            study.write_provenance(args.out, args.preset, device)
        elif args.part == "report":
            print(study.write_report(args.out, args.preset, device))
        else:
            study.study_model(args.part, args.preset, args.out, args.data_dir, device, show_progress=True)  # a log file gets a line per long step
    except UserError as e:
        print(f"study_parts: error: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:  # SIGINT / SIGTERM: the run checkpointed and can be resumed
        print(f"study_parts: {e}", file=sys.stderr)
        return e.exit_status
    return 0


if __name__ == "__main__":
    sys.exit(main())
