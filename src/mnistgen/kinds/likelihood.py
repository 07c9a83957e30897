"""Every model's likelihood on one scale (``evaluate --likelihood``): bits per MNIST pixel of the first
test images, asked of the model's kind (:meth:`~mnistgen.kinds.base.ModelKind.likelihood`), each
request checked in one line before any work."""

from __future__ import annotations

import math
import numbers

from mnistgen.data.mnist import TensorData
from mnistgen.errors import UserError
from mnistgen.evaluation.likelihood import LikelihoodRequest, LikelihoodScores
from mnistgen.kinds.base import ModelKind, TrainedModel

MOST_IMAGES = 10_000  # the MNIST test set
MOST_PROBES = 100
TOLERANCES = (1e-7, 1e-1)  # the ODE solver's, both ends included
MOST_IWAE_K = 100_000
HELD_OUT = 200  # training images on which a continuous bound's decoder level is chosen


def whole(flag: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise UserError(f"{flag} must be a whole number in [{low}, {high}], got {value!r}")


def check_likelihood_request(kind: ModelKind, config, request: LikelihoodRequest) -> None:
    """Refuse, in one line before any work, a kind without a likelihood and settings out of range."""
    kind.check_likelihood(config)
    whole("--likelihood-images", request.images, 1, MOST_IMAGES)
    whole("--likelihood-batch", request.batch, 1, MOST_IMAGES)
    if (most := kind.most_strata(config)) is not None:
        whole("--strata", request.strata, 1, most)
    whole("--probes", request.probes, 1, MOST_PROBES)
    whole("--iwae-k", request.iwae_k, 1, MOST_IWAE_K)
    low, high = TOLERANCES
    t = request.tolerance
    if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or not low <= t <= high:
        raise UserError(f"--ode-tolerance must be in [{low:g}, {high:g}], got {t!r}")


def score_likelihood(kind: ModelKind, trained: TrainedModel, request: LikelihoodRequest, data_dir,
                     progress: bool = True) -> LikelihoodScores:
    """:class:`LikelihoodScores` of the model on the first ``request.images`` test images (settings chosen
    on the first :data:`HELD_OUT` training images)."""
    check_likelihood_request(kind, trained.config, request)
    test = kind.load_data(trained.config, "test", data_dir, trained.device)
    train = kind.load_data(trained.config, "train", data_dir, trained.device)
    first = TensorData(test.x[: request.images], test.y[: request.images])
    held = TensorData(train.x[:HELD_OUT], train.y[:HELD_OUT])
    return kind.likelihood(trained, request, first, held, progress)
