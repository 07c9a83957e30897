"""Likelihood estimates: the VAE's negative ELBO and importance-weighted bound (IWAE), and every
model's bits per dimension on 8-bit digits (``evaluate --likelihood``): the diffusion models' variational
bounds and probability-flow ODE (:mod:`mnistgen.diffusion.likelihood`), the VAE's IWAE bound."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import nn

from mnistgen.diffusion.denoiser import Denoiser
from mnistgen.diffusion.likelihood import Bound, OdeResult, ode_nll
from mnistgen.files import JsonRecord
from mnistgen.greylevels import bits_per_dim, dequantization_nats, dequantize
from mnistgen.models.vae import VAE, log_likelihood_normal, log_mean_exp, neg_elbo
from mnistgen.progress import Progress


@torch.no_grad()
def iwae_log_likelihood(model: VAE, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """IWAE bound (Burda et al. 2016, eq. 8) on log p(x), shape (B,):
    log (1/k) sum_i p(x | z_i) p(z_i) / q(z_i | x), z_i ~ q(z | x). k = 1 gives the ELBO; it grows with k."""
    b = x.shape[0]
    mu, logvar = model.encode(x)  # (B, L) each
    eps = torch.randn(k, *mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    z = (mu + (0.5 * logvar).exp() * eps).reshape(k * b, -1)  # (k*B, L), sample-major
    repeat = lambda t: t.expand(k, *t.shape).reshape(k * b, *t.shape[1:])  # noqa: E731
    log_px_z = model.log_likelihood(model.decode_logits(z), repeat(x))  # (k*B,)
    log_pz = log_likelihood_normal(torch.zeros_like(z), torch.zeros_like(z), z)
    log_qz = log_likelihood_normal(repeat(mu), repeat(logvar), z)
    log_w = (log_px_z + log_pz - log_qz).reshape(k, b).T  # (B, k)
    return log_mean_exp(log_w)


@torch.no_grad()
def mean_over_batches(fn, x: torch.Tensor, batch_size: int) -> float:
    """Mean of a per-example function ``fn(x_batch) -> (b,)`` over ``x`` in batches: each batch summed in
    float32 on the device (MPS has no float64), the batch sums added up on the host in double."""
    total = sum(fn(chunk).float().sum().item() for chunk in x.split(batch_size))
    return total / x.shape[0]


def neg_elbo_mean(model: VAE, x: torch.Tensor, generator: torch.Generator | None = None) -> float:
    return mean_over_batches(lambda xb: neg_elbo(model, xb, generator), x, 1000)


def iwae_nll_mean(model: VAE, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> float:
    """Mean IWAE estimate of -log p(x) in nats (an upper bound on the true NLL)."""
    batch = max(1, 20_000 // k)
    return -mean_over_batches(lambda xb: iwae_log_likelihood(model, xb, k, generator), x, batch)


# -- bits per dimension of every model, on one scale ------------------------------------------------
DEFAULT_IMAGES = 1000
DEFAULT_STRATA = 100


@dataclass(frozen=True)
class LikelihoodRequest:
    """What ``evaluate --likelihood`` measures: bits per dimension of the first ``images`` test images.
    ``strata``: the variational bounds' stratified levels per image; ``tolerance`` and ``probes``: the
    probability-flow ODE's solver tolerance and Hutchinson's probes; ``iwae_k``: the VAE's importance
    samples; ``batch``: images at once."""

    images: int | None = None  # None: :data:`DEFAULT_IMAGES`, or all the run's test images if fewer
    strata: int | None = None  # None: :data:`DEFAULT_STRATA`, or all a short process has
    tolerance: float = 1e-4
    probes: int = 1
    iwae_k: int = 1000
    seed: int = 0
    batch: int = 200


@dataclass(frozen=True)
class BitsPerDim(JsonRecord):
    """One estimate of -log2 P(x) per pixel over the test images: its mean, standard error and time,
    and, for a variational bound, its parts (prior, steps, decoder) in bits per pixel."""

    method: str  # vlb (discrete-time), vlb-continuous, ode, iwae
    label: str  # none (unconditional), true (conditioned on the image's own digit), null (the null label)
    protocol: str  # "8-bit grey levels" or "dynamically binarized"
    bits_per_dim: float
    standard_error: float
    images: int
    seconds: float
    prior: float | None = None
    steps: float | None = None
    decoder: float | None = None
    evaluations: float | None = None  # network evaluations per image (the ODE: its adaptive solver's)
    decoder_at: float | None = None  # a continuous bound: the log-SNR of its decoder
    chosen_on: int | None = None  # the decoder's log-SNR chosen as the best on this many training images

    @property
    def name(self) -> str:
        """e.g. 'ode, true label', 'vlb-continuous, decoder at log-SNR 12 (best on 200 training images)'."""
        text = self.method + ("" if self.label == "none" else f", {self.label} label")
        if self.decoder_at is not None:
            text += f", decoder at log-SNR {self.decoder_at:g}"
            text += f" (best on {self.chosen_on} training images)" if self.chosen_on else " (the process's end)"
        return text + ("" if self.protocol == "8-bit grey levels" else f", {self.protocol}")


@dataclass(frozen=True)
class LikelihoodScores:
    """Every estimate of one model, per MNIST pixel (``pixels``; a model of padded images describes
    ``model_dims``, the padding's cost included), and the variational bound's parts over its levels:
    ``curve`` holds (t or lambda, bits per pixel per unit of it), the mean over the images."""

    pixels: int
    model_dims: int
    rows: tuple[BitsPerDim, ...]
    curve_axis: str | None = None  # "t" (the DDPM) or "log-SNR" (a continuous process)
    curve: tuple[tuple[float, float], ...] = ()

    def to_json(self) -> dict:
        return {"pixels": self.pixels, "model_dims": self.model_dims, "rows": [r.to_json() for r in self.rows],
                **({"curve_axis": self.curve_axis, "curve": [list(p) for p in self.curve]} if self.curve else {})}

    @staticmethod
    def from_json(d: dict) -> "LikelihoodScores":
        return LikelihoodScores(d["pixels"], d["model_dims"], tuple(BitsPerDim.from_json(r) for r in d["rows"]),
                                d.get("curve_axis"), tuple(tuple(p) for p in d.get("curve", ())))


def described(label: str) -> str:
    return "" if label == "none" else f" ({label} label)"


def mean_and_error(values: torch.Tensor) -> tuple[float, float]:
    """The mean of per-image values and its standard error, std / sqrt(n) (0 for one image)."""
    v = values.double().cpu()
    return v.mean().item(), (v.std().item() / math.sqrt(len(v)) if len(v) > 1 else 0.0)


def in_batches(fn: Callable[[torch.Tensor, torch.Tensor | None], object], x: torch.Tensor,
               labels: torch.Tensor | None, size: int, bar: Progress) -> list:
    """fn(x_batch, labels_batch) over ``x`` in batches of ``size``, the bar told of each."""
    out = []
    for i in range(0, len(x), size):
        out.append(fn(x[i: i + size], None if labels is None else labels[i: i + size]))
        bar.update(len(x[i: i + size]))
    bar.close()
    return out


def diffusion_bits(network: nn.Module, prediction: str, process, x: torch.Tensor,
                   conditions: list[tuple[str, torch.Tensor | None]], request: LikelihoodRequest,
                   pixels: int, progress: bool = True, held_out: tuple[torch.Tensor, list] | None = None
                   ) -> LikelihoodScores:
    """A diffusion model's bits per pixel of grey-level images ``x`` (N, C, H, W) in [-1, 1]: for each
    (name, labels) of ``conditions``, the process's variational bound (``process.variational_bound``)
    and the probability-flow ODE likelihood of the dequantized images, every draw from generators
    seeded with ``request.seed``. A continuous bound is also given with its decoder at the stratum
    edge that is best on ``held_out`` (training images and their conditions, in the same order).
    The curve is the first condition's bound."""
    rows, curve = [], ()
    for i, (label, labels) in enumerate(conditions):
        bound = bound_row(network, prediction, process, x, label, labels, request, pixels, progress)
        rows.append(bound.row)
        if bound.bound.edge_decoders is not None and held_out is not None:
            rows.append(truncated_row(network, prediction, process, x, held_out[0], label, labels, held_out[1][i][1],
                                      request, pixels, bound.bound))
        curve = curve or bound.curve
        rows.append(ode_row(network, prediction, process, x, label, labels, request, pixels, progress))
    return LikelihoodScores(pixels, x[0].numel(), tuple(rows), process.bound_axis, curve)


class BoundResult(NamedTuple):
    row: BitsPerDim
    bound: Bound  # every batch's, joined
    curve: tuple[tuple[float, float], ...]


def batched_bound(network: nn.Module, prediction: str, process, x: torch.Tensor, labels: torch.Tensor | None,
                  request: LikelihoodRequest, bar: Progress) -> Bound:
    """``process.variational_bound`` of ``x`` in batches, joined into one :class:`Bound`."""
    g = torch.Generator(x.device).manual_seed(request.seed)
    parts = in_batches(lambda xb, yb: process.variational_bound(Denoiser(network, prediction, yb), xb,
                                                                request.strata, g), x, labels, request.batch, bar)
    join = lambda name: None if getattr(parts[0], name) is None else torch.cat([getattr(b, name) for b in parts])  # noqa: E731
    first = parts[0]
    return Bound(join("prior"), join("diffusion"), join("decoder"), join("terms"), join("levels"), first.centers,
                 first.widths, join("edge_decoders"), first.calls)


def bound_row(network: nn.Module, prediction: str, process, x: torch.Tensor, label: str,
              labels: torch.Tensor | None, request: LikelihoodRequest, pixels: int, progress: bool) -> BoundResult:
    start = time.perf_counter()
    bound = batched_bound(network, prediction, process, x, labels, request,
                          Progress(len(x), f"likelihood: bound{described(label)}", progress, unit="img", summary=True))
    seconds = time.perf_counter() - start
    mean, se = mean_and_error(bits_per_dim(bound.total, pixels))
    part = lambda t: bits_per_dim(t.double().mean().item(), pixels)  # noqa: E731
    end = process.log_snr_range()[1] if bound.edge_decoders is not None else None
    row = BitsPerDim(process.bound_method, label, "8-bit grey levels", mean, se, len(x), round(seconds, 1),
                     part(bound.prior), part(bound.diffusion), part(bound.decoder), bound.calls, end)
    terms = bound.terms.double().mean(0).cpu()  # (K,) nats
    curve = tuple((c.item(), bits_per_dim((t / w).item(), pixels))
                  for c, t, w in zip(bound.centers, terms, bound.widths))
    return BoundResult(row, bound, curve)


def truncated_row(network: nn.Module, prediction: str, process, x: torch.Tensor, held_x: torch.Tensor, label: str,
                  labels: torch.Tensor | None, held_labels: torch.Tensor | None, request: LikelihoodRequest,
                  pixels: int, bound: Bound) -> BitsPerDim:
    """The continuous bound with its decoder at the stratum edge whose truncated bound
    (:meth:`Bound.truncated`) is lowest on the held-out images, measured on ``x``."""
    start = time.perf_counter()
    held = batched_bound(network, prediction, process, held_x, held_labels, request,
                         Progress(len(held_x), "", False))
    seconds = time.perf_counter() - start
    best = int(held.truncated().double().mean(0).argmin())
    edges = torch.cat([bound.centers - bound.widths / 2, (bound.centers[-1:] + bound.widths[-1:] / 2)])  # (K + 1,)
    total = bound.truncated()[:, best]
    mean, se = mean_and_error(bits_per_dim(total, pixels))
    below = bound.terms[:, :best].sum(1)
    part = lambda t: bits_per_dim(t.double().mean().item(), pixels)  # noqa: E731
    return BitsPerDim(process.bound_method, label, "8-bit grey levels", mean, se, len(x), round(seconds, 1),
                      part(bound.prior), part(below), part(bound.edge_decoders[:, best]), None,
                      round(edges[best].item(), 3), len(held_x))


def ode_row(network: nn.Module, prediction: str, process, x: torch.Tensor, label: str, labels: torch.Tensor | None,
            request: LikelihoodRequest, pixels: int, progress: bool) -> BitsPerDim:
    """The probability-flow ODE's bits per pixel of ``x`` dequantized (:func:`~mnistgen.greylevels.dequantize`)."""
    g = torch.Generator(x.device).manual_seed(request.seed)
    dims = x[0].numel()

    def nll(xb: torch.Tensor, yb: torch.Tensor | None) -> OdeResult:
        return ode_nll(Denoiser(network, prediction, yb), process, dequantize(xb, g), request.tolerance,
                       request.probes, g)

    start = time.perf_counter()
    results = in_batches(nll, x, labels, request.batch,
                         Progress(len(x), f"likelihood: ODE{described(label)}", progress, unit="img", summary=True))
    seconds = time.perf_counter() - start
    nats = torch.cat([r.nll for r in results]) + dims * dequantization_nats()
    mean, se = mean_and_error(bits_per_dim(nats, pixels))
    calls = sum(r.calls * len(r.nll) for r in results) / len(x)
    return BitsPerDim("ode", label, "8-bit grey levels", mean, se, len(x), round(seconds, 1), evaluations=round(calls, 1))


def vae_bits(model: VAE, x: torch.Tensor, request: LikelihoodRequest, protocol: str,
             progress: bool = True) -> LikelihoodScores:
    """The VAE's IWAE bound (k = ``request.iwae_k``) in bits per pixel of images ``x`` in [0, 1] under its
    decoder: grey levels for the discretized-logistic decoder, or binary images."""
    g = torch.Generator(x.device).manual_seed(request.seed)
    batch = max(1, min(request.batch, 20_000 // request.iwae_k))
    start = time.perf_counter()
    parts = in_batches(lambda xb, _: -iwae_log_likelihood(model, xb, request.iwae_k, g), x, None, batch,
                       Progress(len(x), f"likelihood: IWAE-{request.iwae_k}", progress, unit="img", summary=True))
    seconds = time.perf_counter() - start
    pixels = x[0].numel()
    mean, se = mean_and_error(bits_per_dim(torch.cat(parts), pixels))
    return LikelihoodScores(pixels, pixels, (BitsPerDim("iwae", "none", protocol, mean, se, len(x), round(seconds, 1),
                                                        evaluations=float(request.iwae_k)),))
