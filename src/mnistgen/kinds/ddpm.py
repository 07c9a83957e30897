"""The unconditional DDPM (SPEC section 2): a U-Net that predicts eps (or v / x_0, converted to eps), ancestral
or DDIM sampling."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from mnistgen.config import DDPMConfig, RunConfig
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
        """Ancestral runs all T steps; DDIM takes the run's steps and eta unless given."""
        p = config.process
        sampler = settings.sampler or p.sampler
        steps = p.timesteps if sampler == "ancestral" else (settings.steps or p.sample_steps)
        return SamplerSettings(sampler, steps, p.eta if settings.eta is None else settings.eta)

    def check_settings(self, config: RunConfig, settings: SamplerSettings) -> None:
        super().check_settings(config, settings)
        p = config.process
        T = p.timesteps
        if (settings.sampler or p.sampler) == "ancestral" and (settings.steps is not None or settings.eta is not None):
            raise UserError(f"ancestral sampling runs all {T} steps with the DDPM's own variance; "
                            f"--steps and --eta apply to --sampler ddim")
        if settings.steps is not None and not 1 <= settings.steps <= T:
            raise UserError(f"--steps must be in [1, {T}] for DDIM on this model, got {settings.steps}")
        if (settings.sampler or p.sampler) == "ddim" and settings.steps is None and p.sample_steps > T:
            raise UserError(f"the run's process.sample_steps ({p.sample_steps}) exceeds its {T} "
                            f"timesteps; pass --steps in [1, {T}]")
        in_range("--eta", settings.eta, DDPMConfig, "eta")

    def step_times(self, config: RunConfig, settings: SamplerSettings) -> list[int]:
        """The timesteps the sampler visits: all T for ancestral sampling, DDIM's subsequence."""
        resolved = self.resolve(config, settings)
        if resolved.sampler == "ancestral":
            return list(range(config.process.timesteps - 1, -1, -1))
        return samplers.ddim_timesteps(config.process.timesteps, resolved.steps)

    def render_figures(self, trained: TrainedModel, data_dir: str | os.PathLike | None) -> list[Path]:
        from mnistgen.figures import diffusion

        return diffusion.render_ddpm(self.draw(trained), trained.process.T, trained.run, trained.device)
