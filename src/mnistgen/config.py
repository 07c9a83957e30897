"""Typed, frozen configuration: one dataclass per component, named presets, checked overrides.

A run is described by a :class:`RunConfig` that bundles the data, model, noise-process
and training settings. Presets are named instances; command-line flags and
``--set section.field=value`` overrides map onto fields, and anything unknown or out of
range is rejected with the list of valid choices.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

from mnistgen.diffusion.registry import GRID_POWER_RANGE, GRID_SPACINGS, POWERED_SPACINGS
from mnistgen.diffusion.registry import SAMPLERS as SAMPLER_REGISTRY
from mnistgen.errors import UserError

DATASETS = ("mnist", "fashion-mnist")
VALIDATIONS = ("test", "holdout")
LR_SCHEDULES = ("constant", "step", "cosine")
LOSS_WEIGHTINGS = ("uniform", "min-snr", "clamped-snr")
SAMPLERS = tuple(SAMPLER_REGISTRY)  # the sampler registry's names (mnistgen.diffusion.registry; no torch)
PREDICTIONS = ("eps", "v", "x0")
VAE_DECODERS = ("bernoulli", "logistic")
T_DISTRIBUTIONS = ("uniform", "cosine")
AMP_MODES = ("auto", "native", "bf16", "fp16", "off")


@dataclass(frozen=True)
class Range:
    """The values a numeric field accepts (every bound inclusive unless ``*_open``); floats must be finite."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        above = self.low is None or (v > self.low if self.low_open else v >= self.low)
        below = self.high is None or (v < self.high if self.high_open else v <= self.high)
        return above and below

    def __str__(self) -> str:
        low = "" if self.low is None else f"{'(' if self.low_open else '['}{self.low:g}"
        high = "" if self.high is None else f"{self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None and self.high is not None:
            return f"in {low}, {high}"
        return f"{'>' if self.low_open else '>='} {self.low:g}" if self.low is not None else \
            f"{'<' if self.high_open else '<='} {self.high:g}"


def range_of(component: type, name: str) -> Range:
    """The declared range of ``component``'s field ``name``."""
    return next(f.metadata["range"] for f in fields(component) if f.name == name)


def ranged(default, low=None, high=None, *, low_open: bool = False, high_open: bool = False):
    """A dataclass field whose value (each item, for a tuple) must lie in the given range."""
    return field(default=default, metadata={"range": Range(low, high, low_open, high_open)})


BIG = 1_000_000_000  # step and image counts
WIDTH = 4096  # network widths


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist"
    resolution: int = 28  # 28 = native, 32 = zero-padded by 2 pixels on each side
    train_limit: int = ranged(0, 0, BIG)  # use only the first N training images (0 = all 60,000)
    val_limit: int = ranged(0, 0, BIG)  # use only the first N validation (and test) images (0 = all)
    validation: str = "test"  # what val_* is measured on: test (the SPEC's and the study's protocol: the
    #                           10,000 test images) | holdout (training images held out by a fixed seed)
    holdout: int = ranged(5000, 1, 59_999)  # validation = holdout: how many training images are held out


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = ranged(20, 1, 100_000)
    batch_size: int = ranged(128, 1, 65_536)
    lr: float = ranged(1e-3, 0, 1, low_open=True)
    lr_schedule: str = "constant"  # constant | step | cosine
    lr_step_epochs: int = ranged(10, 1, 100_000)  # "step": multiply by lr_gamma every this many epochs
    lr_gamma: float = ranged(0.1, 0, 1, low_open=True)
    warmup_steps: int = ranged(0, 0, BIG)  # linear warm-up from 0 to lr
    weight_decay: float = ranged(0.0, 0, 1)  # AdamW's decoupled decay
    grad_clip: float = ranged(0.0, 0)  # max global grad norm, 0 = off
    ema_decay: float = ranged(0.0, 0, 1, high_open=True)  # 0 = no EMA
    ema_start: int = ranged(0, 0, BIG)  # EMA copies the weights until this many optimizer steps
    ema_warmup_power: float = ranged(0.0, 0, 10)  # > 0: n-th EMA update uses min(ema_decay, 1 - (1 + n)^-power)
    amp: str = "auto"  # auto (CUDA: bf16 on capability >= 8.0, else fp16 + GradScaler; none elsewhere) |
    #                    native (auto, plus bf16 on CPUs with AVX512-BF16 / AMX) | bf16 | fp16 | off
    tf32: bool = True  # CUDA: TF32 tensor cores for float32 matmuls and convolutions (Ampere and newer)
    seed: int = ranged(0, 0, 2**32 - 1)
    log_every: int = ranged(50, 1, BIG)  # steps between progress-bar refreshes (each one syncs the device)
    checkpoint_minutes: float = ranged(10.0, 0)  # mid-epoch checkpoint interval, 0 = only at epoch ends
    channels_last: bool = False  # train in NHWC memory format (faster convolutions on x86 CPUs)
    compile: bool = False  # torch.compile the training forward/backward (the sampling model stays eager)
    tensorboard: bool = False  # log to RUN/tb for TensorBoard (needs the tensorboard package)


# Settings that change what a run records, never what it trains: --resume may change them.
RECORDING_ONLY = ("train.tensorboard",)


@dataclass(frozen=True)
class VAEConfig:
    hidden: int = ranged(400, 1, WIDTH)
    latent: int = ranged(20, 1, WIDTH)
    decoder: str = "bernoulli"  # p(x | z): bernoulli (the SPEC's, on grey levels as probabilities) |
    #                             logistic (a discretized logistic per pixel over the 256 grey levels)

    def check(self, run: "RunConfig") -> None:
        """The decoder is one of :data:`VAE_DECODERS`."""
        _choice(self.decoder, VAE_DECODERS, "model.decoder")


@dataclass(frozen=True)
class UNetConfig:
    channels: tuple[int, ...] = ranged((32, 64, 128, 128), 1, WIDTH)  # width per resolution level
    bottleneck: int = ranged(256, 1, WIDTH)
    blocks: int = ranged(2, 1, 16)  # conv blocks per level, down and up (up: the first one takes the skip)
    time_dim: int = ranged(128, 2, WIDTH)  # sinusoidal time / log-SNR embedding width (even)
    unshuffle: int = 1  # pixel-unshuffle factor before the first conv (space-to-depth): 1 or 2
    attention: bool = False  # self-attention at the lowest resolution (4 heads)
    groups: int = ranged(8, 1, WIDTH)  # GroupNorm groups: divide every width
    num_classes: int = ranged(0, 0, 10)  # 10: class-conditional with a learned null label (cfg); 0: not (ddpm)

    def check(self, run: "RunConfig") -> None:
        """Widths against GroupNorm and attention, depth against the resolution, labels against the process."""
        _check(len(self.channels) >= 1, "model.channels needs at least one width")
        _check(self.unshuffle in (1, 2), f"bad model.unshuffle {self.unshuffle}; valid: 1, 2")
        _check(self.time_dim % 2 == 0, f"bad model.time_dim {self.time_dim}: must be even (sin and cos halves)")
        size = run.data.resolution // self.unshuffle
        _check(size % 2 ** (len(self.channels) - 1) == 0,
               f"resolution {run.data.resolution} / unshuffle {self.unshuffle} is not divisible by "
               f"2^{len(self.channels) - 1} (one halving per extra level); change data.resolution or model.channels")
        _check(all(c % self.groups == 0 for c in (*self.channels, self.bottleneck)),
               f"bad model.groups {self.groups}: must divide every width in model.channels and model.bottleneck")
        _check(not self.attention or self.bottleneck % 4 == 0,
               f"bad model.bottleneck {self.bottleneck}: self-attention (4 heads) needs a multiple of 4")
        wanted = getattr(run.process, "num_labels", 0)
        _check(self.num_classes == wanted, f"bad model.num_classes {self.num_classes}: the {run.kind} model needs {wanted}")


@dataclass(frozen=True)
class DDPMConfig:
    timesteps: int = ranged(1000, 2, 100_000)
    beta_start: float = ranged(1e-4, 0, 1, low_open=True, high_open=True)
    beta_end: float = ranged(0.02, 0, 1, low_open=True, high_open=True)
    loss_weighting: str = "uniform"  # uniform (the plain squared error; DDPM eq. 14 for eps) |
    #                                  min-snr (x0 error weighted min(SNR, gamma), Hang et al. 2023) |
    #                                  clamped-snr (x0 error weighted clamp(SNR, 1, gamma): min-snr with a floor)
    min_snr_gamma: float = ranged(5.0, 0, 1e6, low_open=True)
    prediction: str = "eps"  # what the network outputs: eps (DDPM eq. 14) | v | x0; samplers convert to eps
    t_distribution: str = "uniform"  # training timesteps: uniform (DDPM) | cosine (log-SNR distributed as
    #                                  under the cosine schedule, truncated to this schedule's range; the process stays linear)
    sampler: str = "ancestral"  # sampler for the per-epoch grids and evaluation
    sample_steps: int = ranged(1000, 1, 100_000)  # DDIM / DPM-Solver++ steps, at most timesteps (ancestral: all T)
    eta: float = ranged(0.0, 0, 1)  # DDIM stochasticity
    grid: str = "time"  # where the sampler's levels lie: time | log-snr | trailing (mnistgen.diffusion.registry)
    grid_power: float = ranged(1.0, *GRID_POWER_RANGE)  # time / trailing: (1 - k/K)^power of the time left
    num_labels: ClassVar[int] = 0  # unconditional

    def check(self) -> None:
        _check(self.beta_start < self.beta_end, "need process.beta_start < process.beta_end")
        _check_objective(self)
        _choice(self.t_distribution, T_DISTRIBUTIONS, "process.t_distribution")
        _check_sampler(self, self.timesteps)


def _check_objective(process: "DDPMConfig | CFGConfig") -> None:
    """The prediction target and the loss weighting, the same rules for both processes."""
    _choice(process.prediction, PREDICTIONS, "process.prediction")
    _choice(process.loss_weighting, LOSS_WEIGHTINGS, "process.loss_weighting")
    _check(process.loss_weighting != "clamped-snr" or process.min_snr_gamma >= 1,
           f"bad process.min_snr_gamma {process.min_snr_gamma}: clamped-snr needs gamma >= 1 (its floor)")
    _check(process.loss_weighting != "clamped-snr" or process.prediction != "eps",
           "process.loss_weighting clamped-snr needs process.prediction v or x0: on an eps network its floor "
           "weights the noisiest steps' eps error by 1 / SNR (up to 2.5e4)")


def _check_sampler(process: "DDPMConfig | CFGConfig", most_steps: int | None) -> None:
    """The default sampler against the registry, its steps against the process's timesteps (if discrete)."""
    _choice(process.sampler, SAMPLERS, "process.sampler")
    _choice(process.grid, GRID_SPACINGS, "process.grid")
    _check(process.grid_power == 1.0 or process.grid in POWERED_SPACINGS,
           f"process.grid_power applies to process.grid {' / '.join(POWERED_SPACINGS)} only "
           f"({process.grid} takes none); leave it at 1")
    _check(most_steps is None or process.sampler == "ancestral" or process.sample_steps <= most_steps,
           f"bad process.sample_steps {process.sample_steps}: sampling steps must be in [1, {most_steps}] "
           f"(process.timesteps)")


@dataclass(frozen=True)
class CFGConfig:
    lambda_min: float = ranged(-20.0, -30, 30)
    lambda_max: float = ranged(20.0, -30, 30)
    p_uncond: float = ranged(0.1, 0, 1, high_open=True)
    v: float = ranged(0.3, 0, 1)  # variance interpolation exponent of the ancestral step
    guidance: float = ranged(0.3, 0, 100)  # w
    sampler: str = "ancestral"  # the paper's sampler (its step, on a grid uniform in the cosine schedule's time)
    sample_steps: int = ranged(256, 1, 100_000)
    eta: float = ranged(0.0, 0, 1)  # DDIM stochasticity
    grid: str = "time"  # as DDPMConfig's; here trailing is the same grid as time
    grid_power: float = ranged(1.0, *GRID_POWER_RANGE)
    prediction: str = "eps"  # what the network outputs: eps (the paper's) | v | x0; the sampler converts to eps
    loss_weighting: str = "uniform"  # as DDPMConfig's; uniform is the paper's loss
    min_snr_gamma: float = ranged(5.0, 0, 1e6, low_open=True)
    num_labels: ClassVar[int] = 10  # conditions on the digit class (plus a learned null label)

    def check(self) -> None:
        _check(self.lambda_min < self.lambda_max, "need process.lambda_min < process.lambda_max")
        _check_objective(self)
        _check_sampler(self, None)


@dataclass(frozen=True)
class ClassifierConfig:
    width: int = ranged(32, 8, 512)  # channels of the first stage (then 2x, 4x); a multiple of 8 (GroupNorm)
    feature_dim: int = ranged(128, 1, WIDTH)  # penultimate layer: the MNIST-FD feature space
    dropout: float = ranged(0.3, 0, 1, high_open=True)

    def check(self, run: "RunConfig") -> None:
        _check(self.width % 8 == 0, f"bad model.width {self.width}: must be a multiple of 8 "
                                    f"(the classifier's GroupNorm has 8 groups)")


ModelConfig = VAEConfig | UNetConfig | ClassifierConfig
ProcessConfig = DDPMConfig | CFGConfig


@dataclass(frozen=True)
class RunConfig:
    kind: str
    preset: str
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=VAEConfig)
    process: ProcessConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "RunConfig":
        kind = d.get("kind")
        if kind not in KINDS:
            raise UserError(f"unknown model kind {kind!r}; valid: {', '.join(KINDS)}")
        model_cls, process_cls = SECTIONS[kind]
        train = dict(_section(d, "train"))
        if isinstance(train.get("amp"), bool):  # written by mnistgen 0.1: amp on CUDA or not
            train["amp"] = "auto" if train["amp"] else "off"
        config = RunConfig(
            kind=kind,
            preset=str(d.get("preset", "custom")),
            data=_build(DataConfig, _section(d, "data")),
            train=_build(TrainConfig, train),
            model=_build(model_cls, _section(d, "model")),
            process=_build(process_cls, _section(d, "process")) if process_cls else None,
        )
        validate(config)
        return config


# The config types of each model kind's sections (model, process), the one list of kinds at this
# layer: run files are parsed here, below the kind objects of mnistgen.kinds, which follow this order.
SECTIONS: dict[str, tuple[type, type | None]] = {
    "vae": (VAEConfig, None),
    "ddpm": (UNetConfig, DDPMConfig),
    "cfg": (UNetConfig, CFGConfig),
    "classifier": (ClassifierConfig, None),
}
KINDS = tuple(SECTIONS)


def _section(d: dict[str, Any], name: str) -> dict[str, Any]:
    value = d.get(name, {})
    if not isinstance(value, dict):
        raise UserError(f"section {name!r} must be a JSON object, found {type(value).__name__}")
    return value


def _build(cls: type, values: dict[str, Any]):
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise UserError(f"unknown {cls.__name__} field(s) {sorted(unknown)}; valid: {', '.join(sorted(names))}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(v, hints[k], k) for k, v in values.items()})


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Convert a JSON or command-line value to the field's annotated type."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(_coerce(v, typing.get_args(hint)[0], name) for v in items)
    if origin in (typing.Union, types.UnionType):
        return value  # only nested configs are unions; built by the caller
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return hint(value)
    except (TypeError, ValueError):
        raise UserError(f"bad value {value!r} for {name}: expected {hint.__name__}") from None


def flat_config(config: RunConfig) -> dict[str, Any]:
    """{"kind", "preset", "section.field": value} for every setting of ``config``."""
    d = config.to_dict()
    flat = {k: d[k] for k in ("kind", "preset")}
    for section in ("data", "train", "model", "process"):
        flat.update({f"{section}.{k}": v for k, v in (d[section] or {}).items()})
    return flat


def differences(a: RunConfig, b: RunConfig) -> dict[str, tuple[Any, Any]]:
    """{"section.field": (value in a, value in b)} for every setting that differs (``preset`` included)."""
    fa, fb = flat_config(a), flat_config(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def apply_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Return ``config`` with ``{"section.field": value}`` overrides applied (sections: data, train, model, process)."""
    sections = {"data": config.data, "train": config.train, "model": config.model, "process": config.process}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        target = sections.get(section)
        if target is None:
            valid = [s for s, v in sections.items() if v is not None]
            raise UserError(f"unknown config section {section!r} in {key!r}; valid: {', '.join(valid)}")
        names = [f.name for f in fields(target)]
        if name not in names:
            raise UserError(f"unknown field {name!r} in section {section!r}; valid: {', '.join(names)}")
        hint = typing.get_type_hints(type(target))[name]
        sections[section] = replace(target, **{name: _coerce(value, hint, key)})
    new = replace(config, **sections)
    validate(new)
    return new


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _choice(value: str, valid: tuple[str, ...], name: str) -> None:
    _check(value in valid, f"bad {name} {value!r}; valid: {', '.join(valid)}")


def _check_ranges(section: str, component) -> None:
    """Every numeric field of ``component`` against its declared :class:`Range` (floats: finite)."""
    for f in fields(component):
        value = getattr(component, f.name)
        rng = f.metadata.get("range")
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, float) and not math.isfinite(v):
                raise UserError(f"bad {section}.{f.name} {v}: must be a finite number")
            _check(rng is None or rng.holds(v), f"bad {section}.{f.name} {value!r}: must be {rng}")


def validate(config: RunConfig) -> None:
    """Reject values that cannot work, with one message naming the field: each field's declared range,
    then the rules that join fields (each component's ``check``)."""
    _choice(config.kind, KINDS, "model kind")
    for section in ("data", "train", "model", "process"):
        if getattr(config, section) is not None:
            _check_ranges(section, getattr(config, section))
    _choice(config.data.dataset, DATASETS, "data.dataset")
    _choice(config.data.validation, VALIDATIONS, "data.validation")
    _check(config.data.resolution in (28, 32), f"bad data.resolution {config.data.resolution}; valid: 28, 32")
    _choice(config.train.lr_schedule, LR_SCHEDULES, "train.lr_schedule")
    _choice(config.train.amp, AMP_MODES, "train.amp")
    config.model.check(config)
    if config.process is not None:
        config.process.check()


# ---------------------------------------------------------------------------------------
# Presets. `reference` = the study's settings; `cpu` = a design measured on a 2-core CPU;
# `smoke` = seconds, for tests.

_DIFFUSION_REFERENCE_TRAIN = TrainConfig(
    epochs=20, batch_size=256, lr=2e-4, lr_schedule="step", lr_step_epochs=10, lr_gamma=0.1,
    ema_decay=0.995, ema_start=2000, amp="auto",
)
_UNET_REFERENCE = UNetConfig()
_UNET_CPU = UNetConfig(channels=(32, 64, 128), bottleneck=128, blocks=1, time_dim=64, unshuffle=2,
                       attention=True, groups=8)
_UNET_SMOKE = UNetConfig(channels=(8, 16), bottleneck=16, blocks=1, time_dim=16, unshuffle=2, groups=4)
_CPU_DATA = DataConfig(resolution=32, val_limit=2000)
# The diffusion presets share 12 epochs of training: 7 for the DDPM and 5 for the CFG model
# (docs/cpu-design.md, "The split of the training minutes"), both under bf16 autocast where the
# CPU runs it natively (amp="native"; docs/cpu-design.md, "bf16 autocast on the CPU").
_CPU_TRAIN = TrainConfig(
    batch_size=64, lr=2e-3, lr_schedule="cosine", warmup_steps=300, grad_clip=1.0,
    ema_decay=0.999, ema_start=1000, channels_last=True, amp="native",
)
_SMOKE_DATA = DataConfig(train_limit=2048, val_limit=512)
_SMOKE_TRAIN = TrainConfig(epochs=2, batch_size=64, lr=2e-3, log_every=5, ema_decay=0.9, ema_start=2)

PRESETS: dict[str, dict[str, RunConfig]] = {
    "vae": {
        "reference": RunConfig("vae", "reference", train=TrainConfig(epochs=20, batch_size=128, lr=1e-3)),
        "cpu": RunConfig("vae", "cpu", train=TrainConfig(epochs=20, batch_size=128, lr=1e-3)),
        "smoke": RunConfig("vae", "smoke", _SMOKE_DATA, train=replace(_SMOKE_TRAIN, lr=1e-3, ema_decay=0.0),
                           model=VAEConfig(hidden=64, latent=20)),
    },
    "ddpm": {
        "reference": RunConfig("ddpm", "reference", DataConfig(resolution=32), _DIFFUSION_REFERENCE_TRAIN,
                               _UNET_REFERENCE, DDPMConfig()),
        "cpu": RunConfig("ddpm", "cpu", _CPU_DATA, replace(_CPU_TRAIN, epochs=7), _UNET_CPU,
                         DDPMConfig(prediction="x0", loss_weighting="clamped-snr", t_distribution="cosine",
                                    sampler="dpm++2m-sde", sample_steps=10, grid="trailing", grid_power=0.8,
                                    eta=1.0)),
        "smoke": RunConfig("ddpm", "smoke", _SMOKE_DATA, _SMOKE_TRAIN, _UNET_SMOKE,
                           DDPMConfig(sampler="ddim", sample_steps=5)),
    },
    "cfg": {
        "reference": RunConfig("cfg", "reference", DataConfig(resolution=32), _DIFFUSION_REFERENCE_TRAIN,
                               replace(_UNET_REFERENCE, num_classes=10), CFGConfig()),
        "cpu": RunConfig("cfg", "cpu", _CPU_DATA, replace(_CPU_TRAIN, epochs=5),
                         replace(_UNET_CPU, num_classes=10), CFGConfig(sample_steps=16, prediction="v")),
        "smoke": RunConfig("cfg", "smoke", _SMOKE_DATA, _SMOKE_TRAIN,
                           replace(_UNET_SMOKE, num_classes=10), CFGConfig(sample_steps=5)),
    },
}


_CLASSIFIER_TRAIN = TrainConfig(epochs=4, batch_size=128, lr=2e-3, lr_schedule="cosine", warmup_steps=100)
PRESETS["classifier"] = {
    "reference": RunConfig("classifier", "reference", train=_CLASSIFIER_TRAIN, model=ClassifierConfig()),
    "cpu": RunConfig("classifier", "cpu", train=_CLASSIFIER_TRAIN, model=ClassifierConfig()),
    "smoke": RunConfig("classifier", "smoke", _SMOKE_DATA, replace(_CLASSIFIER_TRAIN, epochs=1),
                       ClassifierConfig(width=8, feature_dim=32)),
}


def preset(kind: str, name: str) -> RunConfig:
    """The named preset for a model kind; unknown names list the valid ones."""
    _choice(kind, KINDS, "model kind")
    _choice(name, tuple(PRESETS[kind]), "preset")
    return PRESETS[kind][name]
