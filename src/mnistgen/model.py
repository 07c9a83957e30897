"""A trained model, ready to use: :class:`Model` (what ``mnistgen.load`` returns) and :func:`load`."""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import replace
from typing import Callable, Iterator, Sequence

import torch

from mnistgen import kinds
from mnistgen.data.mnist import native_size
from mnistgen.defaults import run_path
from mnistgen.diffusion.samplers import SamplerSettings, to_unit
from mnistgen.errors import UserError
from mnistgen.diffusion.editing import RePaintSettings
from mnistgen.images import check_mask, check_unit_images, paste_known, read_mask, save_animation
from mnistgen.kinds import TrainedModel
from mnistgen.kinds.base import SAMPLE_BATCH
from mnistgen.runs import load_run
from mnistgen.storage.checkpoint import describe_error
from mnistgen.training.device import pick_device


def as_labels(labels, n: int) -> torch.Tensor:
    """A digit (int, NumPy integer or 0-d tensor), a sequence of n digits or a tensor of them ->
    (n,) int64, each checked to lie in 0-9; floats are refused, not truncated."""
    try:
        given = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"labels must be a digit 0-9 or a sequence of them ({describe_error(e)})") from None
    if given.is_floating_point() or given.is_complex() or given.dtype == torch.bool:
        raise UserError(f"labels must be whole digits 0-9, got {given.dtype} values")
    labels = given.to(torch.long).flatten().cpu()
    if labels.numel() == 1 and n != 1:
        labels = labels.expand(n).clone()
    if len(labels) != n:
        raise UserError(f"labels must be one digit or {n} of them, got {len(labels)}")
    if len(labels) and not bool(((labels >= 0) & (labels <= 9)).all()):
        raise UserError(f"labels must be digits 0-9, got {sorted(set(labels.tolist()))}")
    return labels


class Model:
    """A trained model, ready to use; what :func:`load` returns. Images are always 28x28 in [0, 1]
    (the U-Net's padding to 32 is cropped away)."""

    def __init__(self, trained: TrainedModel):
        self.trained = trained
        self.kind = kinds.get(trained.config.kind)

    config = property(lambda self: self.trained.config, doc="the run's RunConfig")
    network = property(lambda self: self.trained.model, doc="the torch module (EMA weights, eval mode)")
    device = property(lambda self: self.trained.device)
    history = property(lambda self: self.trained.history, doc="one EpochRecord per trained epoch")
    path = property(lambda self: self.trained.run.root)

    def __repr__(self) -> str:
        return f"mnistgen.Model({self.config.kind}, preset {self.config.preset!r}, {self.path}, on {self.device})"

    # -- sampling ---------------------------------------------------------------------------
    def _prepare(self, n: int, labels, settings: SamplerSettings, generator: torch.Generator | None):
        if not isinstance(n, int) or n < 1:
            raise UserError(f"n must be a whole number >= 1, got {n!r}")
        self.kind.check_settings(self.config, settings)
        self.kind.check_labels(labels is not None)
        labels = as_labels(labels, n) if labels is not None else None
        return labels, self._generator(generator)

    def _generator(self, generator: torch.Generator | None) -> torch.Generator:
        """``generator``, checked to be on the model's device, or a freshly seeded one there."""
        if generator is None:
            generator = torch.Generator(self.device)
            generator.seed()
        elif generator.device.type != self.device.type:
            raise UserError(f"the generator is on {generator.device} and the model on {self.device}; "
                            f"make it with torch.Generator({str(self.device)!r})")
        return generator

    def sample_batches(self, n: int, *, labels=None, guidance: float | None = None, sampler: str | None = None,
                       steps: int | None = None, eta: float | None = None, grid: str | None = None,
                       grid_power: float | None = None,
                       generator: torch.Generator | None = None, progress: bool = True,
                       batch_size: int = SAMPLE_BATCH) -> Iterator[torch.Tensor]:
        """:meth:`sample` as CPU batches of at most ``batch_size``: memory stays bounded for any n.
        Every argument is checked here, before the first batch is asked for."""
        settings = SamplerSettings(sampler, steps, eta, guidance, grid, grid_power)
        labels, generator = self._prepare(n, labels, settings, generator)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        return self._batches(n, labels, settings, generator, progress, batch_size)

    @torch.no_grad()
    def _batches(self, n, labels, settings, generator, progress, batch_size) -> Iterator[torch.Tensor]:
        for batch in self.kind.sample_batches(self.config, self.network, n, generator, settings, labels,
                                              self.trained.process, batch_size, progress):
            yield native_size(batch)

    def sample(self, n: int, *, labels=None, guidance: float | None = None, sampler: str | None = None,
               steps: int | None = None, eta: float | None = None, grid: str | None = None,
               grid_power: float | None = None, generator: torch.Generator | None = None,
               progress: bool = True) -> torch.Tensor:
        """``n`` samples, (n, 1, 28, 28) in [0, 1] on the CPU, with the run's default sampler unless
        overridden. The CFG model needs ``labels``: one digit or one per sample. ``generator`` (on the
        model's device) makes the draw repeatable."""
        return torch.cat(list(self.sample_batches(n, labels=labels, guidance=guidance, sampler=sampler, steps=steps,
                                                  eta=eta, grid=grid, grid_power=grid_power, generator=generator,
                                                  progress=progress)))

    def _times(self, settings: SamplerSettings) -> list[int]:
        if not self.kind.iterative:
            raise UserError(f"the {self.config.kind} model samples in one pass; it has no reverse process")
        return self.kind.step_times(self.config, settings)

    @torch.no_grad()
    def reverse_chain(self, n: int = 4, *, at: Sequence[int] | None = None, frames: int | None = None,
                      labels=None, guidance: float | None = None, sampler: str | None = None,
                      steps: int | None = None, eta: float | None = None, grid: str | None = None,
                      grid_power: float | None = None, generator: torch.Generator | None = None,
                      on_progress: Callable[[float], None] | None = None) -> torch.Tensor:
        """The reverse process of ``n`` samples: the state after step t for each t in ``at``, t counted
        down to the last step's (0 on a time grid; the trailing grid's last timestep lies above it) = the
        finished samples (the DDPM's timesteps; the CFG sampler's steps still to go).
        A t the sampler does not visit (one on fewer than T steps skips most) is replaced by the nearest one it does.
        ``frames`` instead of ``at``: up to that many states (at most one per step) evenly spaced over the
        sampler's steps, the last the finished samples. Default: up to six distinct states from nearly pure noise to the end.
        ``on_progress`` is called after each step with the fraction of the steps done.
        Returns (n, len(at), 1, 28, 28) in [0, 1] (n, number of default states, ... without ``at``)."""
        settings = SamplerSettings(sampler, steps, eta, guidance, grid, grid_power)
        labels, generator = self._prepare(n, labels, settings, generator)  # settings checked first
        times = self._times(settings)
        first = times[0]
        if frames is not None:
            if at is not None:
                raise UserError("give at or frames, not both")
            if isinstance(frames, bool) or not isinstance(frames, int) or frames < 2:
                raise UserError(f"frames must be a whole number >= 2, got {frames!r}")
            at = evenly(times, frames)
        default = dict.fromkeys(round(first * f) for f in (1.0, 0.5, 0.2, 0.1, 0.025, 0.0))  # distinct, in order
        wanted = at if at is not None else list(default)
        if not all(isinstance(t, int) and 0 <= t <= first for t in wanted):
            raise UserError(f"at must hold steps in [0, {first}], got {list(wanted)}")
        picked = [min(times, key=lambda s: (abs(s - t), s)) for t in wanted]
        if at is None:
            picked = list(dict.fromkeys(picked))  # the default shows each visited state once
            if len(picked) < min(len(default), len(times)):  # a short grid ending above t = 0: by step instead
                picked = evenly(times, len(default))
        kept: dict[int, torch.Tensor] = {}

        done = 0

        def keep(t: int, x: torch.Tensor) -> None:
            nonlocal done
            if t in picked:
                kept[t] = native_size(to_unit(x)).cpu()
            done += 1
            if on_progress is not None:
                on_progress(done / len(times))

        self.kind.sample(self.config, self.network, n, generator, settings,
                         labels.to(self.device) if labels is not None else None, self.trained.process, keep)
        return torch.stack([kept[t] for t in picked], dim=1)  # (n, len(at), 1, 28, 28)

    def animate(self, path: str | os.PathLike, n: int = 16, *, frames: int = 60, **options) -> Path:
        """An animated GIF of the reverse process of ``n`` samples: a grid per frame, ``frames`` states
        evenly spaced over the sampler's steps, the finished samples held at the end. ``options`` as
        for :meth:`reverse_chain`; returns the path."""
        chain = self.reverse_chain(n, frames=frames, **options)  # (n, F, 1, 28, 28)
        save_animation(list(chain.transpose(0, 1)), Path(path))
        return Path(path)

    # -- a latent space (the VAE's; other kinds refuse) -------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The codes (the VAE's posterior means mu(x)) of images (N, 1, H, W) in [0, 1]: (N, latent)."""
        self.kind.latent_size(self.config)  # refused first by a kind without a latent space
        return self.kind.encode(self.network, images.to(self.device).float()).cpu()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Images of codes (N, latent) (the VAE decoder's means): (N, 1, H, W) in [0, 1]."""
        self.kind.latent_size(self.config)
        return self.kind.decode(self.network, codes.to(self.device).float()).cpu()

    # -- editing: inpainting, inversion, interpolation ----------------------------------------------
    def _edit_labels(self, labels, n: int) -> torch.Tensor | None:
        """An edit's labels (optional: the CFG model edits unconditionally without them), on the device."""
        if labels is None:
            return None
        if not self.kind.takes_labels:
            raise UserError(f"the {self.config.kind} model takes no labels")
        return as_labels(labels, n).to(self.device)

    @torch.no_grad()
    def inpaint(self, images: torch.Tensor, mask, *, labels=None, guidance: float | None = None,
                steps: int | None = None, jump: int | None = None, resample: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``images`` (N, 1, 28, 28) in [0, 1] with the pixels where ``mask`` is 0 filled in by the model;
        ``mask``: (28, 28) or (1 or N, 1, 28, 28), 1 = known, or a name (lower, upper, left, right: the half
        filled in). The DDPM and the CFG model use RePaint (``steps``, ``jump``, ``resample``; the CFG model
        guided towards ``labels`` with weight ``guidance``, or unconditional without labels); the VAE fits
        its code to the known pixels. The known pixels come back exactly as given. Returns a CPU tensor."""
        images = self._images(images, "images")
        mask = check_mask(read_mask(mask) if isinstance(mask, str) else mask, len(images))
        chosen = {k: v for k, v in (("steps", steps), ("jump", jump), ("resample", resample)) if v is not None}
        given = replace(RePaintSettings(), **chosen) if chosen else None
        repaint = self.kind.check_edit(self.config, labels is not None, guidance, given)
        labels = self._edit_labels(labels, len(images))
        if labels is not None and guidance is None:
            guidance = self.kind.resolve(self.config, SamplerSettings()).guidance
        out = self.kind.inpaint(self.config, self.network, images, mask, self._generator(generator), labels, guidance,
                                repaint, self.trained.process).cpu()
        return paste_known(images, mask, out)

    def _inversion_steps(self, steps: int) -> int:
        """``steps`` checked as a sampler's are (kinds without a process refuse inversion here)."""
        if not self.kind.iterative:
            raise UserError(f"the {self.config.kind} model samples in one pass, with nothing to invert to; "
                            f"invert / from_noise need a diffusion model")
        self.kind.check_settings(self.config, SamplerSettings(steps=steps))
        return steps

    @torch.no_grad()
    def invert(self, images: torch.Tensor, *, labels=None, steps: int = 100) -> torch.Tensor:
        """The noise that deterministic DDIM (eta = 0) on ``steps`` levels maps to ``images`` (N, 1, 28, 28)
        in [0, 1]: DDIM inversion, with the network conditioned on ``labels`` (the CFG model) or
        unconditional. Returns (N, 1, R, R) on the CPU, R the network's resolution (32: MNIST padded)."""
        steps = self._inversion_steps(steps)
        images = self._images(images, "images")
        labels = self._edit_labels(labels, len(images))
        return self.kind.invert(self.config, self.network, images, steps, labels,
                                self.trained.process).cpu()

    @torch.no_grad()
    def from_noise(self, noise: torch.Tensor, *, labels=None, steps: int = 100) -> torch.Tensor:
        """Images (N, 1, 28, 28) in [0, 1] of ``noise`` by DDIM at eta = 0 on ``steps`` levels: the inverse of
        :meth:`invert` (``from_noise(invert(x))`` is close to x)."""
        if not isinstance(noise, torch.Tensor) or noise.dim() != 4:
            raise UserError(f"noise must be a tensor (N, C, H, W), got {getattr(noise, 'shape', type(noise))}")
        labels = self._edit_labels(labels, len(noise))
        return self.kind.from_noise(self.config, self.network, noise.float(), self._inversion_steps(steps), labels,
                                    self.trained.process).cpu()

    @torch.no_grad()
    def interpolate(self, a: torch.Tensor, b: torch.Tensor, steps: int = 11, *, labels=None,
                    inversion_steps: int = 100) -> torch.Tensor:
        """Images along the model's path from image ``a`` to image ``b`` (each (1, H, W) or (1, 1, H, W)),
        ``steps`` of them with both ends: the VAE decodes (1 - s) z_a + s z_b of its codes; a diffusion
        model inverts both (:meth:`invert`, ``inversion_steps``), joins the noises by slerp and samples
        each point back. Returns (steps, 1, 28, 28)."""
        if not isinstance(steps, int) or steps < 2:
            raise UserError(f"steps must be a whole number >= 2, got {steps!r}")
        if not all(isinstance(x, torch.Tensor) and x.numel() == 28 * 28 for x in (a, b)):
            raise UserError("a and b must be single images, tensors (1, 28, 28) or (1, 1, 28, 28)")
        pair = self._images(torch.stack([a.reshape(1, 28, 28), b.reshape(1, 28, 28)]), "a and b")  # (2, 1, 28, 28)
        label = self._edit_labels(labels, 1)
        if self.kind.iterative:
            inversion_steps = self._inversion_steps(inversion_steps)
        fractions = torch.linspace(0, 1, steps)
        return self.kind.interpolate(self.config, self.network, pair[:1], pair[1:], fractions, inversion_steps,
                                     label, self.trained.process).cpu()

    def _images(self, images, what: str) -> torch.Tensor:
        """User images as (N, 1, 28, 28) float32 on the CPU, checked (shape, values in [0, 1])."""
        if not isinstance(images, torch.Tensor):
            raise UserError(f"{what} must be a tensor (N, 1, 28, 28) in [0, 1], got {type(images).__name__}")
        images = images.detach().float().cpu()
        check_unit_images(images, what)
        return images

    @torch.no_grad()
    def traverse(self, code: torch.Tensor, dims: Sequence[int], offsets: Sequence[float] = (-4, -2, 0, 2, 4)) -> torch.Tensor:
        """Decodes of ``code`` (latent,) with dimension d moved by each offset, for d in ``dims``:
        (len(dims), len(offsets), 1, H, W)."""
        latent = self.kind.latent_size(self.config)
        if not all(0 <= d < latent for d in dims):
            raise UserError(f"dims must lie in [0, {latent - 1}], got {list(dims)}")
        codes = code.reshape(1, 1, latent).repeat(len(dims), len(offsets), 1)  # (D, O, L)
        for i, d in enumerate(dims):
            codes[i, :, d] += torch.as_tensor(offsets, dtype=codes.dtype)
        return self.decode(codes.flatten(0, 1)).unflatten(0, (len(dims), len(offsets)))


def evenly(times: list[int], count: int) -> list[int]:
    """Up to ``count`` of a sampler's step labels ``times``, evenly spaced over its steps, first and last included."""
    return [times[i] for i in sorted({round(i * (len(times) - 1) / (count - 1)) for i in range(count)})]


def load(path_or_name: str | os.PathLike, device: str | torch.device = "auto") -> Model:
    """A trained model from a run directory or a pretrained one (``"pretrained:vae"``,
    ``"pretrained:ddpm"``, ``"pretrained:cfg"``), on ``device`` (auto: cuda, then mps, then cpu)."""
    return Model(load_run(run_path(path_or_name), pick_device(device), generative=True))
