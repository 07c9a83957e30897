"""What an evaluation measures, as named results from where they are computed to metrics.json.

Each result type has one ``to_json`` / ``from_json`` pair; metrics.json is the flat union of
the parts a run's model kind computes (the layout of mnistgen 0.1, so old files still read).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from mnistgen.diffusion.samplers import SamplerSettings
from mnistgen.errors import UserError
from mnistgen.evaluation.edits import EditScores
from mnistgen.evaluation.fd import FDSpread
from mnistgen.evaluation.kid import KID
from mnistgen.evaluation.likelihood import LikelihoodScores
from mnistgen.evaluation.prdc import PRDC
from mnistgen.files import JsonRecord
from mnistgen.storage.checkpoint import describe_error
from mnistgen.storage.rundir import RunDir


@dataclass(frozen=True)
class SampleQuality:
    """What ``n_samples`` fresh samples scored, judged by mnistgen's classifier. The parts after
    ``class_histogram`` are None in metrics files written before mnistgen measured them."""

    settings: SamplerSettings  # resolved
    n_samples: int
    mnist_fd: float
    class_histogram: list[int]
    sample_seconds: float
    class_accuracy: float | None = None  # conditional models: the judge agrees with the requested label
    class_accuracy_per_class: list[float] | None = None
    fd_spread: FDSpread | None = None
    kid: KID | None = None
    prdc: PRDC | None = None  # the mean over 10 subsets of as many real test features as there are samples
    coverage_per_class: list[float] | None = None  # conditional models: coverage of each digit's real images

    @property
    def seconds_per_100_samples(self) -> float:
        return round(100 * self.sample_seconds / self.n_samples, 3)

    def to_json(self) -> dict:
        values = self.settings.to_json()
        values.update(n_samples=self.n_samples, mnist_fd=self.mnist_fd, class_histogram=self.class_histogram,
                      sample_seconds=self.sample_seconds, seconds_per_100_samples=self.seconds_per_100_samples)
        if self.class_accuracy is not None:
            values.update(class_accuracy=self.class_accuracy, class_accuracy_per_class=self.class_accuracy_per_class)
        if self.fd_spread is not None:
            values.update(mnist_fd_std=self.fd_spread.std, mnist_fd_resamples=self.fd_spread.resamples,
                          mnist_fd_inf=self.fd_spread.at_infinity)
        if self.kid is not None:
            values.update(kid=self.kid.mean, kid_std=self.kid.std, kid_subsets=self.kid.subsets,
                          kid_subset_size=self.kid.subset_size)
        if self.prdc is not None:
            values.update(precision=self.prdc.precision, recall=self.prdc.recall, density=self.prdc.density,
                          coverage=self.prdc.coverage, prdc_k=self.prdc.k)
            if self.prdc.precision_std is not None:
                values.update(precision_std=self.prdc.precision_std, recall_std=self.prdc.recall_std)
        if self.coverage_per_class is not None:
            values.update(coverage_per_class=self.coverage_per_class)
        return values

    @staticmethod
    def from_json(d: dict) -> "SampleQuality":
        settings = SamplerSettings(**{f.name: d.get(f.name) for f in fields(SamplerSettings)})
        spread = FDSpread(d["mnist_fd_std"], d["mnist_fd_resamples"], d["mnist_fd_inf"]) if "mnist_fd_std" in d else None
        kid_ = KID(d["kid"], d["kid_std"], d["kid_subsets"], d["kid_subset_size"]) if "kid" in d else None
        prdc_ = (PRDC(d["precision"], d["recall"], d["density"], d["coverage"], d["prdc_k"], d.get("precision_std"),
                      d.get("recall_std")) if "precision" in d else None)
        return SampleQuality(settings, d["n_samples"], d["mnist_fd"], d["class_histogram"], d["sample_seconds"],
                             d.get("class_accuracy"), d.get("class_accuracy_per_class"), spread, kid_, prdc_,
                             d.get("coverage_per_class"))


@dataclass(frozen=True)
class SweepPoint(JsonRecord):
    """One guidance weight of a conditional model's sweep; KID, precision and recall (None in older
    files) read across sample counts."""

    guidance: float
    steps: int
    n_samples: int
    mnist_fd: float
    class_accuracy: float
    kid: float | None = None
    kid_std: float | None = None
    precision: float | None = None
    recall: float | None = None
    recall_std: float | None = None

    @staticmethod
    def of(q: SampleQuality) -> "SweepPoint":
        return SweepPoint(q.settings.guidance, q.settings.steps, q.n_samples, q.mnist_fd, q.class_accuracy,
                          q.kid.mean if q.kid else None, q.kid.std if q.kid else None,
                          q.prdc.precision if q.prdc else None, q.prdc.recall if q.prdc else None,
                          q.prdc.recall_std if q.prdc else None)


@dataclass(frozen=True)
class StepsPoint(JsonRecord):
    """One (sampler, steps) of a steps sweep: every sample metric with its spread (the FD's bootstrap
    std; KID's, precision's and recall's over subsets of the real images) and the sampling time."""

    sampler: str
    steps: int
    grid: str
    n_samples: int
    mnist_fd: float
    mnist_fd_std: float
    kid: float
    kid_std: float
    precision: float
    recall: float
    seconds_per_100_samples: float
    grid_power: float | None = None  # powered grids
    eta: float | None = None  # DDIM
    guidance: float | None = None  # guided models
    precision_std: float | None = None  # None: one real set (no more real images than samples)
    recall_std: float | None = None
    class_accuracy: float | None = None  # conditional models

    @property
    def line(self) -> str:
        """The sampler this point belongs to, as a curve's name: 'ddim, eta = 1', 'dpm++2m-sde, trailing^0.8 grid'."""
        return SamplerSettings(self.sampler, None, self.eta, None, self.grid, self.grid_power).describe()

    @staticmethod
    def of(q: SampleQuality) -> "StepsPoint":
        s = q.settings
        return StepsPoint(s.sampler, s.steps, s.grid, q.n_samples, q.mnist_fd, q.fd_spread.std, q.kid.mean, q.kid.std,
                          q.prdc.precision, q.prdc.recall, q.seconds_per_100_samples, s.grid_power, s.eta,
                          s.guidance, q.prdc.precision_std, q.prdc.recall_std, q.class_accuracy)


@dataclass(frozen=True)
class Likelihood(JsonRecord):
    """The VAE's bounds on the test set, in nats per image. The first two score the grey-level test
    images under the Bernoulli decoder (not a normalised density of grey levels, and not comparable
    with the literature); the binarized ones score dynamically binarized test images (each pixel
    drawn 1 with its grey level as probability), the test protocol of published numbers (whose
    models, unlike this one, are also trained on binarized digits)."""

    val_neg_elbo: float
    iwae_nll: float  # IWAE bound on -log p(x)
    iwae_k: int
    iwae_n_images: int
    n_test_images: int
    binarized_neg_elbo: float | None = None  # None in files written before mnistgen measured it
    binarized_iwae_nll: float | None = None


# Numbers in metrics.json that say how a score was measured, not what it is.
MEASURED_WITH = frozenset({"steps", "eta", "grid_power", "guidance", "n_samples", "iwae_k", "iwae_n_images", "n_test_images",
                           "kid_subsets", "kid_subset_size", "prdc_k", "mnist_fd_resamples", "digits",
                           "inversion_steps", "interpolation_pairs"})


@dataclass(frozen=True)
class RunMetrics:
    """Everything ``evaluate`` found for one run; each part is None where the model kind has none."""

    model: str
    preset: str
    quality: SampleQuality | None = None
    likelihood: Likelihood | None = None
    guidance_sweep: tuple[SweepPoint, ...] | None = None
    steps_sweep: tuple[StepsPoint, ...] | None = None  # evaluate --steps-sweep
    test_accuracy: float | None = None  # the classifier
    edits: EditScores | None = None  # evaluate --edits
    bits: LikelihoodScores | None = None  # evaluate --likelihood
    evaluation_seconds: float | None = None
    evaluated_with: str | None = None  # which mnistgen computed these (version, commit)

    def scalars(self) -> dict[str, float]:
        """The scores of :meth:`to_json` (single numbers; not lists, texts, timings or the settings
        they were measured with): what a hyperparameter view compares runs by."""
        edits = {f"edits/{k}": v for k, v in (self.edits.to_json() if self.edits else {}).items()}
        bits = {f"bits/{r.method}-{r.label}" + (f"@{r.decoder_at:g}" if r.chosen_on else ""): r.bits_per_dim
                for r in (self.bits.rows if self.bits else ())}
        return {k: float(v) for k, v in {**self.to_json(), **edits, **bits}.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and "seconds" not in k
                and k.split("/")[-1] not in MEASURED_WITH}

    def to_json(self) -> dict:
        values: dict = {"model": self.model, "preset": self.preset}
        if self.test_accuracy is not None:
            values["test_accuracy"] = self.test_accuracy
        if self.likelihood is not None:
            values.update(self.likelihood.to_json())
        if self.quality is not None:
            values.update(self.quality.to_json())
        if self.guidance_sweep is not None:
            values["guidance_sweep"] = [p.to_json() for p in self.guidance_sweep]
        if self.steps_sweep is not None:
            values["steps_sweep"] = [p.to_json() for p in self.steps_sweep]
        if self.edits is not None:
            values["edits"] = self.edits.to_json()
        if self.bits is not None:
            values["bits_per_dim"] = self.bits.to_json()
        if self.evaluation_seconds is not None:
            values["evaluation_seconds"] = self.evaluation_seconds
        if self.evaluated_with is not None:
            values["evaluated_with"] = self.evaluated_with
        return values

    @staticmethod
    def from_json(d: dict) -> "RunMetrics":
        """The metrics of a metrics.json (parts it lacks stay None)."""
        sweep, steps = d.get("guidance_sweep"), d.get("steps_sweep")
        return RunMetrics(
            d.get("model", "?"), d.get("preset", "?"),
            quality=SampleQuality.from_json(d) if "mnist_fd" in d else None,
            likelihood=Likelihood.from_json(d) if "val_neg_elbo" in d else None,
            guidance_sweep=tuple(SweepPoint.from_json(p) for p in sweep) if sweep is not None else None,
            steps_sweep=tuple(StepsPoint.from_json(p) for p in steps) if steps is not None else None,
            test_accuracy=d.get("test_accuracy"),
            edits=EditScores.from_json(d["edits"]) if "edits" in d else None,
            bits=LikelihoodScores.from_json(d["bits_per_dim"]) if "bits_per_dim" in d else None,
            evaluation_seconds=d.get("evaluation_seconds"),
            evaluated_with=d.get("evaluated_with"))


def read_metrics(run: RunDir) -> RunMetrics:
    """RUN/metrics.json as :class:`RunMetrics` (every part None when there is no file yet); a
    damaged or hand-edited file is one :class:`UserError` line, not a traceback."""
    try:
        return RunMetrics.from_json(run.read_metrics())
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSONDecodeError is a ValueError
        raise UserError(f"{run.metrics} is not a metrics file mnistgen can read ({describe_error(e)}); "
                        f"move it away and evaluate the run again") from None


