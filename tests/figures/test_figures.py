import pytest
from PIL import Image

from mnistgen.cli import main
from mnistgen.figures.diffusion import nearest_epochs


def test_nearest_epochs_falls_back_to_what_the_run_has():
    assert nearest_epochs(list(range(1, 21))) == [5, 9, 15, 19]
    assert nearest_epochs([1, 2, 5, 9, 10, 15, 19, 20]) == [5, 9, 15, 19]
    assert nearest_epochs([1, 2, 3, 4, 5, 6, 7]) == [2, 3, 5, 7]  # a 7-epoch run: the same fractions
    assert nearest_epochs([2, 4, 6, 8, 10, 12, 14, 16, 18, 20]) == [4, 8, 14, 18]
    assert nearest_epochs([1, 2]) == [1, 2]
    with pytest.raises(ValueError):
        nearest_epochs([])


def _valid_png(path):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


@pytest.mark.parametrize("kind, names", [
    ("ddpm", ["f9_epochs.png", "f10_samples.png", "f11_reverse_chain.png", "ddim_vs_ancestral.png"]),
    ("cfg", ["f12_epochs.png", "guidance_sweep.png"]),
])
@pytest.mark.slow
def test_diffusion_figures_render(kind, names, tmp_path):
    run = tmp_path / kind
    assert main(["train", kind, "--preset", "smoke", "--out", str(run), "--no-progress", "--epochs", "3"]) == 0
    assert main(["figures", str(run)]) == 0
    for name in names:
        width, height = _valid_png(run / "figures" / name)
        assert width > 80 and height > 80


@pytest.mark.slow
def test_drawing_a_figure_leaves_the_users_matplotlib_backend_alone(tmp_path):
    """A notebook's inline backend (here: pdf) survives importing and drawing mnistgen's figures,
    and no figure is left open in pyplot."""
    import subprocess
    import sys

    code = f"""
import matplotlib
matplotlib.use("pdf")
import torch
from mnistgen.evaluation.results import SweepPoint
from mnistgen.figures import diffusion, vae
draw = lambda n, generator, settings=None, labels=None: torch.rand(n, 1, 28, 28, generator=generator)
points = (SweepPoint(0.0, 4, 10, 50.0, 0.8), SweepPoint(1.0, 4, 10, 40.0, 0.9))
diffusion.guidance_sweep(draw, torch.device("cpu"), {str(tmp_path / "sweep.png")!r}, (0.0, 1.0), points)
import matplotlib.pyplot as plt
print(matplotlib.get_backend(), len(plt.get_fignums()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["pdf", "0"]
    assert Image.open(tmp_path / "sweep.png").size[0] > 500
