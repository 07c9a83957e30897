from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mnistgen.config import apply_overrides, preset
from mnistgen import kinds
from mnistgen.runs import build_trainer
from mnistgen.storage.checkpoint import load_checkpoint, save_checkpoint
from mnistgen.storage.rundir import RunDir
from mnistgen.training.trainer import NonFiniteLossError, Trainer, lr_factor


class StopAfter:
    """Wraps an objective and raises KeyboardInterrupt at call ``n`` (a killed run)."""

    def __init__(self, objective, n):
        self.objective, self.n, self.calls = objective, n, 0

    def loss(self, model, x, y, generator=None):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.objective.loss(model, x, y, generator)


def _trainer(cfg, out: Path, mnist_dir, objective=None) -> Trainer:
    return build_trainer(cfg, out, torch.device("cpu"), mnist_dir, objective=objective)


def _small(kind, **overrides):
    base = {"data.train_limit": 640, "data.val_limit": 128, "train.epochs": 2, "train.log_every": 2}
    return apply_overrides(preset(kind, "smoke"), {**base, **overrides})


@pytest.mark.parametrize("kind", ["ddpm", "cfg", "vae"])
@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(kind, tmp_path, mnist_dir):
    cfg = _small(kind, **{"train.checkpoint_minutes": 1e-9})  # checkpoint at every log step
    reference = _trainer(cfg, tmp_path / "a", mnist_dir)
    reference.fit()
    steps_per_run = reference.steps_per_epoch * cfg.train.epochs

    killed = _trainer(cfg, tmp_path / "b", mnist_dir, StopAfter(kinds.get(cfg.kind).build_objective(cfg), steps_per_run // 2 + 2))
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    resumed = _trainer(cfg, tmp_path / "b", mnist_dir)
    assert resumed.resume() and 0 < resumed.step < steps_per_run
    resumed.fit()
    assert resumed.step == reference.step == steps_per_run
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    if reference.ema is not None:
        for a, b in zip(reference.ema.parameters(), resumed.ema.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [r.train_loss for r in reference.history] == [r.train_loss for r in resumed.history]


def test_run_directory_contents(tmp_path, mnist_dir):
    cfg = _small("ddpm")
    _trainer(cfg, tmp_path, mnist_dir).fit()
    run = RunDir(tmp_path)
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["epoch_001.pt", "epoch_002.pt", "last.pt"]
    assert run.sample_epochs() == [1, 2]
    images = run.load_epoch_samples(2)
    assert images.shape == (16, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    state = load_checkpoint(run.last_checkpoint, "ddpm")
    for key in ("model", "ema", "optimizer", "scheduler", "scaler", "rng", "generator", "epoch", "step", "config"):
        assert key in state
    assert state["epoch"] == 2 and state["config"] == cfg.to_dict()


def test_checkpoint_of_another_kind_is_refused(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"config": {"kind": "vae"}})
    from mnistgen.errors import UserError

    with pytest.raises(UserError, match="'vae' model, not a 'ddpm'"):
        load_checkpoint(tmp_path / "c.pt", "ddpm")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")


class Exploding:
    """A real objective that returns NaN from call ``n`` on."""

    def __init__(self, objective, n):
        self.objective, self.n, self.calls = objective, n, 0

    def loss(self, model, x, y, generator=None):
        self.calls += 1
        loss = self.objective.loss(model, x, y, generator)
        return loss * float("nan") if self.calls >= self.n else loss


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, mnist_dir):
    cfg = _small("vae", **{"train.epochs": 3})
    steps = 640 // cfg.train.batch_size
    trainer = _trainer(cfg, tmp_path, mnist_dir, Exploding(kinds.get(cfg.kind).build_objective(cfg), steps + 3))
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        trainer.fit()
    state = load_checkpoint(RunDir(tmp_path).last_checkpoint, "vae")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_lr_schedules():
    cfg = preset("ddpm", "reference").train
    f = lr_factor(cfg, steps_per_epoch=100)
    assert f(0) == 1 and f(999) == 1 and f(1000) == pytest.approx(0.1) and f(1999) == pytest.approx(0.1)
    cos = lr_factor(replace(cfg, lr_schedule="cosine", warmup_steps=10, epochs=1), steps_per_epoch=110)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0)
    assert cos(60) == pytest.approx(0.5) and cos(110) == pytest.approx(0.0)


@pytest.mark.parametrize("kind", ["ddpm", "cfg"])
@pytest.mark.slow
def test_short_training_on_real_mnist_lowers_the_loss(kind, tmp_path, mnist_dir):
    cfg = _small(kind, **{"data.train_limit": 2048, "train.epochs": 3, "train.ema_decay": 0.0})
    trainer = _trainer(cfg, tmp_path, mnist_dir)
    val = trainer.val_data

    def fixed_loss():
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            return trainer.objective.loss(trainer.model, val.x, val.y, g).item()

    before = fixed_loss()
    trainer.fit()
    after = fixed_loss()
    assert after < 0.6 * before, (before, after)


def test_channels_last_training_follows_the_contiguous_run(tmp_path, mnist_dir):
    trained = {}
    for flag in (False, True):
        cfg = _small("ddpm", **{"train.epochs": 1, "train.channels_last": flag})
        trained[flag] = _trainer(cfg, tmp_path / str(flag), mnist_dir)
        trained[flag].fit()
    conv = next(p for p in trained[True].model.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    a, b = trained[False].history[0], trained[True].history[0]
    assert a.train_loss == pytest.approx(b.train_loss, rel=1e-3) and a.val_loss == pytest.approx(b.val_loss, rel=1e-3)
    for (name, p), q in zip(trained[False].model.state_dict().items(), trained[True].model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=5e-3, msg=name)


@pytest.mark.slow
def test_compiled_training_follows_the_eager_run(tmp_path, mnist_dir):
    """train.compile wraps only what the objective calls; the weights, EMA and checkpoint stay the eager module."""
    trained = {}
    for flag in (False, True):
        cfg = _small("ddpm", **{"data.train_limit": 256, "train.epochs": 1, "train.compile": flag})
        trained[flag] = _trainer(cfg, tmp_path / str(flag), mnist_dir)
        trained[flag].fit()
    assert isinstance(trained[True].net, torch._dynamo.eval_frame.OptimizedModule)
    assert trained[True].net._orig_mod is trained[True].model
    assert "_orig_mod" not in "".join(trained[True].model.state_dict())
    a, b = trained[False].history[0], trained[True].history[0]
    assert a.train_loss == pytest.approx(b.train_loss, rel=1e-3) and a.val_loss == pytest.approx(b.val_loss, rel=1e-3)
    for (name, p), q in zip(trained[False].model.state_dict().items(), trained[True].model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=5e-3, msg=name)


@pytest.mark.parametrize("kind", ["ddpm", "vae"])
def test_non_finite_weights_never_reach_a_checkpoint(kind, tmp_path, mnist_dir):
    """lr = inf (past validation, which refuses it) with one optimizer step per epoch: the first step
    makes the weights non-finite while its loss is still finite; whatever was saved loads finite, and
    the message names a checkpoint that exists, or says none does."""
    cfg = _small(kind, **{"train.epochs": 3, "train.batch_size": 640, "train.warmup_steps": 0,
                          "train.ema_start": 0})
    cfg = replace(cfg, train=replace(cfg.train, lr=float("inf")))
    trainer = _trainer(cfg, tmp_path, mnist_dir)
    with pytest.raises(NonFiniteLossError) as stopped:
        trainer.fit()
    message = str(stopped.value)
    saved = sorted(RunDir(tmp_path).checkpoints.glob("*.pt")) if RunDir(tmp_path).checkpoints.is_dir() else []
    for path in saved:
        state = load_checkpoint(path, kind)
        for section in ("model", "ema"):
            for value in (state[section] or {}).values():
                assert not value.is_floating_point() or torch.isfinite(value).all(), (path, section)
    if RunDir(tmp_path).last_checkpoint.is_file():
        assert str(RunDir(tmp_path).last_checkpoint) in message
    else:
        assert "no checkpoint had been written" in message and "last.pt" not in message


class ZeroLoss:
    """A loss whose gradient is zero everywhere: only weight decay can move the weights."""

    def loss(self, model, x, y, generator=None):
        return sum(p.sum() for p in model.parameters()) * 0.0


def test_weight_decay_is_decoupled_and_stays_so_on_resume(tmp_path, mnist_dir):
    """AdamW (Loshchilov & Hutter 2019): with a zero gradient one step scales every weight by exactly
    1 - lr * wd. Adam's coupled L2 would instead push each weight by about lr (Adam normalises the
    decay term like any gradient). A checkpoint written by coupled Adam resumes decoupled."""
    lr, wd = 1e-3, 0.1
    cfg = _small("vae", **{"train.lr": lr, "train.weight_decay": wd, "train.epochs": 1, "data.train_limit": 64,
                           "train.batch_size": 64})
    trainer = _trainer(cfg, tmp_path, mnist_dir, ZeroLoss())
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    for name, value in trainer.model.state_dict().items():
        torch.testing.assert_close(value, before[name] * (1 - lr * wd), rtol=1e-6, atol=1e-9, msg=name)
    state = load_checkpoint(RunDir(tmp_path).last_checkpoint)
    for group in state["optimizer"]["param_groups"]:
        group["decoupled_weight_decay"] = False  # as torch.optim.Adam writes it
    save_checkpoint(RunDir(tmp_path).last_checkpoint, state)
    resumed = _trainer(replace(cfg, train=replace(cfg.train, epochs=2)), tmp_path, mnist_dir, ZeroLoss())
    assert resumed.resume()
    assert all(g["decoupled_weight_decay"] for g in resumed.optimizer.param_groups)
