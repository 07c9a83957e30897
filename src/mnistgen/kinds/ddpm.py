"""The unconditional DDPM (SPEC section 2): a U-Net that predicts eps (or v / x_0, converted to eps), ancestral,
DDIM or DPM-Solver++(2M) sampling (deterministic, or its SDE variant)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from mnistgen.config import SAMPLERS, DDPMConfig, RunConfig
from mnistgen.diffusion import samplers
from mnistgen.diffusion.ddpm import GaussianDiffusion
from mnistgen.diffusion.samplers import SamplerSettings
from mnistgen.errors import UserError
from mnistgen.kinds.base import DiffusionKind, TrainedModel, in_range
from mnistgen.models.unet import UNet


class DDPMKind(DiffusionKind):
    name = "ddpm"
    title = "DDPM"
    long_title = "DDPM"
    sampler_options = ("--sampler", "--steps", "--eta")
    preview_nrow = 4
    captions = {
        "f9_epochs.png": "F9. DDPM samples from four fixed noise seeds (rows) as training proceeds (columns).",
        "f10_samples.png": "F10. 64 samples from the final DDPM (EMA weights), the run's default sampler.",
        "f11_reverse_chain.png": "F11. Four ancestral reverse chains, state after steps t = 999 ... 0.",
        "ddim_vs_ancestral.png": "DDIM-20, DDIM-50 and ancestral-1000 from the same initial noise.",
    }

    def build_model(self, config: RunConfig) -> nn.Module:
        return UNet(config.model)

    def build_process(self, config: RunConfig, device: torch.device | str = "cpu") -> GaussianDiffusion:
        return GaussianDiffusion(config.process, device)

    def preview_count(self) -> int:
        return 16

    def resolve(self, config: RunConfig, settings: SamplerSettings) -> SamplerSettings:
        """Ancestral runs all T steps unless given fewer; DDIM and DPM-Solver++ take the run's steps, and
        DDIM its eta, unless given."""
        p = config.process
        sampler = settings.sampler or p.sampler
        steps = settings.steps or (p.timesteps if sampler == "ancestral" else p.sample_steps)
        eta = (p.eta if settings.eta is None else settings.eta) if sampler == "ddim" else None
        return SamplerSettings(sampler, steps, eta)

    def check_settings(self, config: RunConfig, settings: SamplerSettings) -> None:
        super().check_settings(config, settings)
        p = config.process
        T = p.timesteps
        sampler = settings.sampler or p.sampler
        if sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
        if sampler != "ddim" and settings.eta is not None:
            raise UserError(f"--eta applies to --sampler ddim only ({sampler} has no eta)")
        if settings.steps is not None and not 1 <= settings.steps <= T:
            raise UserError(f"--steps must be in [1, {T}] on this model, got {settings.steps}")
        if sampler != "ancestral" and settings.steps is None and p.sample_steps > T:
            raise UserError(f"the run's process.sample_steps ({p.sample_steps}) exceeds its {T} "
                            f"timesteps; pass --steps in [1, {T}]")
        in_range("--eta", settings.eta, DDPMConfig, "eta")

    def step_times(self, config: RunConfig, settings: SamplerSettings) -> list[int]:
        """The timesteps the sampler visits, from T-1 down to 0 (all T for the full ancestral chain)."""
        return samplers.ddim_timesteps(config.process.timesteps, self.resolve(config, settings).steps)

    def render_figures(self, trained: TrainedModel, data_dir: str | os.PathLike | None) -> list[Path]:
        from mnistgen.figures import diffusion

        return diffusion.render_ddpm(self.draw(trained), trained.process.T, trained.run, trained.device)
