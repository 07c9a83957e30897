import pytest
import torch

from mnistgen.config import apply_overrides, preset
from mnistgen.evaluation.likelihood import iwae_nll_mean, neg_elbo_mean
from mnistgen.kinds.vae import VAEKind
from mnistgen.runs import build_trainer


@pytest.fixture(scope="module")
def trained_vae(mnist_dir, tmp_path_factory):
    cfg = apply_overrides(preset("vae", "reference"), {"train.epochs": 2, "data.train_limit": 20_000,
                                                       "data.val_limit": 1000})
    trainer = build_trainer(cfg, tmp_path_factory.mktemp("vae"), data_dir=mnist_dir, preview=False)
    trainer.fit()
    return trainer.model.eval(), VAEKind().load_data(cfg, "test", mnist_dir, torch.device("cpu")).x[:500]


@pytest.mark.slow
def test_iwae_is_below_the_elbo_and_decreases_with_k(trained_vae):
    model, x = trained_vae
    g = torch.Generator().manual_seed(0)
    elbo = neg_elbo_mean(model, x, g)
    nll = [iwae_nll_mean(model, x, k, g) for k in (1, 10, 100, 500)]
    assert elbo < 140  # the model has learned something
    assert nll[0] == pytest.approx(elbo, abs=1.0)
    assert nll[1] < nll[0] - 1.0 and nll[2] < nll[1] and nll[3] < nll[2]
    assert nll[3] < elbo - 2.0
