"""Dataset loading from files in the real on-disk format, written by the test itself."""
import gzip
import struct

import numpy as np
import pytest

from harness.data.datasets import DatasetError, load_dataset
from harness.data.formats.idx import DEBIAN_FASHION_MNIST, read_idx


def write_idx(path, array: np.ndarray, compress=True):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


def write_fashion_mnist(folder, n_train=40, n_test=20, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)), compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10, compress)


def test_reads_gzipped_idx(tmp_path):
    write_fashion_mnist(tmp_path / "fmnist")
    data = load_dataset({"name": "fashion_mnist"}, str(tmp_path / "fmnist"))
    assert tuple(data.train_x.shape) == (40, 1, 28, 28) and tuple(data.test_x.shape) == (20, 1, 28, 28)
    assert data.train_y.tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert data.num_classes == 10 and data.in_chans == 1


def test_reads_torchvision_layout_uncompressed(tmp_path):
    write_fashion_mnist(tmp_path / "FashionMNIST" / "raw", compress=False)
    data = load_dataset({"name": "fashion_mnist", "train_per_class": 2}, str(tmp_path))
    assert len(data.train_y) == 20 and np.bincount(data.train_y.numpy()).tolist() == [2] * 10


def test_missing_data_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr("harness.data.formats.idx.DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    with pytest.raises(DatasetError) as info:
        load_dataset({"name": "fashion_mnist"}, str(tmp_path / "empty"))
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "empty") in message and "dataset-fashion-mnist" in message


def test_malformed_idx_is_named(tmp_path):
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">III", 10, 28, 28) + b"\x00" * 100)
    with pytest.raises(DatasetError, match="header says shape"):
        read_idx(bad)
    bad.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DatasetError, match="bad magic number"):
        read_idx(bad)


def test_embedded_subset_is_balanced():
    data = load_dataset({"name": "fashion_mnist_mini"})
    assert np.bincount(data.train_y.numpy()).tolist() == [300] * 10
    assert np.bincount(data.test_y.numpy()).tolist() == [200] * 10
    small = load_dataset({"name": "fashion_mnist_mini", "train_per_class": 7, "test_per_class": 3})
    assert len(small.train_y) == 70 and len(small.test_y) == 30


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_embedded_subset_matches_the_full_dataset():
    full = load_dataset({"name": "fashion_mnist", "train_per_class": 300, "test_per_class": 200})
    mini = load_dataset({"name": "fashion_mnist_mini"})
    assert np.array_equal(full.train_x.numpy(), mini.train_x.numpy())
    assert np.array_equal(full.test_y.numpy(), mini.test_y.numpy())
