"""The sampler registry: name -> (the loop, the options it takes, a line of help), and the grid
spacings. It imports nothing (no torch), so configuration checks and the command line's choices read
it without loading torch; :func:`SamplerSpec.loop` fetches the loop from
:mod:`mnistgen.diffusion.samplers` when a sampler runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

# Where a grid's levels lie: evenly in the process's time (the default; both ends included), evenly in
# log-SNR, or "trailing": evenly in time with the last evaluation one interval before the clean end (Lin
# et al. 2023's trailing timesteps), so no step is spent where the noisy image already is the image.
GRID_SPACINGS = ("time", "log-snr", "trailing")
POWERED_SPACINGS = ("time", "trailing")  # spacings that take a power: the fraction of time left, raised to it
GRID_POWER_RANGE = (0.25, 4.0)  # a power < 1 moves the levels towards the noise, > 1 towards the image


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    function: str  # the loop's name in mnistgen.diffusion.samplers: (denoiser, x, grid, generator, on_step, **options)
    options: tuple[str, ...]  # options beyond steps, grid and guidance
    summary: str

    def loop(self) -> Callable:
        from mnistgen.diffusion import samplers

        return getattr(samplers, self.function)


SAMPLERS: dict[str, SamplerSpec] = {s.name: s for s in (
    SamplerSpec("ancestral", "ancestral", (), "the process's own reverse chain (DDPM eq. 11; the CFG paper's step)"),
    SamplerSpec("ddim", "ddim", ("eta",), "DDIM eq. 12; eta = 0 deterministic, eta = 1 the posterior variance"),
    SamplerSpec("dpm++2m", "dpm_solver_2m", (), "DPM-Solver++(2M), deterministic, second order"),
    SamplerSpec("dpm++2m-sde", "dpm_solver_2m_sde", (), "SDE-DPM-Solver++(2M), stochastic"),
)}


@dataclass(frozen=True)
class SamplerSettings:
    """How to sample: ``sampler`` a name in :data:`SAMPLERS` (or ``prior`` for the VAE), ``steps``
    network evaluations (a guided step's two, batched, count as one), ``eta`` (DDIM), ``guidance`` w
    (conditional models), ``grid`` a spacing in :data:`GRID_SPACINGS` and ``grid_power`` its power (the
    spacings of :data:`POWERED_SPACINGS`: the fraction of time left at level k is (1 - k/K)^power; 2 is
    DDIM's quadratic selection, appendix D.2). Fields left None take the run's defaults; a model kind's
    ``resolve`` fills them in, and fields that do not apply stay None."""

    sampler: str | None = None
    steps: int | None = None
    eta: float | None = None  # DDIM
    guidance: float | None = None  # CFG: w
    grid: str | None = None  # grid spacing
    grid_power: float | None = None  # the power of a powered spacing

    def to_json(self) -> dict:
        return {k: v for k, v in vars(self).items() if v is not None}

    def describe(self) -> str:
        """e.g. 'ddim-50, eta = 1', 'ancestral-1000', 'dpm++2m-sde-10, trailing^0.8 grid' (the steps when
        set; the grid unless it is the default, evenly in time)."""
        name = (self.sampler or "the run's sampler") + (f"-{self.steps}" if self.steps else "")
        name += f", eta = {self.eta:g}" if self.eta is not None else ""
        power = f"^{self.grid_power:g}" if self.grid_power not in (None, 1.0) else ""
        return name + (f", {self.grid}{power} grid" if (self.grid or GRID_SPACINGS[0]) != GRID_SPACINGS[0] or power
                       else "")


def parse_sampler(text: str) -> SamplerSettings:
    """A sampler of a steps sweep, 'NAME', 'NAME:GRID' or 'NAME:GRID:POWER' (e.g. 'ddim:time',
    'dpm++2m-sde:trailing:0.8'), as settings without steps; what is not given stays None (the run's).
    A ValueError says what is wrong, with the valid names."""
    name, grid, power, *rest = [*text.strip().split(":"), None, None]
    if rest and rest[0] is not None:
        raise ValueError(f"{text!r} has more than NAME:GRID:POWER")
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r} in {text!r}; valid: {', '.join(SAMPLERS)}")
    if grid is not None and grid not in GRID_SPACINGS:
        raise ValueError(f"unknown grid {grid!r} in {text!r}; valid: {', '.join(GRID_SPACINGS)}")
    try:
        value = float(power) if power is not None else None
    except ValueError:
        raise ValueError(f"the grid power in {text!r} is not a number") from None
    return SamplerSettings(name, grid=grid, grid_power=value)
