"""Tests read MNIST from ../shared/data/mnist (never download) and run on the CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
os.environ["MNISTGEN_NO_DOWNLOAD"] = "1"
if SHARED_MNIST.is_dir():
    os.environ["MNISTGEN_DATA"] = str(SHARED_MNIST)
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    assert SHARED_MNIST.is_dir(), f"tests need MNIST in {SHARED_MNIST}"
    return SHARED_MNIST


@pytest.fixture(scope="session")
def mnist_test_unit(mnist_dir):
    from mnistgen.data import load

    return load("test", "unit", data_dir=mnist_dir)
