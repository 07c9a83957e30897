"""The sampler registry: name -> (the loop, the options it takes, a line of help), and the grid
spacings. It imports nothing (no torch), so configuration checks and the command line's choices read
it without loading torch; :func:`SamplerSpec.loop` fetches the loop from
:mod:`mnistgen.diffusion.samplers` when a sampler runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

GRID_SPACINGS = ("time", "log-snr")  # evenly spaced in the process's time (the default), or in log-SNR


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
    (conditional models), ``grid`` a spacing in :data:`GRID_SPACINGS`. Fields left None take the run's
    defaults; a model kind's ``resolve`` fills them in, and fields that do not apply stay None."""

    sampler: str | None = None
    steps: int | None = None
    eta: float | None = None  # DDIM
    guidance: float | None = None  # CFG: w
    grid: str | None = None  # grid spacing

    def to_json(self) -> dict:
        return {k: v for k, v in vars(self).items() if v is not None}
