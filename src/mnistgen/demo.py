"""``mnistgen demo``: a local web page (Gradio) to play with the shipped models, offline.

Three tabs: **Sample** (model, digit, guidance, sampler, steps, seed; the reverse chain plays, then the
samples), **Inpaint** (a test digit, an uploaded picture or a drawing, half of it hidden and filled in by
a model, optionally guided to a digit), **VAE latent** (a test digit's code moved along sliders). Bad
input is a message on the page, never a traceback. Gradio is an optional extra
(``pip install 'mnistgen[demo]'``); its uploads and outputs go to a temporary folder removed on exit.
"""

from __future__ import annotations

import functools
import html
import importlib.util
import os
import shutil
import signal
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from PIL import Image

from mnistgen.data.mnist import load as load_data
from mnistgen.diffusion.samplers import SAMPLERS
from mnistgen.errors import UserError
from mnistgen.images import MASKS, grid_image, named_mask
from mnistgen.model import Model, load
from mnistgen.training.device import pick_device

MODELS = {"vae": "pretrained:vae", "ddpm": "pretrained:ddpm", "cfg": "pretrained:cfg"}
INSTALL_HINT = "mnistgen demo needs Gradio: pip install 'mnistgen[demo]'"
SCALE = 4  # screen pixels per digit pixel
SLIDERS = 8  # latent dimensions on the VAE tab
CHAIN_FRAMES = 24
FRAME_SECONDS = 0.06  # the reverse chain plays at about 16 frames per second
ANY = "any"
NO_LABEL = "none"


def check_gradio() -> None:
    """One :class:`UserError` line that says how to install Gradio when it is missing (nothing imported)."""
    try:
        found = importlib.util.find_spec("gradio") is not None
    except ValueError:  # a module entry without a spec
        found = False
    if not found:
        raise UserError(INSTALL_HINT)


def require_gradio():
    """The gradio module, or one :class:`UserError` line that says how to install it."""
    try:
        with warnings.catch_warnings():  # its audio dependency warns about ffmpeg and audioop on import
            warnings.simplefilter("ignore")
            import gradio
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return gradio


def to_screen(images: torch.Tensor, nrow: int | None = None) -> np.ndarray:
    """Images (N, 1, 28, 28) in [0, 1] as one grid (H, W) uint8, each pixel a SCALE x SCALE block."""
    grid = grid_image(images, nrow)[0]  # (H, W) in [0, 1]
    pixels = grid.mul(255).round().byte().numpy()
    return pixels.repeat(SCALE, 0).repeat(SCALE, 1)


def to_digit(picture: np.ndarray) -> torch.Tensor:
    """A picture (H, W), (H, W, 3) or (H, W, 4) uint8 of one digit as MNIST draws it: (1, 1, 28, 28) in [0, 1],
    the ink white on black, scaled to fit 20 x 20 and centred by its centre of mass (LeCun et al.'s
    preprocessing). Ink is opacity times darkness where there is an alpha channel (a drawing), else
    brightness, inverted when the picture is mostly light (a dark digit on paper)."""
    x = picture.astype(np.float32) / 255.0
    if x.ndim == 3 and x.shape[2] == 4:
        ink = x[..., 3] * (1 - x[..., :3].mean(2))
    else:
        ink = x.mean(2) if x.ndim == 3 else x
        ink = 1 - ink if ink.mean() > 0.5 else ink
    rows, cols = np.nonzero(ink > 0.1)
    if len(rows) == 0:
        raise UserError("the picture is empty: draw or upload a digit first")
    ink = ink[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    h, w = ink.shape
    size = (max(1, round(20 * w / max(h, w))), max(1, round(20 * h / max(h, w))))
    small = np.asarray(Image.fromarray((ink * 255).astype(np.uint8)).resize(size, Image.LANCZOS), np.float32) / 255
    ys, xs = np.mgrid[: small.shape[0], : small.shape[1]]
    mass = small.sum() or 1.0
    top = int(round(14 - (ys * small).sum() / mass))
    left = int(round(14 - (xs * small).sum() / mass))
    top, left = min(max(top, 0), 28 - small.shape[0]), min(max(left, 0), 28 - small.shape[1])
    canvas = np.zeros((28, 28), np.float32)
    canvas[top: top + small.shape[0], left: left + small.shape[1]] = small
    return torch.from_numpy(canvas.clip(0, 1)).view(1, 1, 28, 28)


def _int(value, what: str, low: int, high: int) -> int:
    """A whole number in [low, high] from the page, or one UserError line (NaN, text, fractions too)."""
    try:
        whole = int(float(value)) == float(value) and low <= float(value) <= high
    except (TypeError, ValueError, OverflowError):
        whole = False
    if isinstance(value, bool) or not whole:
        raise UserError(f"{what} must be a whole number in [{low}, {high}], got {value!r}")
    return int(float(value))


@dataclass
class Demo:
    """The page's state: the models (loaded on first use) and the MNIST test digits."""

    device: torch.device | str = "cpu"
    sources: dict[str, str] = field(default_factory=lambda: dict(MODELS))
    models: dict[str, Model] = field(default_factory=dict)
    _test: torch.Tensor | None = None

    def model(self, name: str) -> Model:
        if name not in self.sources:
            raise UserError(f"unknown model {name!r}; valid: {', '.join(self.sources)}")
        if name not in self.models:
            self.models[name] = load(self.sources[name], self.device)
        return self.models[name]

    def test_digit(self, index) -> torch.Tensor:
        """Test digit number ``index``: (1, 1, 28, 28) in [0, 1]."""
        if self._test is None:
            self._test = load_data("test", "unit").x
        return self._test[_int(index, "the test digit", 0, len(self._test) - 1)].unsqueeze(0)

    # -- Sample -------------------------------------------------------------------------------
    def sample_options(self, model: Model, digit: str, guidance: float, sampler: str, steps,
                       count) -> dict:
        """The page's choices as Model.sample's keywords, checked (bad ones: a UserError line)."""
        n = _int(count, "the number of samples", 1, 64)
        options: dict = {}
        if digit != ANY:
            options["labels"] = int(digit)
        elif model.kind.takes_labels:
            options["labels"] = torch.arange(n) % 10
        if model.kind.guided:
            options["guidance"] = float(guidance)
        if model.kind.iterative:
            if sampler != "default":
                options["sampler"] = sampler
            if steps not in (None, "", 0):  # 0: the model's default
                options["steps"] = _int(steps, "steps", 1, 1_000_000)
        return options

    def sample(self, name: str, digit: str, guidance: float, sampler: str, steps, seed, count,
               report: Callable[[float, str], None]):
        """Yields (chain frame, samples) screens: the reverse chain frame by frame, then the samples."""
        model = self.model(name)
        options = self.sample_options(model, digit, guidance, sampler, steps, count)
        n = _int(count, "the number of samples", 1, 64)
        g = torch.Generator(model.device).manual_seed(_int(seed, "the seed", 0, 2**31 - 1))
        if not model.kind.iterative:
            report(0.0, "sampling")
            yield None, to_screen(model.sample(n, generator=g, progress=False, **options))
            return
        chain = model.reverse_chain(n, frames=CHAIN_FRAMES, generator=g,
                                    on_progress=lambda f: report(f, "sampling"), **options)  # (n, F, 1, 28, 28)
        for frame in chain.transpose(0, 1)[:-1]:
            yield to_screen(frame), None
            time.sleep(FRAME_SECONDS)
        yield to_screen(chain[:, -1]), to_screen(chain[:, -1])

    # -- Inpaint ------------------------------------------------------------------------------
    def source_digit(self, source: str, index, upload, drawing) -> torch.Tensor:
        if source == "test digit":
            return self.test_digit(index)
        if source == "upload":
            if upload is None:
                raise UserError("upload a picture of a digit first")
            return to_digit(upload)
        if drawing is None or drawing.get("composite") is None:
            raise UserError("draw a digit first")
        return to_digit(np.asarray(drawing["composite"]))

    def inpaint(self, name: str, digit: torch.Tensor, mask_name: str, label: str, guidance: float, seed,
                report: Callable[[float, str], None]) -> tuple[np.ndarray, np.ndarray]:
        """(masked input, completion) screens; the hidden half shown grey in the input."""
        model = self.model(name)
        mask = named_mask(mask_name)  # (1, 1, 28, 28)
        options: dict = {}
        if label != NO_LABEL:
            options["labels"] = int(label)
            if model.kind.guided:
                options["guidance"] = float(guidance)
        g = torch.Generator(model.device).manual_seed(_int(seed, "the seed", 0, 2**31 - 1))
        report(0.0, "inpainting")
        out = model.inpaint(digit, mask, generator=g, **options)
        return to_screen(digit * mask + 0.35 * (1 - mask)), to_screen(out)

    # -- VAE latent ---------------------------------------------------------------------------
    def traverse(self, index, offsets: list[float]) -> np.ndarray:
        """The VAE's decode of a test digit's code with its first dimensions moved by ``offsets``."""
        model = self.model("vae")
        code = model.encode(self.test_digit(index))  # (1, latent)
        moved = code.clone()
        moved[0, : len(offsets)] += torch.tensor(offsets, dtype=code.dtype)
        return to_screen(model.decode(moved))


def build_page(demo: Demo):
    """The Gradio Blocks of the page (not launched) and its theme (given at launch)."""
    gr = require_gradio()

    def on_page(fn):
        """``fn`` with mnistgen's one-line refusals, and any other failure, as a message on the page (its
        signature kept: Gradio reads it to hand in the progress tracker)."""
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                result = fn(*args, **kwargs)
                if hasattr(result, "__next__"):
                    yield from result
                else:
                    yield result
            except UserError as e:
                raise gr.Error(html.escape(str(e)), print_exception=False) from None  # Gradio renders HTML
            except Exception as e:  # noqa: BLE001 - the browser gets a line; the server log keeps the traceback
                raise gr.Error(html.escape(f"{type(e).__name__}: {e}")) from e
        return run

    digits = [ANY] + [str(d) for d in range(10)]
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    with gr.Blocks(title="mnistgen demo", analytics_enabled=False) as page:
        gr.Markdown("# mnistgen demo\nThe shipped `cpu` models: sample, inpaint, explore the VAE's latent space.")
        with gr.Tab("Sample", id="sample-tab"):
            with gr.Row():
                with gr.Column():
                    model = gr.Radio(list(demo.sources), value="cfg", label="model", elem_id="sample-model")
                    digit = gr.Radio(digits, value="7", label="digit (the CFG model; 'any' for the others)",
                                     elem_id="sample-digit")
                    guidance = gr.Slider(0, 4, value=1.0, step=0.1, label="guidance w (CFG)", elem_id="guidance")
                    sampler = gr.Radio(["default", *SAMPLERS], value="default", label="sampler (diffusion models)",
                                       elem_id="sampler")
                    steps = gr.Number(0, minimum=0, precision=0, label="steps (0: the model's default)",
                                      elem_id="steps")
                    seed = gr.Number(0, label="seed", elem_id="seed")
                    count = gr.Slider(1, 16, value=4, step=1, label="samples", elem_id="count")
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Column():
                    chain = gr.Image(label="reverse chain", format="png", interactive=False, elem_id="chain")
                    samples = gr.Image(label="samples", format="png", interactive=False, elem_id="samples")

            def sample(m, d, w, s, k, sd, n, progress=gr.Progress()):
                screens = demo.sample(m, d, w, s, k, sd, n, lambda f, what: progress(f, desc=what))
                for i, (frame, done) in enumerate(screens):
                    yield frame, done if done is not None else (None if i == 0 else gr.skip())  # old samples cleared

            go.click(on_page(sample), [model, digit, guidance, sampler, steps, seed, count], [chain, samples])

        with gr.Tab("Inpaint", id="inpaint-tab"):
            with gr.Row():
                with gr.Column():
                    source = gr.Radio(["test digit", "upload", "drawing"], value="test digit", label="digit from",
                                      elem_id="source")
                    index = gr.Number(0, label="test digit number (0-9999)", elem_id="test-index")
                    upload = gr.Image(label="upload", sources=["upload"], type="numpy", image_mode="L",
                                      elem_id="upload")
                    drawing = gr.Sketchpad(label="draw (white background, dark ink)", type="numpy",
                                           image_mode="RGBA", canvas_size=(280, 280), elem_id="drawing")
                with gr.Column():
                    edit_model = gr.Radio(list(demo.sources), value="ddpm", label="model", elem_id="inpaint-model")
                    mask = gr.Radio(list(MASKS), value="lower", label="half to fill in", elem_id="mask")
                    label = gr.Radio([NO_LABEL] + digits[1:], value=NO_LABEL, label="complete as (CFG)",
                                     elem_id="inpaint-label")
                    edit_guidance = gr.Slider(0, 4, value=1.0, step=0.1, label="guidance w (CFG)",
                                              elem_id="inpaint-guidance")
                    edit_seed = gr.Number(0, label="seed", elem_id="inpaint-seed")
                    complete = gr.Button("Complete", variant="primary", elem_id="complete")
                    masked = gr.Image(label="input, hidden half grey", format="png", interactive=False,
                                      elem_id="masked")
                    completion = gr.Image(label="completion", format="png", interactive=False, elem_id="completion")

            def inpaint(src, i, up, dr, m, h, lab, w, sd, progress=gr.Progress()):
                digit_image = demo.source_digit(src, i, up, dr)
                return demo.inpaint(m, digit_image, h, lab, w, sd, lambda f, what: progress(f, desc=what))

            complete.click(on_page(inpaint), [source, index, upload, drawing, edit_model, mask, label, edit_guidance,
                                              edit_seed], [masked, completion])

        with gr.Tab("VAE latent", id="vae-tab"):
            with gr.Row():
                with gr.Column():
                    vae_index = gr.Number(0, label="test digit number (0-9999)", elem_id="vae-index")
                    sliders = [gr.Slider(-3, 3, value=0, step=0.1, label=f"latent dimension {d}",
                                         elem_id=f"latent-{d}") for d in range(SLIDERS)]
                decoded = gr.Image(label="decoded", format="png", interactive=False, elem_id="decoded")

            def traverse(i, *offsets):
                return demo.traverse(i, [float(o) for o in offsets])

            for control in [vae_index, *sliders]:
                control.change(on_page(traverse), [vae_index, *sliders], decoded)
            page.load(on_page(traverse), [vae_index, *sliders], decoded)
    return page, theme


def serve(host: str = "127.0.0.1", port: int = 7860, device: str = "cpu",
          log: Callable[[str], None] = print) -> None:
    """Serve the page on ``host``:``port`` until Ctrl+C or SIGTERM. Every file the process puts in the
    temporary folder (Gradio's uploads and outputs, torch's cache folders there) lands in one folder of its
    own, removed on exit; the process's
    temporary-folder settings and signal handlers are restored then."""
    check_gradio()
    scratch = tempfile.mkdtemp(prefix="mnistgen-demo-")
    names = ("GRADIO_TEMP_DIR", "TMPDIR", "GRADIO_ANALYTICS_ENABLED")
    saved = {name: os.environ.get(name) for name in names}, tempfile.tempdir, {
        sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    os.environ.update(GRADIO_TEMP_DIR=scratch, TMPDIR=scratch, GRADIO_ANALYTICS_ENABLED="False")
    tempfile.tempdir = scratch
    # Ctrl+C and SIGTERM stop the page cleanly, also when started from a shell that ignores SIGINT
    # for background jobs: the scratch folder is removed on the way out.
    for sig in saved[2]:
        signal.signal(sig, signal.default_int_handler)
    try:
        page, theme = build_page(Demo(pick_device(device)))  # after tempdir is set: torch's cache folder too
        page.queue()
        page.launch(server_name=host, server_port=port, share=False, quiet=True, prevent_thread_lock=True,
                    show_error=True, ssr_mode=False, mcp_server=False, enable_monitoring=False, theme=theme,
                    footer_links=[])
        shown = f"[{host}]" if ":" in host else host
        log(f"mnistgen demo: http://{shown}:{port} (Ctrl+C stops it)")
        page.block_thread()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        for name, value in saved[0].items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        tempfile.tempdir = saved[1]
        for sig, handler in saved[2].items():
            signal.signal(sig, handler)
