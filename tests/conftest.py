"""Tests read MNIST from ../shared/data/mnist (else the copy bundled in the package), never download,
and run on the CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mnistgen.data.mnist import BUNDLED_DIR

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
MNIST_DIR = SHARED_MNIST if SHARED_MNIST.is_dir() else BUNDLED_DIR
os.environ["MNISTGEN_NO_DOWNLOAD"] = "1"
os.environ["MNISTGEN_DATA"] = str(MNIST_DIR)
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    assert (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(), f"tests need MNIST in {MNIST_DIR}"
    return MNIST_DIR


@pytest.fixture(scope="session")
def mnist_test_unit(mnist_dir):
    from mnistgen.data import load

    return load("test", "unit", data_dir=mnist_dir)


class CliResult:
    """What an in-process ``mnistgen ...`` call left: its exit status and what it printed."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capfd):
    """``cli("sample", RUN, "--n", "2")``: the command line run in this process (its ``main``, as the
    ``mnistgen`` entry point calls it), without the second or so a new interpreter takes to import
    torch. Everything the call writes to file descriptors 1 and 2 is captured, and each Python warning
    it raises is one more stderr line, as it would be in a subprocess. One test in test_cli.py runs the
    real entry point in a subprocess."""
    import warnings

    from mnistgen.cli import main

    def run(*args) -> CliResult:
        capfd.readouterr()  # what earlier calls printed is not this call's
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            status = main([str(a) for a in args])
        out = capfd.readouterr()
        raised = "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
        return CliResult(status, out.out, out.err + raised)

    return run
