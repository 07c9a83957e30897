import pytest
import torch

from mnistgen.config import apply_overrides, preset
from mnistgen.evaluation.likelihood import iwae_nll_mean, neg_elbo_mean
from mnistgen.recipes import build_model, build_objective, load_data
from mnistgen.training.rundir import RunDir
from mnistgen.training.trainer import Trainer


@pytest.fixture(scope="module")
def trained_vae(mnist_dir, tmp_path_factory):
    cfg = apply_overrides(preset("vae", "reference"), {"train.epochs": 2, "data.train_limit": 20_000,
                                                       "data.val_limit": 1000})
    torch.manual_seed(0)
    device = torch.device("cpu")
    model = build_model(cfg)
    Trainer(model, build_objective(cfg), load_data(cfg, "train", mnist_dir, device),
            load_data(cfg, "test", mnist_dir, device), cfg, RunDir(tmp_path_factory.mktemp("vae")),
            show_progress=False).fit()
    return model.eval(), load_data(cfg, "test", mnist_dir, device).x[:500]


def test_iwae_is_below_the_elbo_and_decreases_with_k(trained_vae):
    model, x = trained_vae
    g = torch.Generator().manual_seed(0)
    elbo = neg_elbo_mean(model, x, g)
    nll = [iwae_nll_mean(model, x, k, g) for k in (1, 10, 100, 500)]
    assert elbo < 140  # the model has learned something
    assert nll[0] == pytest.approx(elbo, abs=1.0)
    assert nll[1] < nll[0] - 1.0 and nll[2] < nll[1] and nll[3] < nll[2]
    assert nll[3] < elbo - 2.0
