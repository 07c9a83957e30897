import gzip
import shutil

import pytest
import torch

from mnistgen.data import load, load_split, resolve_data_dir
from mnistgen.data.mnist import BUNDLED_DIR, FILES
from mnistgen.errors import UserError


def test_splits_have_canonical_sizes_and_label_counts(mnist_dir):
    train = load_split("train", data_dir=mnist_dir)
    test = load_split("test", data_dir=mnist_dir)
    assert train.images.shape == (60_000, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10_000, 28, 28)
    assert test.labels.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert train.labels.bincount().tolist()[:3] == [5923, 6742, 5958]


def test_scaling_and_padding(mnist_dir):
    unit = load("test", "unit", 28, data_dir=mnist_dir)
    signed = load("test", "signed", 32, data_dir=mnist_dir)
    assert unit.x.shape == (10_000, 1, 28, 28) and unit.x.min() == 0 and unit.x.max() == 1
    assert signed.x.shape == (10_000, 1, 32, 32) and signed.x.min() == -1 and signed.x.max() == 1
    assert (signed.x[:, :, :2] == -1).all() and (signed.x[:, :, :, -2:] == -1).all()  # background border
    torch.testing.assert_close(signed.x[:, :, 2:30, 2:30], unit.x * 2 - 1)


def test_bundled_copy_is_the_default(monkeypatch):
    monkeypatch.delenv("MNISTGEN_DATA", raising=False)
    assert resolve_data_dir("mnist") == BUNDLED_DIR


def test_environment_variable_and_argument_order(monkeypatch, mnist_dir, tmp_path):
    monkeypatch.setenv("MNISTGEN_DATA", str(mnist_dir))
    assert resolve_data_dir("mnist") == mnist_dir
    with pytest.raises(UserError, match=str(tmp_path)):  # the argument wins over the variable
        resolve_data_dir("mnist", tmp_path)


def _copy(mnist_dir, tmp_path):
    for pair in FILES.values():
        for name in pair:
            shutil.copy(mnist_dir / f"{name}.gz", tmp_path / f"{name}.gz")
    return tmp_path


def test_missing_files_give_one_clear_error(tmp_path):
    with pytest.raises(UserError) as e:
        load_split("test", data_dir=tmp_path)
    message = str(e.value)
    assert "t10k-images-idx3-ubyte.gz" in message and str(tmp_path) in message and "\n" not in message


def test_truncated_file_is_named(mnist_dir, tmp_path):
    folder = _copy(mnist_dir, tmp_path)
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:5000]))
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.gz.*truncated"):
        load_split("test", data_dir=folder)


def test_corrupt_gzip_is_named(mnist_dir, tmp_path):
    folder = _copy(mnist_dir, tmp_path)
    path = folder / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz"):
        load_split("test", data_dir=folder)


@pytest.mark.slow
def test_checksum_mismatch_is_named(mnist_dir, tmp_path):
    folder = _copy(mnist_dir, tmp_path)
    path = folder / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[-1] ^= 0xFF  # one flipped pixel keeps the shape valid
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.gz.*checksum"):
        load_split("test", data_dir=folder)


def test_mismatched_files_are_named(mnist_dir, tmp_path):
    folder = _copy(mnist_dir, tmp_path)
    shutil.copy(folder / "t10k-labels-idx1-ubyte.gz", folder / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.gz"):
        load_split("test", data_dir=folder)


def test_uncompressed_files_are_read(mnist_dir, tmp_path):
    for name in (*FILES["train"], *FILES["test"]):
        (tmp_path / name).write_bytes(gzip.decompress((mnist_dir / f"{name}.gz").read_bytes()))
    assert load_split("test", data_dir=tmp_path).images.shape == (10_000, 28, 28)
