"""MNIST and Fashion-MNIST as IDX files (the format of their distribution; gzipped or not), from a data root, its
torchvision layout or Debian's package, and the class-balanced Fashion-MNIST subset embedded in the package."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from harness.data.downloads import fetch, may_download, why_not_downloaded
from harness.data.image_data import DATASETS, DatasetError, ImageData

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
EMBEDDED_FASHION_MNIST = Path(__file__).parents[1] / "embedded" / "fashion_mnist_mini.npz"

_IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped): a big-endian header, then unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetError(f"{path}: header says shape {shape} but the file holds {body.size} values")
    return body.reshape(shape).copy()  # frombuffer is read-only; torch wants writable memory


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.exists():
            return candidate
    return None


def read_idx_splits(folder: Path):
    """((train_x, train_y), (test_x, test_y)) as numpy arrays from the four IDX files in ``folder``."""
    splits = []
    for split in ("train", "test"):
        images, labels = (_find_idx(folder, stem) for stem in _IDX_NAMES[split])
        if images is None or labels is None:
            raise DatasetError(f"{folder}: no {split} IDX files")
        x, y = read_idx(images), read_idx(labels)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DatasetError(f"{folder}: {split} images {x.shape} and labels {y.shape} do not match")
        splits.append((x[:, None], y.astype(np.int64)))
    return tuple(splits)


def _idx_data(name: str, train, test, mean=(0.2860,), std=(0.3530,)) -> ImageData:
    (xtr, ytr), (xte, yte) = train, test
    return ImageData(
        name=name,
        train_x=torch.from_numpy(np.ascontiguousarray(xtr)),
        train_y=torch.from_numpy(np.asarray(ytr, dtype=np.int64)),
        test_x=torch.from_numpy(np.ascontiguousarray(xte)),
        test_y=torch.from_numpy(np.asarray(yte, dtype=np.int64)),
        num_classes=10,
        mean=mean,
        std=std,
    )


def _load_idx(name: str, spec: dict, root: str | None, folders: tuple[str, ...], extra: tuple[Path, ...],
              stats: tuple) -> ImageData:
    """An MNIST-like dataset from the first of ``root/<folders>`` and ``extra`` that holds its IDX files, else
    downloaded into ``root/<its torchvision folder>`` (the last of ``folders``)."""
    base = Path(root).expanduser() if root else None
    candidates = [base / f for f in folders] if base else []
    candidates += list(extra)
    for folder in candidates:
        if _find_idx(folder, _IDX_NAMES["train"][0]):
            return _idx_data(name, *read_idx_splits(folder), *stats)
    if base and may_download(spec):
        fetch(name, base)
        return _idx_data(name, *read_idx_splits(base / folders[-1]), *stats)
    looked = ", ".join(str(c) for c in candidates) or "no folder"
    debian = " install Debian's 'dataset-fashion-mnist'," if extra else ""
    raise DatasetError(f"dataset {name}: no train-images-idx3-ubyte[.gz] (IDX layout) in {looked};{debian} pass "
                       f"--data-root DIR{why_not_downloaded(name, spec)}")


@DATASETS.register("fashion_mnist")
def fashion_mnist(spec: dict, root: str | None) -> ImageData:
    """Full Fashion-MNIST from IDX files: the data root, its torchvision layout, or Debian's package; downloaded
    into the torchvision layout when missing."""
    return _load_idx("fashion_mnist", spec, root, (".", "fashion-mnist", "FashionMNIST/raw"),
                     (DEBIAN_FASHION_MNIST,), ((0.2860,), (0.3530,)))


@DATASETS.register("mnist")
def mnist(spec: dict, root: str | None) -> ImageData:
    """MNIST from IDX files in <root>/mnist or torchvision's <root>/MNIST/raw; downloaded into the latter when
    missing."""
    return _load_idx("mnist", spec, root, ("mnist", "MNIST/raw"), (), ((0.1307,), (0.3081,)))


@DATASETS.register("fashion_mnist_mini")
def fashion_mnist_mini(spec: dict, root: str | None) -> ImageData:
    """The class-balanced Fashion-MNIST subset shipped inside the package (300 train / 200 test per class)."""
    if not EMBEDDED_FASHION_MNIST.exists():
        raise DatasetError(f"dataset fashion_mnist_mini: {EMBEDDED_FASHION_MNIST} is missing; reinstall the package")
    with np.load(EMBEDDED_FASHION_MNIST) as z:
        return _idx_data("fashion_mnist_mini", (z["train_x"], z["train_y"]), (z["test_x"], z["test_y"]))
