"""What a model kind is: everything that differs between the VAE, the DDPM, the CFG model and the
judge classifier, behind one interface. The registry (``mnistgen.kinds``) holds one instance per kind;
the run workflow, the study, the command line and the public API ask it, and compare no kind names.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Iterator

import torch
from torch import nn

from mnistgen.config import RunConfig, range_of
from mnistgen.data.mnist import TensorData, holdout_mask, labels_per_digit, load, native_size, pad_to
from mnistgen.diffusion import editing, samplers
from mnistgen.diffusion.editing import RePaintSettings
from mnistgen.diffusion.registry import POWERED_SPACINGS
from mnistgen.diffusion.samplers import GRID_SPACINGS, SAMPLERS, OnStep, SamplerSettings, to_unit
from mnistgen.errors import UserError
from mnistgen.evaluation.edits import EditRequest
from mnistgen.evaluation.likelihood import LikelihoodRequest, LikelihoodScores, diffusion_bits
from mnistgen.evaluation.metrics import PRDC_K, Reference, sample_quality
from mnistgen.evaluation.results import RunMetrics, SampleQuality, StepsPoint
from mnistgen.progress import Progress, long_step
from mnistgen.storage.rundir import EpochRecord, RunDir
from mnistgen.training.trainer import Objective, Preview

STEPS_FIGURE = "steps_sweep.png"  # a diffusion run's quality per network evaluation, when its metrics hold a sweep
STEPS_CAPTION = ("Quality per network evaluation: MNIST-FD ± bootstrap std and recall ± std over real subsets "
                 "against the number of steps (log scale), one line per sampler, every point from the same seed.")
PREVIEW_SEED = 1234  # fixed noise for the per-epoch grids (F9, F12)
SAMPLE_BATCH = 500  # samples drawn at once: memory stays bounded for any n


@dataclass(frozen=True)
class TrainedModel:
    """A run's settings and its sampling weights, ready to use: what figures and evaluation receive."""

    config: RunConfig
    model: nn.Module  # EMA weights when the run has them, eval mode
    process: object | None  # the noise process on the model's device (None without one)
    history: tuple[EpochRecord, ...]
    run: RunDir

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


@dataclass(frozen=True)
class EvaluationRequest:
    """What ``evaluate`` measures and with how much effort (the defaults of ``mnistgen evaluate``)."""

    n_samples: int = 1000  # samples judged (conditional models: n_samples // 10 per digit)
    seed: int = 0
    settings: SamplerSettings = SamplerSettings()  # None fields: the run's defaults
    iwae_k: int = 500  # importance samples per test image (likelihood models)
    n_images: int = 10_000  # test images for the IWAE bound
    guidance_sweep: tuple[float, ...] | None = None  # guided models: also these weights
    sweep_samples: int | None = None  # samples per point of either sweep (default n_samples)
    steps_sweep: tuple[int, ...] | None = None  # diffusion models: also every metric at these numbers of steps
    samplers: tuple[SamplerSettings, ...] | None = None  # ... for each of these (default: the request's sampler)
    classifier_path: Path | None = None  # judge weights (default: the bundled classifier)
    progress: bool = True  # progress bars while sampling
    edits: EditRequest | None = None  # also score the model's edits (None: not measured)
    likelihood: LikelihoodRequest | None = None  # also bits per dimension (None: not measured)


class ModelKind:
    """The base of every kind: a generative model sampled in one pass unless a subclass says otherwise."""

    name: ClassVar[str]
    title: ClassVar[str]  # as the report's metrics table names it
    long_title: ClassVar[str]  # as the report's section heading names it
    generative: ClassVar[bool] = True
    data_scale: ClassVar[str] = "signed"  # pixels in [-1, 1] (diffusion, DDPM section 3.3) or "unit" [0, 1]
    takes_labels: ClassVar[bool] = False  # sampling needs a class label per sample
    study_samplers: ClassVar[tuple[str, ...]] = ()  # the study's steps sweep draws these ('NAME:GRID'); none: no sweep
    sampler_options: ClassVar[tuple[str, ...]] = ()  # the command-line sampler options that apply
    guided: ClassVar[bool] = False  # has a guidance weight to sweep
    sweep_weights: ClassVar[tuple[float, ...]] = ()  # guided kinds: the study's sweep, and its figure
    iterative: ClassVar[bool] = False  # samples by a reverse process of many steps
    figures_read_previews: ClassVar[bool] = False  # its figures show the per-epoch previews (F9, F12)
    preview_nrow: ClassVar[int] = 8
    captions: ClassVar[dict[str, str]] = {}  # figure file -> caption, in report order

    # -- building -------------------------------------------------------------------------
    def build_model(self, config: RunConfig) -> nn.Module:
        raise NotImplementedError

    def build_process(self, config: RunConfig, device: torch.device | str = "cpu"):
        """The run's noise process on ``device`` (None for kinds without one); it never owns the network."""
        return None

    def build_objective(self, config: RunConfig, device: torch.device | str = "cpu") -> Objective:
        raise NotImplementedError

    def load_data(self, config: RunConfig, split: str, data_dir: str | os.PathLike | None,
                  device: torch.device) -> TensorData:
        """``train``, ``validation`` or ``test`` as device-resident tensors in this kind's pixel scale, cut
        to the config's limits (train_limit; val_limit for the other two). ``validation`` is the test split
        (data.validation = test, the SPEC's protocol) or the training images held out by
        :func:`holdout_mask` (holdout), which ``train`` then leaves out."""
        d = config.data
        source = "test" if split == "test" or (split == "validation" and d.validation == "test") else "train"
        data = load(source, self.data_scale, d.resolution, d.dataset, data_dir, device)
        if source == "train" and d.validation == "holdout":
            held = holdout_mask(len(data.y), d.holdout).to(data.y.device)
            keep = held if split == "validation" else ~held
            data = TensorData(data.x[keep], data.y[keep])
        limit = d.train_limit if split == "train" else d.val_limit
        return TensorData(data.x[:limit], data.y[:limit]) if limit else data

    @staticmethod
    def image_shape(config: RunConfig) -> tuple[int, int, int]:
        return (1, config.data.resolution, config.data.resolution)

    # -- sampling -------------------------------------------------------------------------
    def check_labels(self, given: bool, how: str = "labels (a digit 0-9 or one per sample)") -> None:
        """The one rule on labels: a kind that takes them needs them, the others refuse them."""
        if self.takes_labels and not given:
            raise UserError(f"the {self.name} model needs {how}")
        if not self.takes_labels and given:
            raise UserError(f"the {self.name} model takes no labels")

    def resolve(self, config: RunConfig, settings: SamplerSettings) -> SamplerSettings:
        """The settings actually used: the run's defaults filled in, options that do not apply dropped."""
        return SamplerSettings("prior")

    def check_settings(self, config: RunConfig, settings: SamplerSettings) -> None:
        """Refuse, in one line, sampler options that do not apply to this kind or lie out of range."""
        given = [name for name, v in (("--sampler", settings.sampler), ("--steps", settings.steps),
                                      ("--eta", settings.eta), ("--guidance", settings.guidance),
                                      ("--grid", settings.grid), ("--grid-power", settings.grid_power))
                 if v is not None]
        extra = [name for name in given if name not in self.sampler_options]
        if extra:
            takes = ", ".join(self.sampler_options) or "none of the sampler options (it samples in one pass)"
            raise UserError(f"{', '.join(extra)} does not apply to the {self.name} model; it takes {takes}")
        if settings.steps is not None and (isinstance(settings.steps, bool)
                                           or not isinstance(settings.steps, numbers.Integral)):
            raise UserError(f"--steps must be a whole number, got {settings.steps!r}")

    def sample(self, config: RunConfig, model: nn.Module, n: int, generator: torch.Generator,
               settings: SamplerSettings = SamplerSettings(), labels: torch.Tensor | None = None,
               process=None, on_step: OnStep | None = None) -> torch.Tensor:
        """``n`` samples in [0, 1], (n, 1, H, W), on the model's device; ``process``: the run's noise
        process on that device (built here when not given); ``on_step(t, x)`` sees each state of an
        iterative sampler, x in the model's scale."""
        raise NotImplementedError

    def step_times(self, config: RunConfig, settings: SamplerSettings) -> list[int]:
        """The t that ``sample``'s ``on_step(t, x)`` reports, in order (none for one-pass samplers)."""
        return []

    @torch.no_grad()
    def sample_batches(self, config: RunConfig, model: nn.Module, n: int, generator: torch.Generator,
                       settings: SamplerSettings = SamplerSettings(), labels: torch.Tensor | None = None,
                       process=None, batch_size: int = SAMPLE_BATCH, progress: bool = False) -> Iterator[torch.Tensor]:
        """``n`` samples (``len(labels)`` when labelled) as CPU batches of at most ``batch_size``."""
        process = self.process_for(config, model, process)  # built once for all batches
        bar = Progress(n, "sampling", progress and n > batch_size, unit="img", summary=True)
        for first in range(0, n, batch_size):
            count = min(batch_size, n - first)
            chunk = labels[first: first + count] if labels is not None else None
            yield self.sample(config, model, count, generator, settings, chunk, process).cpu()
            bar.update(count)
        bar.close()

    def draw(self, trained: TrainedModel):
        """``draw(n, generator, settings=SamplerSettings(), labels=None)``: the trained model's sampler
        with everything else bound, as the figures take it."""
        return functools.partial(self.sample, trained.config, trained.model, process=trained.process)

    def preview_labels(self, device: torch.device) -> torch.Tensor | None:
        return None

    def preview_count(self) -> int:
        return 64

    def preview_rows(self) -> dict[int, str]:
        """The entries of the per-epoch preview batch that the epochs figure shows, each with its row's name."""
        return {}

    def preview(self, config: RunConfig, process=None) -> Preview | None:
        """The per-epoch grid (F9 and F12 read it back): fixed noise, this kind's layout."""

        def draw(model: nn.Module) -> torch.Tensor:
            device = next(model.parameters()).device
            g = torch.Generator(device).manual_seed(PREVIEW_SEED)
            labels = self.preview_labels(device)
            n = len(labels) if labels is not None else self.preview_count()
            return self.sample(config, model, n, g, labels=labels, process=process)

        return Preview(draw, self.preview_nrow)

    # -- a latent space (the VAE's) -----------------------------------------------------------
    def latent_size(self, config: RunConfig) -> int:
        """The width of the model's latent codes; kinds without a latent space refuse."""
        raise UserError(f"the {self.name} model has no latent space; encode / decode / interpolate / "
                        f"traverse need a model with one, such as the VAE")

    def encode(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Codes (N, latent) of images (N, 1, H, W) in [0, 1]."""
        raise UserError(f"the {self.name} model has no latent space")

    def decode(self, model: nn.Module, codes: torch.Tensor) -> torch.Tensor:
        """Images (N, 1, H, W) in [0, 1] of codes (N, latent)."""
        raise UserError(f"the {self.name} model has no latent space")

    # -- editing: inpainting, inversion, interpolation ---------------------------------------------
    def check_edit(self, config: RunConfig, labels: bool, guidance: float | None,
                   repaint: RePaintSettings | None) -> RePaintSettings | None:
        """Refuse, in one line, what an inpainting by this kind cannot take; the settings it will use."""
        raise UserError(f"the {self.name} model cannot inpaint; the VAE, the DDPM and the CFG model can")

    def edit_method(self, repaint: RePaintSettings | None) -> str:
        """How this kind fills in, in words, for scores and figures."""
        raise UserError(f"the {self.name} model cannot inpaint")

    def inpaint(self, config: RunConfig, model: nn.Module, images: torch.Tensor, mask: torch.Tensor,
                generator: torch.Generator, labels: torch.Tensor | None = None, guidance: float | None = None,
                repaint: RePaintSettings | None = None, process=None) -> torch.Tensor:
        """Images (N, 1, 28, 28) in [0, 1] on the model's device with their pixels where ``mask`` is 0
        filled in by the model (the known ones as the model left them: the caller restores them)."""
        raise UserError(f"the {self.name} model cannot inpaint")

    def invert(self, config: RunConfig, model: nn.Module, images: torch.Tensor, steps: int,
               labels: torch.Tensor | None = None, process=None) -> torch.Tensor:
        """The noise (N, C, H', W') that deterministic sampling maps to ``images`` (N, 1, 28, 28) in [0, 1]."""
        raise UserError(f"the {self.name} model has no deterministic map from noise to invert; "
                        f"invert / from_noise need a diffusion model")

    def from_noise(self, config: RunConfig, model: nn.Module, noise: torch.Tensor, steps: int,
                   labels: torch.Tensor | None = None, process=None) -> torch.Tensor:
        """Images (N, 1, 28, 28) in [0, 1] of noise by deterministic sampling (the inverse of :meth:`invert`)."""
        raise UserError(f"the {self.name} model has no deterministic map from noise")

    def interpolate(self, config: RunConfig, model: nn.Module, a: torch.Tensor, b: torch.Tensor,
                    fractions: torch.Tensor, steps: int, labels: torch.Tensor | None = None,
                    process=None) -> torch.Tensor:
        """Images (S, 1, 28, 28) along the model's path from image ``a`` to image ``b`` (each (1, 1, 28, 28)
        in [0, 1]), at ``fractions`` (S,) of the way."""
        raise UserError(f"the {self.name} model has no latent space or noise to interpolate in")

    # -- evaluation and figures -------------------------------------------------------------
    def evaluation_labels(self, n: int, device: torch.device) -> torch.Tensor | None:
        """The labels to request when ``n`` samples are judged (None: unlabelled)."""
        return None

    def check_request(self, config: RunConfig, request: EvaluationRequest) -> None:
        """The request's counts, its sampler settings, and each end of its guidance sweep, as
        :meth:`check_settings`: everything before any work starts."""
        least = {("--n", "n_samples"): PRDC_K + 1 if self.generative else 1,
                 ("--sweep-samples", "sweep_samples"): PRDC_K + 1, ("--iwae-k", "iwae_k"): 1,
                 ("--n-images", "n_images"): 1}
        why = {PRDC_K + 1: f" (precision and recall look at the {PRDC_K} nearest neighbours)"}
        for (flag, name), low in least.items():
            value = getattr(request, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise UserError(f"{flag} must be a whole number >= {low}{why.get(low, '')}, got {value!r}")
        main = request.settings
        if request.steps_sweep and main.eta is not None and self.iterative and not takes_eta(
                main.sampler or config.process.sampler) and any(takes_eta(s.sampler) for s in request.samplers or ()):
            main = replace(main, eta=None)  # --eta is for the sweep's samplers that take it (checked there)
        self.check_settings(config, main)
        if request.steps_sweep is not None or request.samplers is not None:
            self.check_steps_sweep(config, request)
        for w in request.guidance_sweep or ():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise UserError(f"--guidance-sweep takes finite weights, got {w!r}")
            self.check_settings(config, SamplerSettings(guidance=w))

    def sample_quality(self, trained: TrainedModel, classifier, reference: Reference, n: int, seed: int,
                       settings: SamplerSettings, progress: bool = True, detail: bool = True) -> SampleQuality:
        """Every sample metric (MNIST-FD, KID, PRDC, class histogram; labelled kinds: class accuracy) of
        ``n`` fresh samples."""
        g = torch.Generator(trained.device).manual_seed(seed)
        labels = self.evaluation_labels(n, trained.device)
        count = len(labels) if labels is not None else n
        batches = self.sample_batches(trained.config, trained.model, count, g, settings, labels, trained.process,
                                      progress=progress)
        return sample_quality(batches, labels, classifier, reference, self.resolve(trained.config, settings), seed,
                              detail)

    def check_steps_sweep(self, config: RunConfig, request: EvaluationRequest) -> None:
        """Refuse, in one line, a steps sweep of a model without sampling steps."""
        raise UserError(f"--steps-sweep and --samplers apply to the diffusion models; the {self.name} model "
                        f"samples in one pass")

    def steps_curve(self, trained: TrainedModel, request: EvaluationRequest, classifier, reference: Reference,
                    metrics: RunMetrics) -> RunMetrics:
        """Every sample metric at each of ``request.steps_sweep`` for each sampler (iterative kinds)."""
        return metrics

    def own_metrics(self, trained: TrainedModel, request: EvaluationRequest, data_dir, device,
                    metrics: RunMetrics) -> RunMetrics:
        """What only this kind measures (the VAE's likelihood, the classifier's accuracy)."""
        return metrics

    def sweep(self, trained: TrainedModel, request: EvaluationRequest, classifier, reference: Reference,
              metrics: RunMetrics) -> RunMetrics:
        return metrics

    # -- likelihood ---------------------------------------------------------------------------
    def check_likelihood(self, config: RunConfig) -> None:
        """Refuse, in one line, a model without a likelihood of images."""
        raise UserError(f"the {self.name} model has no likelihood of images; --likelihood applies to the VAE, "
                        f"the DDPM and the CFG model")

    def most_strata(self, config: RunConfig) -> int | None:
        """The most levels per image a variational bound's estimate may draw (None: it draws none)."""
        return None

    def likelihood_held_out(self, config: RunConfig, data_dir, device: torch.device, n: int) -> TensorData | None:
        """Training images on which :meth:`likelihood` may choose a setting (None: it chooses none)."""
        return None

    def grey_level_variant(self, config: RunConfig) -> RunConfig | None:
        """A config of this kind whose likelihood scores 8-bit grey levels when ``config``'s does not
        (the study trains it beside the model); None when ``config``'s already does or none can."""
        return None

    def likelihood(self, trained: TrainedModel, request: LikelihoodRequest, test: TensorData,
                   held: TensorData | None, progress: bool = True) -> LikelihoodScores:
        """Bits per MNIST pixel of ``test`` (this kind's scale and size) by every estimate this kind has;
        ``held``: :meth:`likelihood_held_out`'s images."""
        raise UserError(f"the {self.name} model has no likelihood of images")

    def export(self, trained: TrainedModel) -> list[Path]:
        """Files this kind's evaluation leaves next to metrics.json (the classifier's compact weights)."""
        return []

    def render_figures(self, trained: TrainedModel, data_dir: str | os.PathLike | None) -> list[Path]:
        raise NotImplementedError

    def process_for(self, config: RunConfig, model: nn.Module, process=None):
        """``process``, or this kind's process built on the model's device when None is given."""
        return process if process is not None else self.build_process(config, next(model.parameters()).device)


class DiffusionKind(ModelKind):
    """A kind sampled by a noise process's reverse loop from Gaussian noise; the process is its objective.
    Every sampler of the registry applies to every diffusion kind."""

    iterative = True
    figures_read_previews = True
    sampler_options = ("--sampler", "--steps", "--eta", "--grid", "--grid-power")

    def build_objective(self, config: RunConfig, device: torch.device | str = "cpu"):
        return self.build_process(config, device)

    def default_steps(self, config: RunConfig, sampler: str) -> int:
        """Network evaluations when none are asked for: the run's ``process.sample_steps``."""
        return config.process.sample_steps

    def most_steps(self, config: RunConfig) -> int | None:
        """The most steps a grid of this process can have (None: no limit beyond the config's range)."""
        return None

    def resolve(self, config: RunConfig, settings: SamplerSettings) -> SamplerSettings:
        """The run's sampler, steps, eta (samplers that take it), guidance (guided kinds) and grid unless
        given; the grid's power (powered spacings only) as given, else the run's on the run's grid, else 1."""
        p = config.process
        sampler = settings.sampler or p.sampler
        eta = (p.eta if settings.eta is None else settings.eta) if "eta" in SAMPLERS[sampler].options else None
        guidance = (p.guidance if settings.guidance is None else settings.guidance) if self.guided else None
        grid = settings.grid or p.grid
        power = settings.grid_power if settings.grid_power is not None else p.grid_power if grid == p.grid else 1.0
        return SamplerSettings(sampler, settings.steps or self.default_steps(config, sampler), eta, guidance, grid,
                               power if grid in POWERED_SPACINGS else None)

    def check_settings(self, config: RunConfig, settings: SamplerSettings) -> None:
        """Options against the sampler registry, steps against the process, eta and w against their ranges."""
        super().check_settings(config, settings)
        p = config.process
        sampler = settings.sampler or p.sampler
        if sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
        if settings.eta is not None and "eta" not in SAMPLERS[sampler].options:
            takes = [name for name, spec in SAMPLERS.items() if "eta" in spec.options]
            raise UserError(f"--eta applies to --sampler {' / '.join(takes)} only ({sampler} has no eta)")
        if settings.grid is not None and settings.grid not in GRID_SPACINGS:
            raise UserError(f"unknown --grid {settings.grid!r}; valid: {', '.join(GRID_SPACINGS)}")
        grid = settings.grid or p.grid
        if settings.grid_power is not None and grid not in POWERED_SPACINGS:
            raise UserError(f"--grid-power applies to --grid {' / '.join(POWERED_SPACINGS)} only ({grid} takes none)")
        most = self.most_steps(config)
        if most is not None and settings.steps is not None and not 1 <= settings.steps <= most:
            raise UserError(f"--steps must be in [1, {most}] on this model, got {settings.steps}")
        if most is not None and settings.steps is None and self.default_steps(config, sampler) > most:
            raise UserError(f"the run's process.sample_steps ({p.sample_steps}) exceeds its {most} "
                            f"timesteps; pass --steps in [1, {most}]")
        in_range("--steps", settings.steps, type(p), "sample_steps")
        in_range("--eta", settings.eta, type(p), "eta")
        in_range("--grid-power", settings.grid_power, type(p), "grid_power")
        in_range("--guidance", settings.guidance, type(p), "guidance")

    def sweep_samplers(self, request: EvaluationRequest) -> list[SamplerSettings]:
        """The samplers of a steps sweep: each given one (default: the request's), its unset fields filled
        from the request's settings (its sampler's eta only where it takes one)."""
        base = request.settings
        out = []
        for s in request.samplers or (replace(base, steps=None),):
            eta = s.eta if s.eta is not None else base.eta if s.sampler is None or takes_eta(s.sampler) else None
            out.append(replace(s, steps=None, eta=eta, guidance=base.guidance if s.guidance is None else s.guidance,
                               grid=s.grid or base.grid,
                               grid_power=base.grid_power if s.grid_power is None and not s.grid else s.grid_power))
        return out

    def check_steps_sweep(self, config: RunConfig, request: EvaluationRequest) -> None:
        """The sweep's steps (whole numbers in the process's range, no repeats) and each sampler against
        :meth:`check_settings` at every one of them; samplers that resolve alike are repeats."""
        steps = request.steps_sweep
        if steps is None:
            raise UserError("--samplers needs --steps-sweep (the numbers of steps to draw each sampler at)")
        if not steps:
            raise UserError("--steps-sweep needs one or more numbers of steps")
        for s in request.samplers or ():
            if s.sampler not in SAMPLERS:
                raise UserError(f"--samplers: unknown sampler {s.sampler!r}; valid: {', '.join(SAMPLERS)}")
        most = self.most_steps(config) or int(range_of(type(config.process), "sample_steps").high)
        for k in steps:
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= most:
                raise UserError(f"--steps-sweep takes whole numbers in [1, {most}] on this model, got {k!r}")
        if len(set(steps)) < len(steps):
            raise UserError(f"--steps-sweep repeats a number of steps: {', '.join(map(str, steps))}")
        seen = {}
        for s in self.sweep_samplers(request):
            for k in steps:
                self.check_settings(config, replace(s, steps=k))
            resolved = self.resolve(config, replace(s, steps=steps[0]))
            levels = self.build_process(config).grid(steps[0], resolved.grid, power=resolved.grid_power or 1.0).log_snr
            key = (resolved.sampler, resolved.eta, resolved.guidance, tuple(levels.tolist()))  # the grid it draws on
            if key in seen:
                raise UserError(f"--samplers names one sampler twice: {seen[key]} and "
                                f"{replace(resolved, steps=None).describe()} draw on the same levels")
            seen[key] = replace(resolved, steps=None).describe()

    def steps_curve(self, trained: TrainedModel, request: EvaluationRequest, classifier, reference: Reference,
                    metrics: RunMetrics) -> RunMetrics:
        """Every sample metric, with its spread, and the seconds per 100 samples of ``request.sweep_samples``
        (default ``n_samples``) fresh samples at each number of steps of ``request.steps_sweep``, for each
        sampler of :meth:`sweep_samplers`; every point from the same seed."""
        if not request.steps_sweep:
            return metrics
        n = request.sweep_samples or request.n_samples
        points = []
        for sampler in self.sweep_samplers(request):
            for k in request.steps_sweep:
                settings = self.resolve(trained.config, replace(sampler, steps=k))
                with long_step(f"steps sweep, {settings.sampler}-{k}", n, request.progress):
                    points.append(StepsPoint.of(self.sample_quality(trained, classifier, reference, n, request.seed,
                                                                    settings, request.progress)))
        return replace(metrics, steps_sweep=tuple(points))

    def step_times(self, config: RunConfig, settings: SamplerSettings) -> list[int]:
        """What ``on_step`` reports, in order: the grid's labels (the DDPM's timesteps from T-1 down to
        its last level, 0 on a time grid; the log-SNR process's steps still to go, S-1 down to 0)."""
        s = self.resolve(config, settings)
        return list(self.build_process(config).grid(s.steps, s.grid, power=s.grid_power or 1.0).labels)

    def sample(self, config: RunConfig, model: nn.Module, n: int, generator: torch.Generator,
               settings: SamplerSettings = SamplerSettings(), labels: torch.Tensor | None = None,
               process=None, on_step: OnStep | None = None) -> torch.Tensor:
        """From noise (n, C, H, W) ~ N(0, I) (x_T, or z at lambda_min) through the resolved sampler; in [0, 1]."""
        if self.takes_labels and labels is None:
            raise ValueError(f"the {self.name} model needs labels")
        process = self.process_for(config, model, process)
        device = next(model.parameters()).device
        noise = torch.randn(n, *self.image_shape(config), generator=generator, device=device)
        labels = labels.to(device) if labels is not None else None
        return to_unit(samplers.draw(model, process, noise, self.resolve(config, settings), generator, labels, on_step,
                                     null_label=config.process.num_labels))

    # -- likelihood ---------------------------------------------------------------------------
    def check_likelihood(self, config: RunConfig) -> None:
        """Every diffusion model has its process's bound and the probability-flow ODE."""

    def most_strata(self, config: RunConfig) -> int:
        return self.build_process(config).most_strata()

    def likelihood_conditions(self, config: RunConfig, labels: torch.Tensor) -> list[tuple[str, torch.Tensor | None]]:
        """(name, labels for the network or None) of each likelihood to measure: unconditional here."""
        return [("none", None)]

    def likelihood_held_out(self, config: RunConfig, data_dir, device: torch.device, n: int) -> TensorData:
        """The first ``n`` training images: a continuous bound chooses its decoder's level on them."""
        train = self.load_data(config, "train", data_dir, device)
        return TensorData(train.x[:n], train.y[:n])

    def likelihood(self, trained: TrainedModel, request: LikelihoodRequest, test: TensorData,
                   held: TensorData | None, progress: bool = True) -> LikelihoodScores:
        """The process's variational bound and the probability-flow ODE, per condition
        (:meth:`likelihood_conditions`), in bits per MNIST pixel (a padded model's border included); a
        continuous bound also with its decoder where it is best on ``held``."""
        config = trained.config
        conditions = self.likelihood_conditions(config, test.y)
        held_out = (held.x, self.likelihood_conditions(config, held.y)) if held is not None else None
        return diffusion_bits(trained.model, config.process.prediction, trained.process, test.x, conditions,
                              request, native_size(test.x[:1])[0].numel(), progress, held_out)

    # -- editing ----------------------------------------------------------------------------
    def null_label(self, config: RunConfig) -> int | None:
        """The label that asks a conditional network for its unconditional prediction (None: unconditional)."""
        return None

    def edit_denoiser(self, config: RunConfig, model: nn.Module, n: int, labels: torch.Tensor | None,
                      guidance: float | None) -> samplers.DenoiserLike:
        """The network as an edit's denoiser: guided with weight ``guidance`` around ``labels`` when both
        are given, conditioned on ``labels`` alone, or unconditional (a conditional network's null label)."""
        null = self.null_label(config)
        if labels is None and null is not None:
            labels = torch.full((n,), null, device=next(model.parameters()).device)
            guidance = None
        return samplers.denoiser_for(model, config.process.prediction, labels, guidance, null)

    def check_edit(self, config: RunConfig, labels: bool, guidance: float | None,
                   repaint: RePaintSettings | None) -> RePaintSettings:
        """Labels only for a kind that takes them, guidance only with labels, RePaint's steps within the
        process's, its jump within its steps."""
        if labels and not self.takes_labels:
            raise UserError(f"the {self.name} model takes no labels")
        if guidance is not None and not labels:
            raise UserError("guidance needs a label to guide towards")
        in_range("guidance", guidance, type(config.process), "guidance")
        repaint = repaint or RePaintSettings()
        most = self.step_limit(config)
        for name, value, high in (("steps", repaint.steps, most), ("jump", repaint.jump, repaint.steps),
                                  ("resample", repaint.resample, 100)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
                raise UserError(f"RePaint's {name} must be a whole number in [1, {high}], got {value!r}")
        return repaint

    def edit_method(self, repaint: RePaintSettings | None) -> str:
        r = repaint or RePaintSettings()
        return f"RePaint: {r.steps} steps, jump {r.jump}, resample {r.resample}"

    def step_limit(self, config: RunConfig) -> int:
        """The most levels an edit's grid may have: the process's timesteps, or (a continuous process)
        the most sampling steps its config allows."""
        return self.most_steps(config) or range_of(type(config.process), "sample_steps").high

    def to_model_scale(self, config: RunConfig, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) in [0, 1] -> the network's (N, 1, R, R) in [-1, 1], padded with background (-1)."""
        return pad_to(images * 2 - 1, config.data.resolution, -1.0)

    def inpaint(self, config: RunConfig, model: nn.Module, images: torch.Tensor, mask: torch.Tensor,
                generator: torch.Generator, labels: torch.Tensor | None = None, guidance: float | None = None,
                repaint: RePaintSettings | None = None, process=None) -> torch.Tensor:
        """RePaint (:func:`~mnistgen.diffusion.editing.repaint`) with the process's ancestral step on a grid
        of ``repaint.steps`` levels evenly spaced in time; the padding border counts as known background."""
        repaint = repaint or RePaintSettings()
        process = self.process_for(config, model, process)
        device = next(model.parameters()).device
        known = self.to_model_scale(config, images.to(device))  # (N, 1, R, R)
        m = pad_to(mask.to(device), config.data.resolution, 1.0)  # the padding is known background
        denoiser = self.edit_denoiser(config, model, len(known), labels, guidance)
        out = editing.repaint(denoiser, known, m, process.grid(repaint.steps, GRID_SPACINGS[0], device), repaint,
                              generator)
        return native_size(to_unit(out))

    def invert(self, config: RunConfig, model: nn.Module, images: torch.Tensor, steps: int,
               labels: torch.Tensor | None = None, process=None) -> torch.Tensor:
        """DDIM inversion (:func:`~mnistgen.diffusion.editing.ddim_invert`) on ``steps`` levels, the
        network conditioned on ``labels`` (unguided) or unconditional: (N, 1, R, R) noise."""
        process = self.process_for(config, model, process)
        device = next(model.parameters()).device
        x0 = self.to_model_scale(config, images.to(device))
        grid = process.grid(steps, GRID_SPACINGS[0], device)
        return editing.ddim_invert(self.edit_denoiser(config, model, len(x0), labels, None), x0, grid)

    def from_noise(self, config: RunConfig, model: nn.Module, noise: torch.Tensor, steps: int,
                   labels: torch.Tensor | None = None, process=None) -> torch.Tensor:
        """DDIM at eta = 0 without clipping on the grid :meth:`invert` uses: its inverse."""
        process = self.process_for(config, model, process)
        device = next(model.parameters()).device
        noise = noise.to(device)
        grid = process.grid(steps, GRID_SPACINGS[0], device)
        denoiser = self.edit_denoiser(config, model, len(noise), labels, None)
        return native_size(to_unit(samplers.ddim(denoiser, noise, grid, clip_x0=False)))

    def interpolate(self, config: RunConfig, model: nn.Module, a: torch.Tensor, b: torch.Tensor,
                    fractions: torch.Tensor, steps: int, labels: torch.Tensor | None = None,
                    process=None) -> torch.Tensor:
        """Both images inverted (:meth:`invert`), their noises joined by slerp, each point sampled back."""
        pair = labels.expand(2) if labels is not None else None
        za, zb = self.invert(config, model, torch.cat([a, b]), steps, pair, process)
        path = editing.slerp(za, zb, fractions)  # (S, 1, R, R)
        along = labels.expand(len(path)) if labels is not None else None
        return self.from_noise(config, model, path, steps, along, process)


def conditional_labels(n: int, device: torch.device) -> torch.Tensor:
    """n // 10 of each digit (at least one): the labels a conditional model is judged on."""
    return labels_per_digit(max(1, n // 10), device)


def takes_eta(sampler: str | None) -> bool:
    """Whether a registry sampler takes DDIM's eta (unknown names and None do not)."""
    return sampler in SAMPLERS and "eta" in SAMPLERS[sampler].options


def in_range(flag: str, value: float | None, component: type, name: str) -> None:
    """A command-line option against the range its config field declares."""
    if value is not None and not range_of(component, name).holds(value):
        raise UserError(f"{flag} must be {range_of(component, name)}, got {value}")

