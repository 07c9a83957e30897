"""The variational autoencoder (SPEC section 1): Bernoulli decoder (or, for bits per pixel of grey levels,
a discretized-logistic one), samples from z ~ N(0, I)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from mnistgen.config import RunConfig
from mnistgen.data.mnist import TensorData
from mnistgen.diffusion.editing import RePaintSettings
from mnistgen.diffusion.samplers import OnStep, SamplerSettings
from mnistgen.errors import UserError
from mnistgen.evaluation.likelihood import (LikelihoodRequest, LikelihoodScores, iwae_nll_mean, neg_elbo_mean,
                                            vae_bits)
from mnistgen.evaluation.results import Likelihood, RunMetrics
from mnistgen.kinds.base import EvaluationRequest, ModelKind, TrainedModel
from mnistgen.models.vae import VAE, VAEObjective, fit_code
from mnistgen.progress import long_step


class VAEKind(ModelKind):
    name = "vae"
    title = "VAE"
    long_title = "Variational autoencoder"
    data_scale = "unit"  # the Bernoulli likelihood needs pixels in [0, 1]
    preview_nrow = 8
    captions = {
        "f1_loss.png": "F1. VAE training and validation negative ELBO per epoch; dashed: the 104-nat target.",
        "f2_samples.png": "F2. 64 VAE samples decoded from z ~ N(0, I).",
        "f3_traversals_0-9.png": "F3. Latent traversals of dimensions 0-9 (offsets -4..+4) from a prior sample "
                                 "and from an encoded test image.",
        "f4_traversals_10-19.png": "F4. Latent traversals of dimensions 10-19.",
        "f5_interpolation.png": "F5. Interpolating two codes in latent space (top) versus in pixel space (bottom).",
        "f6_interp_4_9.png": "F6. Latent interpolation between real test digits 4 and 9 (pixel blend below).",
        "f7_interp_5_6.png": "F7. Latent interpolation between real test digits 5 and 6.",
        "f8_interp_8_2.png": "F8. Latent interpolation between real test digits 8 and 2.",
    }

    def build_model(self, config: RunConfig) -> nn.Module:
        return VAE(config.model, image_size=config.data.resolution)

    def build_objective(self, config: RunConfig, device: torch.device | str = "cpu") -> VAEObjective:
        return VAEObjective()

    def sample(self, config: RunConfig, model: nn.Module, n: int, generator: torch.Generator,
               settings: SamplerSettings = SamplerSettings(), labels: torch.Tensor | None = None,
               process=None, on_step: OnStep | None = None) -> torch.Tensor:
        """Decode z ~ N(0, I): (n, 1, 28, 28) in [0, 1] (the decoder's means, :meth:`VAE.decode`), in one pass."""
        z = torch.randn(n, config.model.latent, generator=generator, device=next(model.parameters()).device)
        return model.decode(z)

    def latent_size(self, config: RunConfig) -> int:
        return config.model.latent

    def encode(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The posterior means mu(x) (N, latent)."""
        return model.encode(images)[0]

    def decode(self, model: nn.Module, codes: torch.Tensor) -> torch.Tensor:
        """The decoder's means (N, 1, H, W) in [0, 1] (:meth:`VAE.decode`)."""
        return model.decode(codes)

    def check_edit(self, config: RunConfig, labels: bool, guidance: float | None,
                   repaint: RePaintSettings | None) -> None:
        """The VAE fills in by fitting its code (:func:`~mnistgen.models.vae.fit_code`): no labels, no
        guidance, no RePaint settings."""
        given = [name for name, v in (("labels", labels or None), ("guidance", guidance), ("RePaint settings", repaint))
                 if v is not None]
        if given:
            raise UserError(f"the VAE inpaints by fitting its code to the known pixels; it takes no {', '.join(given)}")

    def edit_method(self, repaint: RePaintSettings | None) -> str:
        return "the code fitted to the known pixels (MAP, 300 Adam steps), decoded"

    def inpaint(self, config: RunConfig, model: nn.Module, images: torch.Tensor, mask: torch.Tensor,
                generator: torch.Generator, labels: torch.Tensor | None = None, guidance: float | None = None,
                repaint: RePaintSettings | None = None, process=None) -> torch.Tensor:
        """The decoded code of highest posterior density given the known pixels (deterministic)."""
        device = next(model.parameters()).device
        return model.decode(fit_code(model, images.to(device), mask.to(device)))

    def interpolate(self, config: RunConfig, model: nn.Module, a: torch.Tensor, b: torch.Tensor,
                    fractions: torch.Tensor, steps: int, labels: torch.Tensor | None = None,
                    process=None) -> torch.Tensor:
        """Decodes of (1 - s) z_a + s z_b, z the codes (posterior means) of the two images."""
        device = next(model.parameters()).device
        za, zb = self.encode(model, torch.cat([a, b]).to(device))
        s = fractions.to(device).view(-1, 1)  # (S, 1)
        return self.decode(model, (1 - s) * za + s * zb)

    def own_metrics(self, trained: TrainedModel, request: EvaluationRequest, data_dir, device,
                    metrics: RunMetrics) -> RunMetrics:
        """The negative ELBO and the IWAE bound on -log p(x) of the test images, as they are (grey
        levels) and dynamically binarized (one Bernoulli draw per pixel, seeded)."""
        test = self.load_data(trained.config, "test", data_dir, device)
        g = torch.Generator(device).manual_seed(request.seed)
        n, k = min(request.n_images, len(test)), request.iwae_k
        with long_step(f"ELBO and IWAE-{k} bound, grey levels", n, request.progress):
            grey = neg_elbo_mean(trained.model, test.x, g), iwae_nll_mean(trained.model, test.x[:n], k, g)
        binary = torch.bernoulli(test.x, generator=g)  # (N, 1, 28, 28) in {0, 1}
        with long_step(f"ELBO and IWAE-{k} bound, binarized", n, request.progress):
            binarized = neg_elbo_mean(trained.model, binary, g), iwae_nll_mean(trained.model, binary[:n], k, g)
        return replace(metrics, likelihood=Likelihood(*grey, k, n, len(test), *binarized))

    def grey_level_variant(self, config: RunConfig) -> RunConfig | None:
        """The same VAE with the discretized-logistic decoder, when ``config``'s is the Bernoulli one."""
        if config.model.decoder == "logistic":
            return None
        return replace(config, model=replace(config.model, decoder="logistic"))

    def check_likelihood(self, config: RunConfig) -> None:
        """The IWAE bound applies to either decoder (the Bernoulli one on binarized images)."""

    def likelihood(self, trained: TrainedModel, request: LikelihoodRequest, test: TensorData,
                   held: TensorData | None, progress: bool = True) -> LikelihoodScores:
        """The IWAE bound in bits per pixel: of the grey levels under the discretized-logistic decoder;
        under the Bernoulli decoder, of the test images dynamically binarized (seeded), a different
        protocol whose numbers do not compare with grey-level ones."""
        if trained.config.model.decoder == "logistic":
            return vae_bits(trained.model, test.x, request, "8-bit grey levels", progress)
        binary = torch.bernoulli(test.x, generator=torch.Generator(test.x.device).manual_seed(request.seed))
        return vae_bits(trained.model, binary, request, "dynamically binarized", progress)

    def render_figures(self, trained: TrainedModel, data_dir: str | os.PathLike | None) -> list[Path]:
        from mnistgen.figures import vae

        test = self.load_data(trained.config, "test", data_dir, trained.device)
        return vae.render(trained.model, list(trained.history), test, trained.run.figures)
