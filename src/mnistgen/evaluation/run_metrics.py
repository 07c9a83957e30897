"""`mnistgen evaluate`: a run's metrics, written to RUN/metrics.json."""

from __future__ import annotations

import os

import torch

from mnistgen.evaluation.likelihood import iwae_nll_mean, neg_elbo_mean
from mnistgen.recipes import load_data, load_run


def evaluate_run(path: str | os.PathLike, device: torch.device, data_dir: str | os.PathLike | None = None,
                 iwae_k: int = 500, n_images: int = 10_000, seed: int = 0) -> dict:
    """Evaluate the run at ``path`` and merge the results into its metrics.json; returns the whole record."""
    loaded = load_run(path, device)
    test = load_data(loaded.cfg, "test", data_dir, device)
    g = torch.Generator(device).manual_seed(seed)
    values: dict = {"model": loaded.cfg.kind, "preset": loaded.cfg.preset}
    if loaded.cfg.kind == "vae":
        values.update(
            val_neg_elbo=neg_elbo_mean(loaded.model, test.x, g),
            iwae_nll=iwae_nll_mean(loaded.model, test.x[:n_images], iwae_k, g),
            iwae_k=iwae_k, iwae_n_images=min(n_images, len(test)), n_test_images=len(test),
        )
    return loaded.run.update_metrics(**values)
