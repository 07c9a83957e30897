"""data.validation: the SPEC's protocol (validate on the test images) by default, or a validation set
held out of the training images by a fixed seed, which training then never sees."""

import pytest
import torch

from mnistgen import kinds
from mnistgen.config import apply_overrides, preset
from mnistgen.data.mnist import holdout_mask, load
from mnistgen.errors import UserError


def test_the_holdout_is_fixed_and_of_its_size():
    a, b = holdout_mask(60_000, 5000), holdout_mask(60_000, 5000)
    assert torch.equal(a, b) and int(a.sum()) == 5000
    assert int(holdout_mask(60_000, 123).sum()) == 123
    assert not bool(holdout_mask(60_000, 5000)[:5000].all())  # a permutation, not the first images


@pytest.mark.slow
def test_holdout_validation_is_training_images_never_trained_on():
    config = apply_overrides(preset("vae", "cpu"), {"data.validation": "holdout", "data.holdout": 3000})
    kind = kinds.get("vae")
    train = kind.load_data(config, "train", None, torch.device("cpu"))
    validation = kind.load_data(config, "validation", None, torch.device("cpu"))
    assert len(train) == 57_000 and len(validation) == 3000
    everything = load("train", "unit")
    held = holdout_mask(60_000, 3000)
    assert torch.equal(validation.x, everything.x[held]) and torch.equal(train.x, everything.x[~held])
    assert int((held & ~held).sum()) == 0 and len(train) + len(validation) == len(everything)


def test_by_default_validation_is_the_test_split():
    config = preset("vae", "cpu")
    kind = kinds.get("vae")
    validation = kind.load_data(config, "validation", None, torch.device("cpu"))
    assert torch.equal(validation.x, load("test", "unit").x)
    assert len(kind.load_data(config, "train", None, torch.device("cpu"))) == 60_000


def test_a_bad_validation_is_refused_with_the_choices():
    with pytest.raises(UserError, match="bad data.validation 'train'; valid: test, holdout"):
        apply_overrides(preset("vae", "cpu"), {"data.validation": "train"})


def test_a_run_on_a_holdout_says_so_in_its_model_card(tmp_path):
    import mnistgen
    from mnistgen.api import model_card
    from mnistgen.evaluation.results import RunMetrics

    run = mnistgen.train("vae", "smoke", tmp_path / "vae", device="cpu", progress=False, log=None,
                         overrides={"data.validation": "holdout", "data.holdout": 256, "train.epochs": 1})
    assert run.config.data.validation == "holdout" and len(run.history) == 1
    card = model_card(run.config, run.history, RunMetrics("vae", "smoke"), "abc", "cpu")
    assert "(59,744 images, first 2,048); validation loss on 512 training images held out" in card
    default = model_card(mnistgen.load("pretrained:vae").config, run.history, RunMetrics("vae", "cpu"), "abc", "cpu")
    assert "validation loss on 10,000 test images (the study's protocol)" in default
