"""Fashion-MNIST as IDX files (the format of MNIST's distribution; gzipped or not), from a data root, its
torchvision layout or Debian's package, and the class-balanced subset embedded in the package."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

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


def read_fashion_mnist(folder: Path):
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


def _fashion_mnist_data(name: str, train, test) -> ImageData:
    (xtr, ytr), (xte, yte) = train, test
    return ImageData(
        name=name,
        train_x=torch.from_numpy(np.ascontiguousarray(xtr)),
        train_y=torch.from_numpy(np.asarray(ytr, dtype=np.int64)),
        test_x=torch.from_numpy(np.ascontiguousarray(xte)),
        test_y=torch.from_numpy(np.asarray(yte, dtype=np.int64)),
        num_classes=10,
        mean=(0.2860,),
        std=(0.3530,),
    )


@DATASETS.register("fashion_mnist")
def fashion_mnist(spec: dict, root: str | None) -> ImageData:
    """Full Fashion-MNIST from IDX files: the data root, its torchvision layout, or Debian's package."""
    candidates = []
    if root:
        base = Path(root).expanduser()
        candidates += [base, base / "fashion-mnist", base / "FashionMNIST" / "raw"]
    candidates.append(DEBIAN_FASHION_MNIST)
    for folder in candidates:
        if _find_idx(folder, _IDX_NAMES["train"][0]):
            return _fashion_mnist_data("fashion_mnist", *read_fashion_mnist(folder))
    if spec.get("download") and root:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(root, train=True, download=True)
        FashionMNIST(root, train=False, download=True)
        return _fashion_mnist_data("fashion_mnist", *read_fashion_mnist(Path(root) / "FashionMNIST" / "raw"))
    looked = ", ".join(str(c) for c in candidates)
    raise DatasetError(
        f"dataset fashion_mnist: no train-images-idx3-ubyte[.gz] (IDX layout) in {looked}; install Debian's "
        "'dataset-fashion-mnist', pass --data-root DIR, or set dataset.download: true where a network exists"
    )


@DATASETS.register("fashion_mnist_mini")
def fashion_mnist_mini(spec: dict, root: str | None) -> ImageData:
    """The class-balanced Fashion-MNIST subset shipped inside the package (300 train / 200 test per class)."""
    if not EMBEDDED_FASHION_MNIST.exists():
        raise DatasetError(f"dataset fashion_mnist_mini: {EMBEDDED_FASHION_MNIST} is missing; reinstall the package")
    with np.load(EMBEDDED_FASHION_MNIST) as z:
        return _fashion_mnist_data("fashion_mnist_mini", (z["train_x"], z["train_y"]), (z["test_x"], z["test_y"]))
