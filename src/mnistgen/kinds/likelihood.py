"""Every model's likelihood on one scale (``evaluate --likelihood``): bits per MNIST pixel of the first
test images, asked of the model's kind (:meth:`~mnistgen.kinds.base.ModelKind.likelihood`), each
request checked in one line before any work."""

from __future__ import annotations

import math
import numbers
from dataclasses import replace

from mnistgen.data.mnist import TensorData
from mnistgen.errors import UserError
from mnistgen.evaluation.likelihood import DEFAULT_IMAGES, DEFAULT_STRATA, LikelihoodRequest, LikelihoodScores
from mnistgen.kinds.base import ModelKind, TrainedModel

MOST_IMAGES = 10_000  # the MNIST test set
MOST_PROBES = 100
TOLERANCES = (1e-6, 1e-1)  # the ODE solver's, both ends included (float32 rounds at about 1e-7)
MOST_IWAE_K = 100_000
HELD_OUT = 200  # training images on which a continuous bound's decoder level is chosen


def whole(flag: str, value, low: int, high: int, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise UserError(f"{flag} must be a whole number in [{low}, {high}]{why}, got {value!r}")


def check_likelihood_request(kind: ModelKind, config, request: LikelihoodRequest) -> LikelihoodRequest:
    """Refuse, in one line before any work, a kind without a likelihood and settings out of range; the
    request with its defaults filled in: :data:`DEFAULT_IMAGES` (or every test image of a run with
    fewer) and :data:`DEFAULT_STRATA` (or every level of a shorter process)."""
    kind.check_likelihood(config)
    images = min(config.data.val_limit or MOST_IMAGES, MOST_IMAGES)
    if request.images is None:
        request = replace(request, images=min(DEFAULT_IMAGES, images))
    whole("--likelihood-images", request.images, 1, images, " (the run's test images)" if images < MOST_IMAGES else "")
    whole("the likelihood's batch", request.batch, 1, MOST_IMAGES)
    if (most := kind.most_strata(config)) is not None:
        if request.strata is None:
            request = replace(request, strata=min(DEFAULT_STRATA, most))
        whole("--strata", request.strata, 1, most)
    whole("--probes", request.probes, 1, MOST_PROBES)
    whole("--iwae-k", request.iwae_k, 1, MOST_IWAE_K)
    low, high = TOLERANCES
    t = request.tolerance
    if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or not low <= t <= high:
        raise UserError(f"--ode-tolerance must be in [{low:g}, {high:g}], got {t!r}")
    return request


def score_likelihood(kind: ModelKind, trained: TrainedModel, request: LikelihoodRequest, data_dir,
                     progress: bool = True) -> LikelihoodScores:
    """:class:`LikelihoodScores` of the model on the first ``request.images`` test images (settings chosen
    on the first :data:`HELD_OUT` training images)."""
    request = check_likelihood_request(kind, trained.config, request)
    test = kind.load_data(trained.config, "test", data_dir, trained.device)
    first = TensorData(test.x[: request.images], test.y[: request.images])
    held = kind.likelihood_held_out(trained.config, data_dir, trained.device, HELD_OUT)
    return kind.likelihood(trained, request, first, held, progress)
