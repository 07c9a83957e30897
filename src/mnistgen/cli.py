"""The ``mnistgen`` command: train, sample, evaluate, figures, reproduce.

Bad input of any kind ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from pathlib import Path

from mnistgen.config import DATASETS, KINDS, PRESETS, apply_overrides, preset
from mnistgen.errors import Interrupted, RunStopped, StopNow, UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_at_least(minimum: int):
    """An argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


_non_negative_int = _int_at_least(0)
_positive_int = _int_at_least(1)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu) | cpu | cuda | mps")
    p.add_argument("--data-dir", default=None,
                   help="folder with the four IDX files (else $MNISTGEN_DATA, the bundled MNIST, or a download)")


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model into a run directory",
                       description="Train a model. Every epoch writes checkpoints/epoch_NNN.pt, checkpoints/last.pt, "
                                   "history.json and a sample grid in samples/; --resume continues a stopped run.")
    p.add_argument("kind", choices=KINDS, help="which model")
    p.add_argument("--preset", default=None,
                   help="named settings: reference (the study's), cpu (fits a 2-core CPU), smoke (seconds); "
                        "default: reference on a CUDA GPU, cpu elsewhere")
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=_non_negative_int)
    p.add_argument("--dataset", choices=DATASETS)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override any config field, e.g. --set train.ema_decay=0.999 (sections: data, train, "
                        "model, process)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: runs/KIND-PRESET)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_common(p)


def _sample_parser(sub) -> None:
    p = sub.add_parser("sample", help="draw samples from a trained run",
                       description="Draw samples: writes FILE.png (a grid) and FILE.npz (images float32 in [0, 1], "
                                   "shape (N, 1, H, W); labels for the conditional model).")
    p.add_argument("run", type=Path)
    p.add_argument("--n", type=_positive_int, default=64, help="number of samples (per class with --label all)")
    p.add_argument("--out", type=Path, required=True, help="FILE, FILE.png or FILE.npz: both files are written")
    p.add_argument("--sampler", choices=("ancestral", "ddim"), default=None, help="DDPM only (default: the run's)")
    p.add_argument("--steps", type=_positive_int, default=None, help="sampling steps (DDIM or CFG grid)")
    p.add_argument("--eta", type=_non_negative_float, default=None, help="DDIM eta in [0, 1]")
    p.add_argument("--label", default=None, help="CFG only: a digit 0-9 or 'all'")
    p.add_argument("--guidance", type=_non_negative_float, default=None, help="CFG guidance weight w >= 0")
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p.add_argument("--device", default="auto")


def _run_parser(sub, name: str, help: str, description: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("run", type=Path)
    _add_common(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mnistgen", description="Train, sample and evaluate generative models of MNIST digits.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _train_parser(sub)
    _sample_parser(sub)
    p = _run_parser(sub, "evaluate", "compute a run's metrics into RUN/metrics.json",
                    "Evaluate a run. Every generating model: MNIST-FD of N samples against the MNIST test set and "
                    "the class histogram of its samples, judged by mnistgen's classifier (not Inception FID). "
                    "VAE: also the validation negative ELBO and the IWAE bound on -log p(x). CFG: also class "
                    "accuracy. Classifier runs: test accuracy, and RUN/classifier.pt (compact weights).")
    p.add_argument("--n", type=_positive_int, default=1000, help="samples to judge (CFG: N // 10 per digit)")
    p.add_argument("--sampler", choices=("ancestral", "ddim"), default=None, help="DDPM sampler (default: the run's)")
    p.add_argument("--steps", type=_positive_int, default=None, help="sampling steps (DDIM or CFG grid)")
    p.add_argument("--eta", type=_non_negative_float, default=None, help="DDIM eta in [0, 1]")
    p.add_argument("--guidance", type=_non_negative_float, default=None, help="CFG guidance weight w >= 0")
    p.add_argument("--guidance-sweep", default=None, metavar="W1,W2,...",
                   help="CFG: also MNIST-FD and class accuracy for each w, e.g. 0,0.3,1,2,4")
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p.add_argument("--classifier", type=Path, default=None, help="judge weights (default: the bundled classifier)")
    p.add_argument("--iwae-k", type=_positive_int, default=500, help="importance samples per image (VAE)")
    p.add_argument("--n-images", type=_positive_int, default=10_000, help="test images for the IWAE bound (VAE)")
    _run_parser(sub, "figures", "render a run's figures into RUN/figures/",
                "Render the study's figures for a run (VAE: F1-F8, DDPM: F9-F11, CFG: F12 and the guidance sweep).")
    p = sub.add_parser("reproduce", help="the whole study: train, evaluate, draw, report",
                       description="Train (or resume) the VAE, DDPM and CFG runs under OUT, evaluate them, render "
                                   "every figure and write OUT/report.html. Re-running resumes and skips what is done.")
    p.add_argument("--preset", default=None, help="reference (the study's settings, for a GPU) | cpu | smoke; "
                                                     "default: reference on a CUDA GPU, cpu elsewhere")
    p.add_argument("--out", type=Path, default=None, help="study directory (default: runs/study-PRESET)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_common(p)
    return parser


def _preset_name(requested: str | None, device, log: bool) -> str:
    """The named preset, or the device's default (with a line saying which and why when ``log``)."""
    from mnistgen.training.device import default_preset

    if requested is not None:
        return requested
    choice = default_preset(device)
    if log:
        print(f"mnistgen: no --preset given: using {choice.name!r} because {choice.reason}")
    return choice.name


def _overrides(args) -> dict[str, str]:
    overrides = {"train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.lr": args.lr,
                 "train.seed": args.seed, "data.dataset": args.dataset}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq:
            raise UserError(f"--set expects SECTION.FIELD=VALUE, got {item!r}")
        overrides[key.strip()] = value.strip()
    return overrides


def _only_existing(candidates: list[Path], device, default_for) -> Path:
    """The device's default run directory, unless it does not exist and exactly one other candidate
    does (a run started under another default, e.g. on the CPU before a GPU was attached)."""
    from mnistgen.training.device import default_preset

    from mnistgen.training.rundir import RunDir

    default = default_for(default_preset(device).name)
    started = [c for c in candidates if c.is_dir() and any(RunDir(p).has_checkpoint() for p in (c, *c.iterdir()))]
    return started[0] if default not in started and len(started) == 1 else default


def _saved_config(out: Path | None):
    """The config.json of the run at ``out`` (None when there is none to read)."""
    from mnistgen.training.rundir import RunDir

    if out is None or not (Path(out) / "config.json").is_file():
        return None
    return RunDir(Path(out)).read_config()


def _train(args) -> int:
    from mnistgen.runs import check_resume, train
    from mnistgen.training import distributed
    from mnistgen.training.device import pick_device
    from mnistgen.training.rundir import RunDir

    device = pick_device(args.device)
    main_process = distributed.rank() == 0
    overrides = _overrides(args)
    if args.resume and args.preset is None and args.out is None:
        args.out = _only_existing([Path("runs") / f"{args.kind}-{p}" for p in PRESETS[args.kind]], device,
                                  lambda p: Path("runs") / f"{args.kind}-{p}")
    saved = _saved_config(args.out) if args.resume and args.preset is None else None
    if saved is not None:  # --resume: the run's own settings, with the overrides given (check_resume judges them)
        if saved.kind != args.kind:
            raise UserError(f"{args.out} holds a {saved.kind!r} run, not {args.kind!r}")
        config = apply_overrides(saved, overrides)
        check_resume(RunDir(args.out), config)  # refused before a word about resuming
        if main_process:
            print(f"mnistgen: resuming {args.out} with its own settings (preset {saved.preset!r})")
    else:
        name = _preset_name(args.preset, device, log=main_process)
        config = apply_overrides(preset(args.kind, name), overrides)  # every check before any work
    out = args.out or Path("runs") / f"{config.kind}-{config.preset}"
    device = distributed.setup(device)
    try:
        history = train(config, out, args.data_dir, device, args.resume, not args.no_progress)
    except BaseException:
        distributed.abort()  # no barrier: the other ranks may wait inside a collective
        raise
    distributed.teardown()
    last = history[-1]
    if main_process:
        print(f"{config.kind} trained: {last.epoch} epochs, train loss {last.train_loss:.4f}, "
              f"val loss {last.val_loss:.4f}; run directory {out}")
    return 0


GRID_PER_CLASS = 16  # --label all: the PNG shows this many per digit at most
GRID_MAX = 400  # otherwise: the first 400 samples


def _sample(args) -> int:
    import numpy as np
    import torch

    from mnistgen import kinds
    from mnistgen.arrays import ArraySpec, npz_size, write_npz
    from mnistgen.diffusion.samplers import SamplerSettings
    from mnistgen.files import check_writable_dir
    from mnistgen.images import save_grid
    from mnistgen.runs import load_run
    from mnistgen.training.device import pick_device

    stem = args.out.with_suffix("") if args.out.suffix in (".png", ".npz") else args.out
    if stem.is_dir() or args.out.is_dir():
        raise UserError(f"--out {args.out} is a directory; give a file name such as {args.out / 'samples'}")
    check_writable_dir(stem.parent, "--out's folder")
    device = pick_device(args.device)
    trained = load_run(args.run, device, generative=True)
    config, kind = trained.config, kinds.get(trained.config.kind)
    settings = SamplerSettings(args.sampler, args.steps, args.eta, args.guidance)
    kind.check_settings(config, settings)
    if not kind.takes_labels and args.label is not None:
        labelled = " or ".join(name for name, k in kinds.REGISTRY.items() if k.takes_labels)
        raise UserError(f"--label applies to the {labelled} model; {args.run} holds a {config.kind!r} model")
    if kind.takes_labels and args.label is None:
        raise UserError(f"the {config.kind} model needs --label 0-9 or --label all")
    n = args.n * (10 if args.label == "all" else 1)
    specs = {"images": ArraySpec(np.float32, (n, *kind.image_shape(config)), ())}
    if kind.takes_labels:
        specs = {"labels": ArraySpec(np.int64, (n,), ()), **specs}
    _check_free_space(stem.with_suffix(".npz"), npz_size(specs))  # before anything of size n exists
    labels = _parse_labels(args.label, args.n) if kind.takes_labels else None
    if labels is not None:
        specs["labels"] = specs["labels"]._replace(chunks=[labels.numpy()])
    shown = _grid_indices(n, args.n if args.label == "all" else None)
    grid: list[torch.Tensor] = []

    def batches():
        first = 0
        g = torch.Generator(device).manual_seed(args.seed)
        with torch.no_grad():
            for batch in kind.sample_batches(config, trained.model, n, g, settings, labels, trained.process,
                                             progress=True):
                picked = shown[(shown >= first) & (shown < first + len(batch))] - first
                grid.append(batch[picked])
                first += len(batch)
                yield batch.numpy()

    specs["images"] = specs["images"]._replace(chunks=batches())
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_npz(stem.with_suffix(".npz"), specs)
    per_row = min(args.n, GRID_PER_CLASS) if args.label == "all" else None
    save_grid(torch.cat(grid), stem.with_suffix(".png"), nrow=per_row)
    print(f"wrote {n} samples to {stem.with_suffix('.npz')} and a grid of {len(shown)} to {stem.with_suffix('.png')}")
    return 0


def _grid_indices(n: int, per_class: int | None):
    """Which samples the PNG shows: the first few of each digit (``per_class`` samples each), or the first."""
    import torch

    if per_class is None:
        return torch.arange(min(n, GRID_MAX))
    k = min(per_class, GRID_PER_CLASS)
    return (torch.arange(10)[:, None] * per_class + torch.arange(k)[None, :]).flatten()


def _check_free_space(path: Path, needed: int) -> None:
    from mnistgen.files import free_bytes

    free = free_bytes(path.parent)
    if needed > free:
        raise UserError(f"{path} would need {needed / 2**30:.2f} GiB and its disk has {free / 2**30:.2f} GiB free; "
                        f"lower --n or choose another --out")


def _parse_labels(text: str, n: int):
    import torch

    from mnistgen.data.mnist import labels_per_digit

    if text == "all":
        return labels_per_digit(n)
    if len(text) != 1 or text not in "0123456789":
        raise UserError(f"--label must be a digit 0-9 or 'all', got {text!r}")
    return torch.full((n,), int(text), dtype=torch.long)


def _evaluate(args) -> int:
    from mnistgen.diffusion.samplers import SamplerSettings
    from mnistgen.kinds import EvaluationRequest
    from mnistgen.runs import evaluate_run
    from mnistgen.training.device import pick_device

    sweep = tuple(_parse_weights(args.guidance_sweep)) if args.guidance_sweep else None
    request = EvaluationRequest(n_samples=args.n, seed=args.seed,
                                settings=SamplerSettings(args.sampler, args.steps, args.eta, args.guidance),
                                iwae_k=args.iwae_k, n_images=args.n_images, guidance_sweep=sweep,
                                sweep_samples=None, classifier_path=args.classifier)
    metrics = evaluate_run(args.run, pick_device(args.device), args.data_dir, request)
    for key, value in metrics.to_json().items():
        if isinstance(value, float):
            print(f"{key}: {value:.4f}")
    for p in metrics.guidance_sweep or ():
        print(f"w={p.guidance:g}: mnist_fd {p.mnist_fd:.2f}, class_accuracy {p.class_accuracy:.4f}")
    print(f"wrote {Path(args.run) / 'metrics.json'}")
    return 0


def _parse_weights(text: str) -> list[float]:
    try:
        weights = [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise UserError(f"--guidance-sweep expects numbers separated by commas, got {text!r}") from None
    if not weights or not all(math.isfinite(w) and w >= 0 for w in weights):
        raise UserError(f"--guidance-sweep needs one or more finite weights >= 0, got {text!r}")
    return weights


def _figures(args) -> int:
    from mnistgen.runs import render_figures
    from mnistgen.training.device import pick_device

    paths = render_figures(args.run, pick_device(args.device), args.data_dir)
    for p in paths:
        print(p)
    return 0


def _reproduce(args) -> int:
    from mnistgen.study import MODELS, SETTINGS, run_study
    from mnistgen.files import check_writable_dir
    from mnistgen.training.device import pick_device

    if args.preset is not None and args.preset not in SETTINGS:
        raise UserError(f"bad preset {args.preset!r}; valid: {', '.join(SETTINGS)}")
    device = pick_device(args.device)
    if args.preset is None:  # an existing study continues with its own preset
        args.out = args.out or _only_existing([Path("runs") / f"study-{p}" for p in SETTINGS], device,
                                              lambda p: Path("runs") / f"study-{p}")
        saved = [c for c in (_saved_config(args.out / kind) for kind in MODELS) if c is not None]
        args.preset = saved[0].preset if saved else None
        if args.preset is not None:
            print(f"mnistgen: continuing the study in {args.out} (preset {args.preset!r})")
    if args.preset not in (None, *SETTINGS):
        raise UserError(f"bad preset {args.preset!r} in the study's config.json; valid: {', '.join(SETTINGS)}")
    name = _preset_name(args.preset, device, log=True)
    out = args.out or Path("runs") / f"study-{name}"
    check_writable_dir(out, "study directory")
    start = time.perf_counter()
    report = run_study(name, out, args.data_dir, device, not args.no_progress)
    print(f"study done in {time.perf_counter() - start:.0f} s; open {report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad argument (2, one line already printed)
        return int(e.code or 0)
    handlers = {"train": _train, "sample": _sample, "evaluate": _evaluate, "figures": _figures,
                "reproduce": _reproduce}
    try:
        return handlers[args.command](args)
    except UserError as e:
        from mnistgen.training import distributed

        if distributed.rank() == 0:  # every rank sees the same bad input: one line is enough
            print(f"mnistgen: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        from mnistgen.training import distributed

        if distributed.rank() == 0:  # torchrun signals every rank; one line is enough
            print(f"mnistgen: {e}", file=sys.stderr)
        return e.exit_status
    except RunStopped as e:
        print(f"mnistgen: error: {e}", file=sys.stderr)
        return e.exit_status
    except StopNow as e:
        print(f"mnistgen: stopped at once by a second {signal.Signals(e.exit_status - 128).name}, without saving; "
              f"continue from the last checkpoint with --resume", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("mnistgen: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # outside training: a sample file, a figure, metrics.json
        print(f"mnistgen: error: could not write {e.filename or 'a file'}: {e.strerror or e}", file=sys.stderr)
        return 1
    except Exception as e:
        from mnistgen.training import distributed

        if distributed.launched_by_torchrun():  # torchrun stops the other ranks when this one exits
            distributed.record_for_torchrun(e)
            if not distributed.lost_a_peer(e):  # the rank that failed first says why, the others stay quiet
                print(f"mnistgen: error: process {distributed.rank()} of {distributed.world_size()} failed: "
                      f"{type(e).__name__}: {e}", file=sys.stderr)
            return 1
        raise

if __name__ == "__main__":
    sys.exit(main())
