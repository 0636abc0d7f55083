"""CIFAR-10 and CIFAR-100 as their pickled Python batches (``cifar-10-batches-py``, ``cifar-100-python``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.downloads import fetch, may_download, why_not_downloaded
from harness.data.image_data import DATASETS, DatasetError, ImageData, _image_data, _looked_in, _one_line

_CIFAR = {
    # name: (folder, train batches, test batch, label key, classes, mean, std, archive)
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", b"labels", 10,
                (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", ("train",), "test", b"fine_labels", 100,
                 (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                 "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}


def read_cifar_batch(path: Path, label_key: bytes, num_classes: int):
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) from one pickled CIFAR batch (python version)."""
    import pickle

    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise DatasetError(f"{path}: CIFAR batch file is missing") from None
    except Exception as e:  # UnpicklingError, EOFError, ... anything that is not a pickle
        raise DatasetError(f"{path}: not a CIFAR batch (cannot unpickle: {_one_line(e)})") from None
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: not a CIFAR batch (a pickled {type(batch).__name__}, expected a dict)")
    found = {}
    for key in (b"data", label_key):
        value = batch.get(key, batch.get(key.decode()))
        if value is None:
            raise DatasetError(f"{path}: not a CIFAR batch (no {key!r} key; keys are {sorted(batch, key=repr)})")
        found[key] = value
    data = np.asarray(found[b"data"])
    labels = np.asarray(found[label_key])
    if data.dtype.kind not in "biu" or labels.dtype.kind not in "biu":
        raise DatasetError(f"{path}: not a CIFAR batch (data of type {data.dtype} and labels of type {labels.dtype}; "
                           "expected integers)")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise DatasetError(f"{path}: not a CIFAR batch (data {data.shape} and labels {labels.shape}; "
                           "expected (N, 3072) and (N,))")
    if data.dtype != np.uint8 and data.size and (data.min() < 0 or data.max() > 255):
        raise DatasetError(f"{path}: not a CIFAR batch (pixel values run from {data.min()} to {data.max()})")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"{path}: labels run from {labels.min()} to {labels.max()}, outside 0..{num_classes - 1}")
    return data.astype(np.uint8).reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _load_cifar(name: str, spec: dict, root: str | None) -> ImageData:
    folder_name, train_names, test_name, label_key, classes, mean, std, url = _CIFAR[name]
    names = (*train_names, test_name)
    candidates = []
    if root:
        base = Path(root).expanduser()
        candidates = [base / folder_name, base]
    # the conventional sub-folder if it exists at all, else the root itself if it holds any batch file
    folder = next((c for c in candidates[:1] if c.is_dir()), None) or next(
        (c for c in candidates[1:] if any((c / n).is_file() for n in names)), None)
    if folder is None and root and may_download(spec):
        fetch(name, Path(root).expanduser())
        folder = candidates[0]
    if folder is None:
        raise DatasetError(
            f"dataset {name}: no {folder_name}/ (the pickled 'python version': {', '.join(names)}) in "
            f"{_looked_in(candidates)}; extract {url} into DIR and pass --data-root DIR{why_not_downloaded(name, spec)}"
        )
    present = [n for n in train_names if (folder / n).is_file()]
    if train_names[0] not in present:  # data_batch_1 (CIFAR-10) or train (CIFAR-100) is required
        raise DatasetError(f"{folder / train_names[0]}: CIFAR batch file is missing (expected {', '.join(names)} "
                           f"in {folder}); re-extract {url}")
    if not (folder / test_name).is_file():
        raise DatasetError(f"{folder / test_name}: CIFAR batch file is missing (expected {', '.join(names)} "
                           f"in {folder}); re-extract {url}")
    parts = [read_cifar_batch(folder / n, label_key, classes) for n in present]
    train = (np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]))
    test = read_cifar_batch(folder / test_name, label_key, classes)
    return _image_data(name, train, test, classes, mean, std)


@DATASETS.register("cifar10")
def cifar10(spec: dict, root: str | None) -> ImageData:
    """CIFAR-10 from torchvision's cifar-10-batches-py/ (data_batch_1..5, test_batch) in the data root."""
    return _load_cifar("cifar10", spec, root)


@DATASETS.register("cifar100")
def cifar100(spec: dict, root: str | None) -> ImageData:
    """CIFAR-100 (fine labels) from torchvision's cifar-100-python/ (train, test) in the data root."""
    return _load_cifar("cifar100", spec, root)
