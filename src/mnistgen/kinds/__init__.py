"""The registry of model kinds: one object per kind, looked up by the name a run's config carries.

A new model kind is a :class:`~mnistgen.kinds.base.ModelKind` subclass in this package, a row in
``REGISTRY``, and its config sections in ``mnistgen.config``; nothing else compares kind names.
"""

from __future__ import annotations

from mnistgen.config import KINDS
from mnistgen.errors import UserError
from mnistgen.kinds.base import EvaluationRequest, ModelKind, TrainedModel
from mnistgen.kinds.classifier import ClassifierKind
from mnistgen.kinds.ddpm import DDPMKind
from mnistgen.kinds.guided import GuidedKind
from mnistgen.kinds.vae import VAEKind

REGISTRY: dict[str, ModelKind] = {k.name: k for k in (VAEKind(), DDPMKind(), GuidedKind(), ClassifierKind())}
assert tuple(REGISTRY) == KINDS, "the registry and config.KINDS list the same kinds in the same order"

GENERATIVE = tuple(name for name, k in REGISTRY.items() if k.generative)  # the study's models, in order


def get(name: str) -> ModelKind:
    """The kind called ``name``; an unknown name lists the valid ones."""
    if name not in REGISTRY:
        raise UserError(f"unknown model kind {name!r}; valid: {', '.join(REGISTRY)}")
    return REGISTRY[name]


__all__ = ["EvaluationRequest", "GENERATIVE", "ModelKind", "REGISTRY", "TrainedModel", "get"]
