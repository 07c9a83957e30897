"""The unconditional DDPM (SPEC section 2): a U-Net that predicts eps (or v / x_0, converted to eps), ancestral,
DDIM or DPM-Solver++(2M) sampling (deterministic, or its SDE variant)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from mnistgen.config import RunConfig
from mnistgen.diffusion.ddpm import GaussianDiffusion
from mnistgen.evaluation.results import read_metrics
from mnistgen.kinds.base import STEPS_CAPTION, STEPS_FIGURE, DiffusionKind, TrainedModel
from mnistgen.models.unet import UNet


class DDPMKind(DiffusionKind):
    name = "ddpm"
    title = "DDPM"
    long_title = "DDPM"
    preview_nrow = 4
    captions = {
        "f9_epochs.png": "F9. DDPM samples from four fixed noise seeds (rows) as training proceeds (columns).",
        "f10_samples.png": "F10. 64 samples from the final DDPM (EMA weights), the run's default sampler.",
        "f11_reverse_chain.png": "F11. Four ancestral reverse chains, state after steps t = 999 ... 0.",
        "ddim_vs_ancestral.png": "DDIM-20, DDIM-50 and ancestral-1000 from the same initial noise.",
        STEPS_FIGURE: STEPS_CAPTION,
    }
    study_samplers = ("ddim:time", "dpm++2m-sde:trailing", "dpm++2m:trailing")

    def build_model(self, config: RunConfig) -> nn.Module:
        return UNet(config.model)

    def build_process(self, config: RunConfig, device: torch.device | str = "cpu") -> GaussianDiffusion:
        return GaussianDiffusion(config.process, device)

    def preview_count(self) -> int:
        return 16

    def preview_rows(self) -> dict[int, str]:
        """F9: the first four of the 16 fixed noises."""
        return {i: f"seed {i}" for i in range(4)}

    def default_steps(self, config: RunConfig, sampler: str) -> int:
        """The ancestral chain runs all T steps unless given fewer; the other samplers the run's steps."""
        return config.process.timesteps if sampler == "ancestral" else config.process.sample_steps

    def most_steps(self, config: RunConfig) -> int:
        return config.process.timesteps

    def render_figures(self, trained: TrainedModel, data_dir: str | os.PathLike | None) -> list[Path]:
        from mnistgen.figures import diffusion

        return (diffusion.render_ddpm(self.draw(trained), trained.process.T, trained.run, trained.device,
                                      self.preview_rows())
                + diffusion.render_steps(trained.run.figures / STEPS_FIGURE, read_metrics(trained.run).steps_sweep))
