"""``mnistgen demo`` in a real browser: Debian's Chromium driven by Playwright against the page served on
127.0.0.1. The server runs as ``python -m mnistgen demo`` in an empty working folder, and is stopped by
the test whatever happens. In CI (CI set) a missing Chromium fails the test; elsewhere it skips it."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCALE = 4  # the page's screen pixels per digit pixel (mnistgen.demo.SCALE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_a_background_job() -> None:
    """Start with SIGINT ignored, as a shell starts a background job: Ctrl+C must still stop the page."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The demo server's address and its working folder; stopped (and its output read) at the end."""
    if CHROMIUM is None:
        message = "the browser test needs Chromium: apt-get install chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    workdir, scratch = tmp_path_factory.mktemp("demo-cwd"), tmp_path_factory.mktemp("demo-tmp")
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(scratch)}  # the server's temporary folders
    proc = subprocess.Popen([sys.executable, "-m", "mnistgen", "demo", "--port", str(port)], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=_as_a_background_job)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180
        address = f"http://127.0.0.1:{port}"
        while not any(address in line for line in lines):
            assert proc.poll() is None, f"the demo exited: {''.join(lines)}"
            assert time.monotonic() < deadline, f"no address line within 180 s: {''.join(lines)}"
            time.sleep(0.2)
        yield Server(address, workdir, scratch, lines, lambda: _stop(proc, reader))
    finally:
        _stop(proc, reader)


class Server(NamedTuple):
    address: str
    workdir: Path  # the server's working folder
    scratch: Path  # its TMPDIR
    lines: list[str]  # what it printed
    stop: Callable[[], int]  # Ctrl+C, then its exit status


def _stop(proc: subprocess.Popen, reader: threading.Thread) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=5)
    return proc.returncode


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            tab = browser.new_page()
            tab.set_default_timeout(60_000)
            tab.goto(server.address)
            yield tab
        finally:
            browser.close()


def _shown(page, elem_id: str, previous: str | None = None) -> tuple[str, np.ndarray]:
    """The source and pixels (H, W) in [0, 1] of the image the page shows in ``#elem_id`` (waiting for
    one, or for one other than ``previous``)."""
    img = page.locator(f"#{elem_id} img")
    img.wait_for(state="visible")
    if previous is not None:
        page.wait_for_function("([sel, old]) => { const i = document.querySelector(sel); return i && i.src !== old; }",
                               arg=[f"#{elem_id} img", previous])
    src = img.get_attribute("src")
    body = page.request.get(src).body()
    pixels = np.asarray(Image.open(io.BytesIO(body)).convert("L"), np.float32) / 255
    return src, pixels


def _digit(pixels: np.ndarray) -> torch.Tensor:
    """The 28 x 28 digit of a one-image screen (each pixel SCALE x SCALE; one image has no grid padding)."""
    assert pixels.shape == (28 * SCALE, 28 * SCALE), pixels.shape
    return torch.from_numpy(pixels[::SCALE, ::SCALE].copy()).view(1, 1, 28, 28)


def _set_number(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input").first
    box.fill(value)
    box.press("Tab")


def test_a_guided_seven_is_a_seven(page):
    from mnistgen.evaluation.fd import load_classifier

    page.locator("#sample-model label", has_text="cfg").click()
    page.locator("#sample-digit label", has_text="7").first.click()
    _set_number(page, "guidance", "1")
    _set_number(page, "count", "1")
    page.evaluate("""() => { window.chainFrames = new Set();  // every picture the chain shows while it plays
        new MutationObserver(() => { const i = document.querySelector('#chain img');
            if (i && i.src) window.chainFrames.add(i.src); })
        .observe(document.body, {subtree: true, childList: true, attributes: true}); }""")
    page.locator("#generate").click()
    _, pixels = _shown(page, "samples")
    judge = load_classifier()
    with torch.no_grad():
        assert judge(_digit(pixels)).argmax(1).item() == 7
    assert page.evaluate("() => window.chainFrames.size") >= 8  # the reverse chain played (16 steps)


def test_inpainting_keeps_the_known_half(page, mnist_test_unit):
    page.get_by_role("tab", name="Inpaint").click()
    _set_number(page, "test-index", "3")
    page.locator("#inpaint-model label", has_text="ddpm").click()
    page.locator("#mask label", has_text="lower").click()
    page.locator("#complete").click()
    _, masked = _shown(page, "masked")
    _, pixels = _shown(page, "completion")
    shown, truth = _digit(pixels), mnist_test_unit.x[3:4]
    assert (shown[..., :14, :] - truth[..., :14, :]).abs().max() <= 1 / 255 + 1e-6  # the upper half as given
    assert (shown[..., 14:, :] - truth[..., 14:, :]).abs().max() > 0  # the lower half drawn anew
    assert np.isclose(_digit(masked)[..., 14:, :].numpy(), 0.35, atol=1 / 255).all()  # hidden shown grey


def test_a_vae_slider_changes_the_image(page):
    page.get_by_role("tab", name="VAE latent").click()
    before, first = _shown(page, "decoded")
    _set_number(page, "latent-0", "2.5")
    _, second = _shown(page, "decoded", previous=before)
    assert np.abs(first - second).max() > 0.1


def test_a_bad_value_is_a_message_on_the_page(page, server):
    page.get_by_role("tab", name="Sample").click()
    page.locator("#sample-model label", has_text="ddpm").click()
    page.locator("#sample-digit label", has_text="any").click()
    _set_number(page, "steps", "5000")
    page.locator("#generate").click()
    message = page.get_by_text("steps must be", exact=False).first
    message.wait_for(state="visible")
    assert "Traceback" not in page.content()
    assert "Traceback" not in "".join(server.lines)


def test_stopped_the_server_leaves_no_file_behind(page, server):
    """Last: Ctrl+C stops the server; its working folder and its temporary folder are empty."""
    status = server.stop()
    assert status in (0, 130), "".join(server.lines)
    assert list(server.workdir.iterdir()) == []
    assert list(server.scratch.iterdir()) == []  # Gradio's uploads and outputs went, with their folder
    assert "Traceback" not in "".join(server.lines)
