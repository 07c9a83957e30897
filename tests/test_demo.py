"""The demo's pieces without a browser: pictures to digits, the page's choices checked, the reverse chain's
frames and progress, the install hint without Gradio, a taken port refused."""

import socket
import sys

import numpy as np
import pytest
import torch

import mnistgen
from mnistgen.demo import INSTALL_HINT, Demo, to_digit, to_screen
from mnistgen.errors import UserError


def test_a_drawing_becomes_a_centred_mnist_digit():
    drawing = np.zeros((280, 280, 4), np.uint8)  # transparent canvas
    drawing[20:120, 30:70, 3] = 255  # a black bar (RGB 0) in the upper-left corner
    x = to_digit(drawing)
    assert x.shape == (1, 1, 28, 28) and 0 <= x.min() and x.max() <= 1
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    mass = x[0, 0].sum()
    assert abs((ys * x[0, 0]).sum() / mass - 13.5) < 1 and abs((xs * x[0, 0]).sum() / mass - 13.5) < 1
    rows = (x[0, 0] > 0.5).any(1).nonzero().flatten()
    assert 18 <= rows.max() - rows.min() + 1 <= 21  # the longer side scaled to about 20 pixels


def test_a_dark_digit_on_paper_is_inverted_and_an_empty_picture_refused(mnist_test_unit):
    seven = (mnist_test_unit.x[0, 0].numpy() * 255).astype(np.uint8)
    on_paper = 255 - np.kron(seven, np.ones((4, 4), np.uint8))  # dark ink on white, 112 x 112
    x = to_digit(on_paper)
    assert (x[0, 0] > 0.5).float().mean() < 0.3  # ink is the minority, white on black
    judge = __import__("mnistgen.evaluation.fd", fromlist=["load_classifier"]).load_classifier()
    assert judge(x).argmax(1).item() == 7
    with pytest.raises(UserError, match="empty"):
        to_digit(np.zeros((50, 50, 4), np.uint8))


def test_the_screen_scales_each_pixel():
    images = torch.rand(1, 1, 28, 28)
    screen = to_screen(images)
    assert screen.shape == (112, 112) and screen.dtype == np.uint8  # one image: no grid padding
    assert np.abs(screen[::4, ::4] / 255 - images[0, 0].numpy()).max() <= 0.5 / 255 + 1e-6
    assert (screen.reshape(28, 4, 28, 4) == screen[::4, ::4][:, None, :, None]).all()  # 4 x 4 blocks
    assert to_screen(torch.rand(4, 1, 28, 28)).shape == (4 * 62, 4 * 62)  # 2 x 2 with 2-pixel padding


def test_page_choices_are_checked():
    demo = Demo()
    cfg = demo.model("cfg")
    assert demo.sample_options(cfg, "7", 1.0, "default", None, 2) == {"labels": 7, "guidance": 1.0}
    assert demo.sample_options(cfg, "any", 0.0, "ddim", 10, 3)["labels"].tolist() == [0, 1, 2]
    assert "steps" not in demo.sample_options(cfg, "7", 1.0, "default", 0, 2)  # 0: the model's default
    with pytest.raises(UserError, match="steps must be a whole number"):
        demo.sample_options(cfg, "7", 1.0, "default", 2.5, 2)
    for bad in (float("nan"), float("inf"), "ten"):
        with pytest.raises(UserError, match="steps must be a whole number"):
            demo.sample_options(cfg, "7", 1.0, "default", bad, 2)
    with pytest.raises(UserError, match="number of samples"):
        demo.sample_options(cfg, "7", 1.0, "default", None, 0)
    with pytest.raises(UserError, match="unknown model"):
        demo.model("gan")
    with pytest.raises(UserError, match="test digit"):
        demo.test_digit(10_000)
    frames = demo.sample("ddpm", "3", 0, "default", None, 0, 1, lambda f, what: None)
    with pytest.raises(UserError, match="takes no labels"):
        next(frames)


def test_sampling_plays_the_chain_then_shows_the_samples():
    demo = Demo()
    seen = []
    screens = list(demo.sample("ddpm", "any", 0, "ddim", 10, 0, 2, lambda f, what: seen.append(f)))
    assert len(screens) == 10  # one state after each of the 10 steps (fewer than CHAIN_FRAMES), the last with samples
    assert all(done is None for _, done in screens[:-1]) and screens[-1][1] is not None
    assert seen == sorted(seen) and seen[-1] == 1.0
    vae = list(demo.sample("vae", "any", 0, "default", None, 0, 3, lambda f, what: None))
    assert len(vae) == 1 and vae[0][0] is None and vae[0][1].shape == (4 * 62, 4 * 62)  # a 2 x 2 grid


def test_reverse_chain_frames_and_progress():
    model = mnistgen.load("pretrained:ddpm", device="cpu")
    g = torch.Generator().manual_seed(3)
    fractions = []
    chain = model.reverse_chain(2, frames=4, steps=12, sampler="ddim", eta=0.0, generator=g,
                                on_progress=fractions.append)
    assert chain.shape == (2, 4, 1, 28, 28)
    final = model.sample(2, steps=12, sampler="ddim", eta=0.0, generator=torch.Generator().manual_seed(3),
                         progress=False)
    assert torch.allclose(chain[:, -1], final, atol=1e-5)
    assert fractions == pytest.approx([k / 12 for k in range(1, 13)])  # after each step, the share done
    with pytest.raises(UserError, match="not both"):
        model.reverse_chain(1, frames=3, at=[0])
    with pytest.raises(UserError, match="frames must be"):
        model.reverse_chain(1, frames=1)


def test_without_gradio_the_command_says_how_to_install_it(cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    result = cli("demo")
    assert result.returncode == 2
    assert result.stderr.strip() == f"mnistgen: error: {INSTALL_HINT}"


def test_a_taken_port_is_refused_in_one_line(cli):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = cli("demo", "--port", port)
    assert result.returncode == 2 and f"127.0.0.1:{port}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert cli("demo", "--port", "70000").returncode == 2


def test_a_bad_device_is_refused_and_the_process_left_as_it_was(cli, tmp_path, monkeypatch):
    import os
    import signal
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = tempfile.gettempdir(), os.environ.get("TMPDIR"), signal.getsignal(signal.SIGINT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = cli("demo", "--device", "tpu", "--port", port)
    assert result.returncode == 2 and "unknown device 'tpu'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (tempfile.gettempdir(), os.environ.get("TMPDIR"), signal.getsignal(signal.SIGINT)) == before
    assert list(tmp_path.iterdir()) == []  # its temporary folder went too
