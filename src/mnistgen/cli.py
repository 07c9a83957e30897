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

from mnistgen.config import DATASETS, KINDS
from mnistgen.diffusion.registry import GRID_SPACINGS, SAMPLERS
from mnistgen.errors import Interrupted, RunStopped, StopNow, UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_at_least(minimum: int):
    """An argparse type: a whole number >= ``minimum``."""
    return _int_in(minimum, None)


def _int_in(minimum: int, maximum: int | None):
    """An argparse type: a whole number in [minimum, maximum] (no upper end when None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}" if maximum is None else
                                             f"must be in [{minimum}, {maximum}], got {value}")
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


def _digit(text: str) -> int:
    """An argparse type: a digit 0-9."""
    if len(text) != 1 or text not in "0123456789":
        raise argparse.ArgumentTypeError(f"must be a digit 0-9, got {text!r}")
    return int(text)


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
    p.add_argument("--tensorboard", action="store_true",
                   help="log to OUT/tb for `tensorboard --logdir runs/` (= --set train.tensorboard=true; needs "
                        "pip install 'mnistgen[tensorboard]')")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_common(p)


def _add_sampler_options(p: argparse.ArgumentParser) -> None:
    """The diffusion models' sampler options, from the sampler registry."""
    p.add_argument("--sampler", choices=tuple(SAMPLERS), default=None,
                   help="diffusion models (default: the run's); " + "; ".join(f"{name}: {spec.summary}"
                                                                        for name, spec in SAMPLERS.items()))
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="network evaluations (a guided step's batched pair counts once)")
    p.add_argument("--eta", type=_non_negative_float, default=None, help="DDIM eta in [0, 1]")
    p.add_argument("--grid", choices=GRID_SPACINGS, default=None,
                   help="where the levels lie (default: the run's): evenly in the process's time, in log-SNR, or "
                        "trailing (evenly in time counted back from the noise: the DDPM's last evaluation at "
                        "t = T/K - 1, not 0; for the CFG model the same as time)")
    p.add_argument("--grid-power", type=float, default=None,
                   help="time / trailing grids: the fraction of time left at level k is (1 - k/K)^P "
                        "(default: the run's on its own grid, else 1; < 1 moves the levels towards the noise)")


def _sample_parser(sub) -> None:
    p = sub.add_parser("sample", help="draw samples from a trained run",
                       description="Draw samples: writes FILE.png (a grid) and FILE.npz (images float32 in [0, 1], "
                                   "shape (N, 1, H, W); labels for the conditional model).")
    p.add_argument("run", type=Path, help="a run directory, or pretrained:vae | pretrained:ddpm | pretrained:cfg")
    p.add_argument("--n", type=_positive_int, default=64, help="number of samples (per class with --label all)")
    p.add_argument("--out", type=Path, required=True, help="FILE, FILE.png or FILE.npz: both files are written")
    _add_sampler_options(p)
    p.add_argument("--label", default=None, help="CFG only: a digit 0-9 or 'all'")
    p.add_argument("--guidance", type=_non_negative_float, default=None, help="CFG guidance weight w >= 0")
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p.add_argument("--animate", type=Path, default=None, metavar="FILE.gif",
                   help="diffusion models: also an animated GIF of the reverse process of up to 64 samples "
                        "(with --label all, six of each digit), drawn afresh from the same seed")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run_parser(sub, name: str, help: str, description: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("run", type=Path, help="a run directory, or pretrained:vae | pretrained:ddpm | pretrained:cfg")
    p.add_argument("--out", type=Path, default=None,
                   help="pretrained models only: the directory to write into (a copy of the model's run)")
    _add_common(p)
    return p


EDITS = ("inpaint", "invert", "interpolate")


def _edit_parser(sub) -> None:
    p = sub.add_parser("edit", help="inpaint, invert or interpolate digits with a trained model",
                       description="Edit digits with a trained model. inpaint: fill in the pixels a mask hides "
                                   "(the DDPM and the CFG model by RePaint, Lugmayr et al. 2022; the VAE by fitting "
                                   "its code); the known pixels are kept exactly. invert: the noise that DDIM "
                                   "(eta = 0) maps to each image, and the image it maps back to. interpolate: the "
                                   "path between the first two images (the diffusion models: slerp of their "
                                   "inverted noises; the VAE: a straight line between their codes). Writes FILE.npz "
                                   "and FILE.png (inputs, results).")
    p.add_argument("task", choices=EDITS)
    p.add_argument("run", type=Path, help="a run directory, or pretrained:vae | pretrained:ddpm | pretrained:cfg")
    p.add_argument("--input", type=Path, action="append", required=True, metavar="FILE",
                   help="a PNG (one greyscale 28x28 digit) or an .npz whose 'images' array holds (N, 1, 28, 28) "
                        "floats in [0, 1]; interpolate: give two, or one holding two images")
    p.add_argument("--out", type=Path, required=True, help="FILE, FILE.png or FILE.npz: both files are written")
    p.add_argument("--mask", default=None,
                   help="inpaint: the half to fill in (lower, upper, left, right) or a 28x28 PNG, white = known")
    p.add_argument("--label", type=_digit, default=None,
                   help="CFG only: condition on (and with --guidance, guide towards) this digit; default: "
                        "unconditional")
    p.add_argument("--guidance", type=_non_negative_float, default=None, help="inpaint, CFG with --label: w >= 0")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="inpaint: RePaint's grid (default 50); invert / interpolate: DDIM steps (default 100)")
    p.add_argument("--jump", type=_positive_int, default=None, help="inpaint: RePaint's jump length (default 5)")
    p.add_argument("--resample", type=_positive_int, default=None,
                   help="inpaint: RePaint's passes per jump (default 5; 1 = no resampling)")
    p.add_argument("--frames", type=_int_at_least(2), default=None,
                   help="interpolate: images along the path, both ends included (default 11)")
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p.add_argument("--device", default="auto")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mnistgen", description="Train, sample and evaluate generative models of MNIST digits.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _train_parser(sub)
    _sample_parser(sub)
    _edit_parser(sub)
    p = _run_parser(sub, "evaluate", "compute a run's metrics into RUN/metrics.json",
                    "Evaluate a run. Every generating model: MNIST-FD of N samples against the MNIST test set (with "
                    "its bootstrap std and FD_inf), KID, precision / recall / density / coverage and the class "
                    "histogram of its samples, all in the features of mnistgen's classifier (not Inception). "
                    "VAE: also the negative ELBO and the IWAE bound on -log p(x), on grey-level and on "
                    "dynamically binarized test images. CFG: also class accuracy and per-digit coverage. "
                    "Classifier runs: test accuracy, and RUN/classifier.safetensors (compact weights).")
    p.add_argument("--n", type=_positive_int, default=1000, help="samples to judge (CFG: N // 10 per digit)")
    _add_sampler_options(p)
    p.add_argument("--guidance", type=_non_negative_float, default=None, help="CFG guidance weight w >= 0")
    p.add_argument("--guidance-sweep", default=None, metavar="W1,W2,...",
                   help="CFG: also MNIST-FD, KID and class accuracy for each w, e.g. 0,0.3,1,2,4")
    p.add_argument("--sweep-samples", type=_positive_int, default=None,
                   help="samples per point of --guidance-sweep and --steps-sweep (default: --n)")
    p.add_argument("--steps-sweep", default=None, metavar="K1,K2,...",
                   help="diffusion models: also every sample metric, with its spread, and the seconds per 100 "
                        "samples at each number of steps, e.g. 5,10,20,50 (each in 1..T for the DDPM, "
                        "1..100000 for the CFG model; no repeats)")
    p.add_argument("--samplers", default=None, metavar="S1,S2,...",
                   help="the samplers of --steps-sweep (default: the run's), each NAME, NAME:GRID or NAME:GRID:POWER, "
                        "e.g. ddim:time,dpm++2m-sde:trailing:0.8")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p.add_argument("--classifier", type=Path, default=None,
                   help="judge weights: a classifier run's classifier.safetensors or checkpoint (default: the "
                        "bundled classifier)")
    p.add_argument("--iwae-k", type=_positive_int, default=500, help="importance samples per image (VAE)")
    p.add_argument("--n-images", type=_positive_int, default=10_000, help="test images for the IWAE bound (VAE)")
    p.add_argument("--edits", action="store_true",
                   help="also score the model's edits of test digits with the lower half hidden: known pixels kept, "
                        "completions read as the true digit (CFG: also guided, with the run's w whatever --guidance "
                        "says), the DDIM round trip's PSNR, interpolation midpoints that keep the class")
    p.add_argument("--edit-digits", type=_positive_int, default=None,
                   help="test digits to complete (with --edits; default 1000)")
    p.add_argument("--edit-pairs", type=_positive_int, default=None,
                   help="same-class pairs to interpolate (with --edits; default 100)")
    p.add_argument("--inversion-steps", type=_positive_int, default=None,
                   help="DDIM levels of the round trip (with --edits; default 100)")
    p.add_argument("--likelihood", action="store_true",
                   help="also bits per MNIST pixel of test images: DDPM: its variational bound term by term and "
                        "the probability-flow ODE; CFG: the continuous-time bound and the ODE, with the true and "
                        "with the null label; VAE: the IWAE bound (--iwae-k) under its decoder")
    p.add_argument("--likelihood-images", type=_positive_int, default=None,
                   help="test images (with --likelihood; default 1000, or all of a run's if fewer)")
    p.add_argument("--strata", type=_positive_int, default=None,
                   help="levels per image of a variational bound's estimate (with --likelihood; default 100, or every "
                        "level of a shorter DDPM)")
    p.add_argument("--ode-tolerance", type=float, default=None,
                   help="the ODE solver's relative and absolute tolerance (with --likelihood; default 1e-4)")
    p.add_argument("--probes", type=_positive_int, default=None,
                   help="Hutchinson's probes for the ODE's divergence (with --likelihood; default 1)")
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
    p = sub.add_parser("demo", help="a local web page to sample, inpaint and explore the shipped models",
                       description="Serve a page (Gradio, the optional extra mnistgen[demo]) that samples the shipped "
                                   "models with a chosen digit, guidance, sampler, steps and seed while the reverse "
                                   "chain plays; completes a test digit, an upload or a drawing with half of it "
                                   "hidden; and moves a test digit's VAE code along sliders. Offline; listens on "
                                   "127.0.0.1 unless --host says otherwise; stop it with Ctrl+C.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_int_in(1, 65535), default=7860)
    p.add_argument("--device", default="cpu", help="cpu (default) | cuda | mps | auto")
    p = sub.add_parser("export", help="write a finished study's models in the form mnistgen ships them",
                       description="Write the VAE, DDPM and CFG runs of a finished study as the pretrained models "
                                   "(float16 sampling weights as model.safetensors, config, history, metrics, the "
                                   "previews the figures read, MODEL_CARD.md, and MANIFEST.json with every file's "
                                   "SHA-256) into DEST/vae, DEST/ddpm, DEST/cfg. An earlier export there loses only "
                                   "the files its manifest lists.")
    p.add_argument("study", type=Path, help="a study directory written by mnistgen reproduce")
    p.add_argument("--to", type=Path, required=True,
                   help="the folder to write into (never the installed package; src/mnistgen/pretrained in a checkout "
                        "refreshes the shipped models)")
    p.add_argument("--commit", default=None, help="the commit that trained it (default: the study's provenance)")
    p.add_argument("--trained-on", default=None, help="the device it was trained on (default: the study's provenance)")
    return parser


def _overrides(args) -> dict[str, str]:
    overrides = {"train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.lr": args.lr,
                 "train.seed": args.seed, "data.dataset": args.dataset,
                 "train.tensorboard": True if getattr(args, "tensorboard", False) else None}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq:
            raise UserError(f"--set expects SECTION.FIELD=VALUE, got {item!r}")
        overrides[key.strip()] = value.strip()
    return overrides


def _train(args) -> int:
    from mnistgen import api
    from mnistgen.training import distributed

    result = api.train(args.kind, args.preset, args.out, overrides=_overrides(args), resume=args.resume,
                       device=args.device, data_dir=args.data_dir, progress=not args.no_progress)
    last = result.history[-1]
    if distributed.rank() == 0:
        print(f"{result.config.kind} trained: {last.epoch} epochs, train loss {last.train_loss:.4f}, "
              f"val loss {last.val_loss:.4f}; run directory {result.path}")
    return 0


GRID_PER_CLASS = 16  # --label all: the PNG shows this many per digit at most
GRID_MAX = 400  # otherwise: the first 400 samples
ANIMATE_MAX = 64  # --animate shows the reverse process of 64 samples at most
ANIMATE_PER_DIGIT = 6  # ... and of six of each digit with --label all


def _sample(args) -> int:
    import numpy as np
    import torch

    from mnistgen import api
    from mnistgen.arrays import ArraySpec, npz_size, write_npz
    from mnistgen.data.mnist import labels_per_digit
    from mnistgen.diffusion.registry import SamplerSettings
    from mnistgen.files import check_writable_dir
    from mnistgen.images import save_grid

    npz, png = _output_files(args.out)
    if args.animate is not None:
        if args.animate.suffix.lower() != ".gif":
            raise UserError(f"--animate writes a GIF; give a file name ending in .gif, got {args.animate}")
        check_writable_dir(args.animate.parent, "--animate's folder")
    model = api.load(args.run, args.device)
    options = dict(sampler=args.sampler, steps=args.steps, eta=args.eta, guidance=args.guidance, grid=args.grid,
                   grid_power=args.grid_power)
    model.kind.check_settings(model.config, SamplerSettings(**options))
    model.kind.check_labels(args.label is not None, "--label 0-9 or --label all")
    if args.animate is not None and not model.kind.iterative:
        raise UserError(f"--animate shows a reverse process; the {model.config.kind} model samples in one pass")
    digit = _parse_label(args.label) if model.kind.takes_labels else None
    n = args.n * 10 if digit == "all" else args.n
    specs = {"images": ArraySpec(np.float32, (n, 1, 28, 28), ())}
    if digit is not None:
        specs = {"labels": ArraySpec(np.int64, (n,), ()), **specs}
    _check_free_space(npz, npz_size(specs))  # before anything of size n exists
    labels = None
    if digit is not None:
        labels = labels_per_digit(args.n) if digit == "all" else torch.full((n,), digit, dtype=torch.long)
        specs["labels"] = specs["labels"]._replace(chunks=[labels.numpy()])
    batches = model.sample_batches(n, labels=labels, generator=torch.Generator(model.device).manual_seed(args.seed),
                                   progress=not args.no_progress, **options)
    shown = _grid_indices(n, args.n if args.label == "all" else None)
    grid: list[torch.Tensor] = []

    def chunks():
        first = 0
        for batch in batches:
            picked = shown[(shown >= first) & (shown < first + len(batch))] - first
            grid.append(batch[picked])
            first += len(batch)
            yield batch.numpy()

    specs["images"] = specs["images"]._replace(chunks=chunks())
    npz.parent.mkdir(parents=True, exist_ok=True)
    write_npz(npz, specs)
    per_row = min(args.n, GRID_PER_CLASS) if args.label == "all" else None
    save_grid(torch.cat(grid), png, nrow=per_row)
    print(f"wrote {n} samples to {npz} and a grid of {len(shown)} to {png}")
    if args.animate is not None:
        shown = labels_per_digit(min(args.n, ANIMATE_PER_DIGIT)) if digit == "all" else labels
        shown_n = min(n, ANIMATE_MAX) if shown is None else min(len(shown), ANIMATE_MAX)
        model.animate(args.animate, shown_n, labels=shown[:shown_n] if shown is not None else None,
                      generator=torch.Generator(model.device).manual_seed(args.seed), **options)
        print(f"wrote the reverse process of {shown_n} samples (drawn afresh, same seed) to {args.animate}")
    return 0


ONLY = {"--mask": ("inpaint",), "--guidance": ("inpaint",), "--jump": ("inpaint",), "--resample": ("inpaint",),
        "--frames": ("interpolate",)}  # edit options that apply to some tasks only


def _edit(args) -> int:
    import numpy as np
    import torch

    from mnistgen import api
    from mnistgen.arrays import ArraySpec, write_npz
    from mnistgen.images import read_images, read_mask, save_grid

    given = {"--mask": args.mask, "--guidance": args.guidance, "--jump": args.jump, "--resample": args.resample,
             "--frames": args.frames}
    extra = [flag for flag, value in given.items() if value is not None and args.task not in ONLY[flag]]
    if extra:
        raise UserError(f"{', '.join(extra)} does not apply to edit {args.task}")
    if args.task == "inpaint" and args.mask is None:
        raise UserError("edit inpaint needs --mask (lower, upper, left, right or a PNG, white = known)")
    npz, png = _output_files(args.out)
    images = torch.cat([read_images(path) for path in args.input])  # (N, 1, 28, 28), checked
    if args.task == "interpolate" and len(images) < 2:
        raise UserError(f"edit interpolate needs two images; --input gave {len(images)}")
    mask = read_mask(args.mask) if args.mask is not None else None
    model = api.load(args.run, args.device)
    label, steps = args.label, args.steps or 100
    if args.task == "inpaint":
        out = model.inpaint(images, mask, labels=label, guidance=args.guidance, steps=args.steps, jump=args.jump,
                            resample=args.resample, generator=torch.Generator(model.device).manual_seed(args.seed))
        shown_inputs = images * mask + 0.5 * (1 - mask)  # the hidden part grey
        arrays, shown, rows = {"images": out, "mask": mask.expand_as(images)}, [shown_inputs, out], len(out)
    elif args.task == "invert":
        noise = model.invert(images, labels=label, steps=steps)
        back = model.from_noise(noise, labels=label, steps=steps)
        arrays, shown, rows = {"noise": noise, "images": back}, [images, back], len(back)
    else:
        path = model.interpolate(images[0], images[1], args.frames or 11, labels=label, inversion_steps=steps)
        arrays, shown, rows = {"images": path}, [path], len(path)
    specs = {name: ArraySpec(np.float32, tuple(a.shape), [a.numpy().astype(np.float32)]) for name, a in arrays.items()}
    write_npz(npz, specs)
    save_grid(torch.cat(shown), png, nrow=min(rows, 16) if len(shown) == 1 else rows)
    print(f"wrote {args.task} results to {npz} ({', '.join(arrays)}) and {png}")
    return 0


def _output_files(out: Path) -> tuple[Path, Path]:
    """``--out``'s two files, refused when either would land on a directory or in an unwritable folder."""
    from mnistgen.files import check_writable_dir

    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name such as {out / 'result'}")
    npz, png = _sample_files(out)
    for path in (npz, png):
        if path.is_dir():
            raise UserError(f"--out {out} would write {path}, which is a directory; choose another file name")
    check_writable_dir(npz.parent, "--out's folder")
    return npz, png


def _sample_files(out: Path) -> tuple[Path, Path]:
    """The two files ``sample --out`` writes: FILE.npz and FILE.png, for FILE, FILE.npz or FILE.png
    (any other suffix is part of the name: ``--out runs/ddpm.v2`` writes ``runs/ddpm.v2.npz``)."""
    stem = out.with_suffix("") if out.suffix.lower() in (".png", ".npz") else out
    return stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".png")


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


def _parse_label(text: str) -> int | str:
    """``--label``: a digit 0-9, or ``"all"`` (``--n`` samples of each digit)."""
    if text == "all":
        return text
    if len(text) != 1 or text not in "0123456789":
        raise UserError(f"--label must be a digit 0-9 or 'all', got {text!r}")
    return int(text)


def _evaluate(args) -> int:
    from mnistgen import api

    sweep = _parse_weights(args.guidance_sweep) if args.guidance_sweep else None
    given = {k: v for k, v in (("edit_digits", args.edit_digits), ("edit_pairs", args.edit_pairs),
                               ("inversion_steps", args.inversion_steps)) if v is not None}
    if given and not args.edits:
        raise UserError(f"{', '.join('--' + k.replace('_', '-') for k in given)} need --edits")
    edit_options = dict(edits=given.pop("edit_digits", 1000), **given) if args.edits else {}
    like = {k: v for k, v in (("likelihood_images", args.likelihood_images), ("strata", args.strata),
                              ("ode_tolerance", args.ode_tolerance), ("probes", args.probes)) if v is not None}
    if like and not args.likelihood:
        raise UserError(f"{', '.join('--' + k.replace('_', '-') for k in like)} need --likelihood")
    like_options = dict(likelihood=like.pop("likelihood_images", True), **like) if args.likelihood else {}
    if args.samplers is not None and args.steps_sweep is None:
        raise UserError("--samplers needs --steps-sweep (the numbers of steps to draw each sampler at)")
    steps_sweep = _parse_steps(args.steps_sweep) if args.steps_sweep is not None else None
    metrics = api.evaluate(args.run, out=args.out, n=args.n, seed=args.seed, sampler=args.sampler,
                           steps=args.steps, eta=args.eta, grid=args.grid, grid_power=args.grid_power,
                           guidance=args.guidance, guidance_sweep=sweep, sweep_samples=args.sweep_samples,
                           steps_sweep=steps_sweep, samplers=args.samplers, iwae_k=args.iwae_k, n_images=args.n_images,
                           classifier=args.classifier, **edit_options, **like_options, device=args.device,
                           data_dir=args.data_dir, progress=not args.no_progress)
    for key, value in metrics.to_json().items():
        if isinstance(value, float):
            print(f"{key}: {value:.4f}")
    for p in metrics.guidance_sweep or ():
        kid = f", kid {p.kid:.4f}" if p.kid is not None else ""
        recall = f", recall {p.recall:.3f}" if p.recall is not None else ""
        print(f"w={p.guidance:g}: mnist_fd {p.mnist_fd:.2f}, class_accuracy {p.class_accuracy:.4f}{kid}{recall}")
    for p in metrics.steps_sweep or ():
        accuracy = f", class_accuracy {p.class_accuracy:.4f}" if p.class_accuracy is not None else ""
        print(f"{p.line}, {p.steps} steps: mnist_fd {p.mnist_fd:.2f} +- {p.mnist_fd_std:.2f}, kid {p.kid:.2f} +- "
              f"{p.kid_std:.2f}, precision {p.precision:.3f}, recall {p.recall:.3f}{accuracy}, "
              f"{p.seconds_per_100_samples:.2f} s per 100 samples")
    for key, value in (metrics.edits.to_json() if metrics.edits else {}).items():
        print(f"edits {key}: {value:.4f}" if isinstance(value, float) else f"edits {key}: {value}")
    for row in metrics.bits.rows if metrics.bits else ():
        print(f"bits/dim {row.name}: {row.bits_per_dim:.4f} +- {row.standard_error:.4f} "
              f"({row.images} images, {row.seconds:.0f} s)")
    print(f"wrote {Path(args.out or args.run) / 'metrics.json'}")
    return 0


def _parse_steps(text: str) -> list[int]:
    """--steps-sweep's numbers; their range and repeats are checked against the model before any work."""
    try:
        steps = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise UserError(f"--steps-sweep expects whole numbers separated by commas, got {text!r}") from None
    if not steps:
        raise UserError(f"--steps-sweep needs one or more numbers of steps, got {text!r}")
    return steps


def _parse_weights(text: str) -> list[float]:
    try:
        weights = [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise UserError(f"--guidance-sweep expects numbers separated by commas, got {text!r}") from None
    if not weights or not all(math.isfinite(w) and w >= 0 for w in weights):
        raise UserError(f"--guidance-sweep needs one or more finite weights >= 0, got {text!r}")
    return weights


def _figures(args) -> int:
    from mnistgen import api

    for path in api.draw_figures(args.run, out=args.out, device=args.device, data_dir=args.data_dir):
        print(path)
    return 0


def _reproduce(args) -> int:
    from mnistgen import api

    start = time.perf_counter()
    report = api.reproduce(args.preset, args.out, device=args.device, data_dir=args.data_dir,
                           progress=not args.no_progress)
    print(f"study done in {time.perf_counter() - start:.0f} s; open {report}")
    return 0


def _export(args) -> int:
    from mnistgen import api

    for card in api.export_pretrained(args.study, args.to, commit=args.commit,
                                      trained_on=args.trained_on):
        print(f"wrote {card.parent}")
    return 0


def _demo(args) -> int:
    from mnistgen import demo

    demo.check_gradio()  # the install hint, before anything else
    _check_free_port(args.host, args.port)
    demo.serve(args.host, args.port, args.device)
    return 0


def _check_free_port(host: str, port: int) -> None:
    """Refuse a port that is taken (or a host this machine cannot listen on) before the page is built."""
    import socket

    try:
        with socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET):
            pass
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host") from None


def main(argv: list[str] | None = None) -> int:
    if hasattr(sys.stdout, "reconfigure"):  # each line reaches a log file when it is printed, in order with stderr
        sys.stdout.reconfigure(line_buffering=True)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad argument (2, one line already printed)
        return int(e.code or 0)
    handlers = {"train": _train, "sample": _sample, "edit": _edit, "evaluate": _evaluate, "figures": _figures,
                "reproduce": _reproduce, "export": _export, "demo": _demo}
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
