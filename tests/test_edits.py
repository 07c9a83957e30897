"""Editing with the shipped models: inpainting keeps the known pixels exactly and completes digits the judge
reads, inversion comes back, interpolation joins its ends; every bad input refused in one line first."""

import numpy as np
import pytest
import torch
from PIL import Image

import mnistgen
from mnistgen.errors import UserError
from mnistgen.evaluation.fd import load_classifier
from mnistgen.images import MASKS, named_mask, read_images, read_mask

FAST = dict(steps=20, jump=5, resample=2)  # a short RePaint: 20 + 3 * 5 = 35 network calls


@pytest.fixture(scope="module")
def models():
    return {k: mnistgen.load(f"pretrained:{k}", device="cpu") for k in ("vae", "ddpm", "cfg")}


@pytest.fixture(scope="module")
def digits(mnist_test_unit):
    return mnist_test_unit.x[:8].clone(), mnist_test_unit.y[:8].clone()


@pytest.fixture(scope="module")
def judge():
    return load_classifier()


def _read(judge, images):
    with torch.no_grad():
        return judge(images).argmax(1)


@pytest.mark.parametrize("kind", ["vae", "ddpm", "cfg"])
def test_inpainting_keeps_the_known_pixels_exactly(models, digits, kind):
    x, y = digits
    options = {} if kind == "vae" else FAST
    out = models[kind].inpaint(x, "lower", generator=torch.Generator().manual_seed(0), **options)
    assert out.shape == x.shape and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out[..., :14, :], x[..., :14, :])  # the upper half, as given
    assert (out[..., 14:, :] - x[..., 14:, :]).abs().max() > 0.1  # the lower half was made, not copied


def test_the_same_generator_gives_the_same_completion(models, digits):
    x, _ = digits
    a, b = (models["ddpm"].inpaint(x[:2], "left", generator=torch.Generator().manual_seed(5), **FAST) for _ in range(2))
    c = models["ddpm"].inpaint(x[:2], "left", generator=torch.Generator().manual_seed(6), **FAST)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_guided_completions_read_as_the_label_asked_for(models, digits, judge):
    """The lower halves of eight test digits completed by the CFG model guided (w = 1) towards their own
    label, and towards the label 0: the judge reads the label asked for in most of them."""
    x, y = digits
    own = models["cfg"].inpaint(x, "lower", labels=y, guidance=1.0, generator=torch.Generator().manual_seed(1), **FAST)
    assert (_read(judge, own) == y).float().mean() >= 0.75
    zero = models["cfg"].inpaint(x, "lower", labels=0, guidance=1.0, generator=torch.Generator().manual_seed(1),
                                 **FAST)
    assert (_read(judge, zero) == 0).float().mean() > (y == 0).float().mean()


def test_the_vae_fills_in_a_digit_the_judge_reads(models, digits, judge):
    x, y = digits
    out = models["vae"].inpaint(x, "lower")
    assert (_read(judge, out) == y).float().mean() >= 0.75
    assert torch.equal(out, models["vae"].inpaint(x, "lower"))  # a fitted code: deterministic


@pytest.mark.parametrize("kind", ["ddpm", "cfg"])
def test_inversion_comes_back_above_25_db(models, digits, kind):
    x, y = digits
    labels = y if kind == "cfg" else None
    noise = models[kind].invert(x[:4], labels=labels[:4] if labels is not None else None)
    assert noise.shape == (4, 1, 32, 32) and torch.isfinite(noise).all()
    back = models[kind].from_noise(noise, labels=labels[:4] if labels is not None else None)
    psnr = 10 * torch.log10(1 / (back - x[:4]).pow(2).flatten(1).mean(1))
    assert psnr.min() > 25, psnr


@pytest.mark.parametrize("kind", ["vae", "ddpm"])
def test_interpolation_runs_from_one_digit_to_the_other(models, digits, kind):
    x, _ = digits
    path = models[kind].interpolate(x[0], x[1], 5, inversion_steps=50)
    assert path.shape == (5, 1, 28, 28)
    dist = lambda u, v: (u - v).pow(2).mean().item()  # noqa: E731
    assert dist(path[0], x[0]) < 0.2 * dist(x[0], x[1]) and dist(path[-1], x[1]) < 0.2 * dist(x[0], x[1])
    assert dist(path[2], x[0]) > 0.1 * dist(x[0], x[1]) and dist(path[2], x[1]) > 0.1 * dist(x[0], x[1])


@pytest.mark.parametrize("kind, call, message", [
    ("ddpm", lambda m, x: m.inpaint(x, torch.ones(28, 28)), "hides no pixel"),
    ("ddpm", lambda m, x: m.inpaint(x, torch.zeros(1, 1, 28, 28)), "hides every pixel"),
    ("ddpm", lambda m, x: m.inpaint(x, torch.ones(27, 28)), "the mask must be"),
    ("ddpm", lambda m, x: m.inpaint(x, torch.full((28, 28), 0.5)), "only 0 (fill in) and 1"),
    ("ddpm", lambda m, x: m.inpaint(x, "middle"), "neither a named mask (lower, upper, left, right)"),
    ("ddpm", lambda m, x: m.inpaint(x * 2, "lower"), "must lie in [0, 1]"),
    ("ddpm", lambda m, x: m.inpaint(x[:, :, :20], "lower"), "must be (N, 1, 28, 28)"),
    ("ddpm", lambda m, x: m.inpaint(x.numpy(), "lower"), "must be a tensor"),
    ("ddpm", lambda m, x: m.inpaint(x, "lower", labels=3), "takes no labels"),
    ("ddpm", lambda m, x: m.inpaint(x, "lower", steps=1001), "steps must be a whole number in [1, 1000]"),
    ("ddpm", lambda m, x: m.inpaint(x, "lower", steps=10, jump=11), "jump must be a whole number in [1, 10]"),
    ("ddpm", lambda m, x: m.inpaint(x, "lower", resample=0), "resample must be"),
    ("cfg", lambda m, x: m.inpaint(x, "lower", labels=12), "digits 0-9"),
    ("cfg", lambda m, x: m.inpaint(x, "lower", guidance=1.0), "guidance needs a label"),
    ("cfg", lambda m, x: m.inpaint(x, "lower", labels=1, guidance=-1.0), "guidance must be"),
    ("vae", lambda m, x: m.inpaint(x, "lower", steps=50), "it takes no RePaint settings"),
    ("vae", lambda m, x: m.invert(x), "invert / from_noise need a diffusion model"),
    ("ddpm", lambda m, x: m.invert(x, steps=0), "steps must be in [1, 1000]"),
    ("ddpm", lambda m, x: m.interpolate(x[0], x, 5), "a and b must be single images"),
    ("ddpm", lambda m, x: m.interpolate(x[0], x[1], 1), "steps must be a whole number >= 2"),
])
def test_bad_edits_are_refused_before_any_work(models, digits, kind, call, message, monkeypatch):
    model = models[kind]
    monkeypatch.setattr(model.kind, "inpaint", lambda *a, **k: pytest.fail("work started"))
    monkeypatch.setattr(model.kind, "invert", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(UserError) as e:
        call(model, digits[0][:2])
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", MASKS)
def test_a_named_mask_hides_its_half(name):
    mask = named_mask(name)[0, 0]
    hidden = {"lower": mask[14:, :], "upper": mask[:14, :], "left": mask[:, :14], "right": mask[:, 14:]}[name]
    assert hidden.sum() == 0 and mask.sum() == 28 * 14


def test_images_and_masks_come_from_png_and_npz(tmp_path):
    digit = (np.arange(784).reshape(28, 28) % 256).astype(np.uint8)
    Image.fromarray(digit).save(tmp_path / "d.png")
    x = read_images(tmp_path / "d.png")
    assert x.shape == (1, 1, 28, 28) and torch.equal(x[0, 0], torch.from_numpy(digit.astype(np.float32) / 255))
    np.savez(tmp_path / "d.npz", images=np.stack([digit, digit]).astype(np.float32)[:, None] / 255)
    assert torch.equal(read_images(tmp_path / "d.npz"), x.expand(2, 1, 28, 28))
    Image.fromarray(np.where(np.arange(28)[:, None] < 10, 255, 0).astype(np.uint8).repeat(28, 1)).save(tmp_path / "m.png")
    mask = read_mask(str(tmp_path / "m.png"))
    assert mask.shape == (1, 1, 28, 28) and mask[0, 0, :10].min() == 1 and mask[0, 0, 10:].max() == 0


@pytest.mark.parametrize("write, message", [
    (lambda p: p.write_text("not an image"), "neither a PNG"),
    (lambda p: Image.new("L", (100, 90)).save(p), "is 100x90 pixels; a digit is 28x28"),
    (lambda p: np.savez(p.with_suffix(".npz"), other=np.zeros(3)), "holds no 'images' array"),
    (lambda p: np.savez(p.with_suffix(".npz"), images=np.array([{"a": 1}], dtype=object)), "not a readable .npz"),
    (lambda p: np.savez(p.with_suffix(".npz"), images=np.zeros((2, 28, 28), dtype=np.uint8)), "must hold floats"),
    (lambda p: np.savez(p.with_suffix(".npz"), images=np.full((2, 28, 28), 3.0)), "must lie in [0, 1]"),
    (lambda p: np.savez(p.with_suffix(".npz"), images=np.zeros((2, 3, 28, 28))), "must be (N, 1, H, W)"),
])
def test_files_that_are_not_images_are_refused_in_one_line(tmp_path, write, message):
    path = tmp_path / "in.png"
    write(path)
    target = path if path.exists() else path.with_suffix(".npz")
    with pytest.raises(UserError) as e:
        read_images(target)
    assert message in str(e.value) and "\n" not in str(e.value)
