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
