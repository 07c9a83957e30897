"""docs/tutorial.ipynb runs: its code cells, in order, in a fresh interpreter (no Jupyter needed),
and the notebook keeps the outputs a reader sees before running it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tutorial.ipynb"


def _code_cells() -> list[dict]:
    return [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]


@pytest.mark.slow
def test_the_tutorial_runs_top_to_bottom(tmp_path):
    source = "\n\n".join("".join(c["source"]) for c in _code_cells())
    script = tmp_path / "tutorial.py"
    script.write_text(source)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "MPLBACKEND": "Agg"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "['cfg', 'ddpm', 'vae']" in done.stdout
    assert (tmp_path / "reverse_process.gif").stat().st_size > 10_000
    assert (tmp_path / "runs" / "tutorial-ddpm" / "checkpoints" / "last.pt").is_file()


def test_the_tutorial_keeps_its_outputs():
    cells = _code_cells()
    assert cells[0]["outputs"] == []  # the install cell prints nothing when mnistgen is there
    for cell in cells[1:]:
        assert cell["outputs"], "".join(cell["source"])[:80]
    images = [o for c in cells for o in c["outputs"] if "image/png" in o.get("data", {})]
    assert len(images) >= 7
