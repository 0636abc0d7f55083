"""What a cell trained on, in a few numbers: split sizes per class and a checksum of the images.

A cell's hash says which dataset (its name, subset and pipeline), not which copy of it: the same suite on a
20-image toy layout and on the real CIFAR-10 has the same hashes.  The fingerprint tells them apart; it goes into
every record, and the run keys cells of different data apart (:mod:`harness.suite.binding`).  The checksum
reads the arrays of an in-memory dataset (CIFAR-100: 150 MB, a fraction of a second) and, for a dataset of image
files, their class folder and file names, not their bytes (ImageNet's 1.3M files would take minutes); where the
data lives (its root) does not enter it."""
from __future__ import annotations

import hashlib
from pathlib import PurePath

import numpy as np
import torch

from harness.data import downloads
from harness.data.datasets import DATASETS, DatasetError, ImageData, load_dataset
from harness.data.downloads import ARCHIVES, fetch


def fingerprint(data: ImageData) -> dict:
    """``{"checksum": 16 hex digits, "train": {"images", "per_class"}, "test": {...}}``; ``per_class`` is one
    number where every class has as many images, else the list by class index."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{data.name}:{data.num_classes}".encode())
    out: dict = {}
    for split in ("train", "test"):
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        labels = torch.as_tensor(y).to(torch.int64).numpy()
        digest.update(split.encode())
        digest.update(np.ascontiguousarray(labels).tobytes())
        if isinstance(x, torch.Tensor):
            digest.update(str(tuple(x.shape)).encode())
            digest.update(np.ascontiguousarray(x.numpy()).data)
        else:  # image files: <class folder>/<file name>, wherever the tree is mounted
            digest.update("\n".join("/".join(PurePath(p).parts[-2:]) for p in x).encode())
        counts = np.bincount(labels, minlength=data.num_classes).tolist()
        out[split] = {"images": len(labels), "per_class": counts[0] if len(set(counts)) == 1 else counts}
    return {"checksum": digest.hexdigest(), **out}


def describe(fp: dict) -> str:
    """``checksum 1a2b…, 50000 training images (500 per class)``."""
    per = fp["train"]["per_class"]
    spread = f"{per} per class" if isinstance(per, int) else f"{min(per)} to {max(per)} per class"
    return f"checksum {fp['checksum']}, {fp['train']['images']} training images ({spread})"


def data_check(names: list[str], data_root: str | None = None) -> list[tuple[str, bool, str]]:
    """``harness data check``: for each dataset (every registered one where ``names`` is empty), whether it loads
    from here (nothing is downloaded), and either its fingerprint (images, classes, checksum) or the one-line reason
    it does not."""
    return [_check(name, data_root) for name in names or list(DATASETS)]


def data_get(names: list[str], data_root: str | None = None) -> list[tuple[str, bool, str]]:
    """``harness data get``: each dataset that is not here downloaded into the data root from its public archive
    (even with downloads off: this is the command that fetches), or unpacked from the archives that lie there (ImageNet),
    then checked as :func:`data_check` does."""
    out = []
    for name in names:
        found = _check(name, data_root)
        if not found[1] and name in ARCHIVES:
            try:
                fetch(name, downloads.data_root(data_root))
            except DatasetError as e:
                out.append((name, False, str(e)))
                continue
            found = _check(name, data_root)
        elif not found[1]:  # what only its loader can make (ImageNet's folders from its archives)
            found = _check(name, data_root, unpack=True)
        out.append(found)
    return out


def _check(name: str, data_root: str | None, unpack: bool = False) -> tuple[str, bool, str]:
    DATASETS.get(name)  # an unknown name: one line with the valid ones
    try:
        data = load_dataset({"name": name, "download": None if unpack else downloads.CHECK}, data_root)
    except DatasetError as e:
        return name, False, str(e)
    where = downloads.data_root(data_root)
    return name, True, (f"{len(data.train_y)} training and {len(data.test_y)} test images, {data.num_classes} "
                        f"classes; {describe(fingerprint(data))} (data root {where})")
