"""`mnistgen figures RUN`: render the figures of a run's model kind into RUN/figures/."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mnistgen.recipes import load_data, load_run
from mnistgen.files import check_writable_dir


def render_figures(path: str | os.PathLike, device: torch.device, data_dir: str | os.PathLike | None = None) -> list[Path]:
    loaded = load_run(path, device, generative=True)
    out = loaded.run.figures
    check_writable_dir(out, "figures directory")
    if loaded.cfg.kind == "vae":
        from mnistgen.figures import vae

        return vae.render(loaded.model, loaded.history, load_data(loaded.cfg, "test", data_dir, device), out)
    from mnistgen.figures import diffusion

    if loaded.cfg.kind == "ddpm":
        return diffusion.render_ddpm(loaded.cfg, loaded.model, loaded.run)
    return diffusion.render_cfg(loaded.cfg, loaded.model, loaded.run)
