"""Datasets by name: :func:`load_dataset` and what it does to every dataset (a class-balanced subset, label noise).
The loaders live in one registry (:data:`harness.data.image_data.DATASETS`), one module per on-disk format under
:mod:`harness.data.formats` (IDX files, pickled CIFAR batches, folders of image files, synthetic data).  A loader
returns whole uint8 tensors (or lists of image files): the engine augments on the training device."""
from __future__ import annotations

import numpy as np
import torch

from harness.data import downloads
from harness.data.formats import cifar, folders, idx, synthetic  # noqa: F401  (each registers its datasets)
from harness.data.image_data import DATASETS, DatasetError, ImageData  # noqa: F401  (the names callers use)


def load_dataset(spec: dict, data_root: str | None = None) -> ImageData:
    """Load ``spec['name']``, then keep the first ``train_per_class`` / ``test_per_class`` images per class."""
    data = DATASETS.get(spec["name"])(spec, str(downloads.data_root(spec.get("root") or data_root)))
    for split, key in (("train", "train_per_class"), ("test", "test_per_class")):
        if spec.get(key):
            x, y = balanced_subset(getattr(data, f"{split}_x"), getattr(data, f"{split}_y"), spec[key])
            setattr(data, f"{split}_x", x)
            setattr(data, f"{split}_y", y)
    if spec.get("label_noise"):
        data.train_y = symmetric_label_noise(data.train_y, spec["label_noise"], data.num_classes)
    return data


LABEL_NOISE_SEED = 0  # one draw of the noisy labels for every cell and seed: the seeds compare on the same data


def symmetric_label_noise(y, rate: float, num_classes: int, seed: int = LABEL_NOISE_SEED):
    """Each label replaced, with probability ``rate``, by a class drawn uniformly from all classes (so it stays
    right with probability 1/C): the "symmetric" noise of the noisy-label literature.  Returns new labels of the
    same type; the draw depends only on ``seed`` and the number of labels."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).clone()
    flip = torch.rand(len(labels), generator=generator) < rate
    labels[flip] = torch.randint(0, num_classes, (int(flip.sum()),), generator=generator).to(labels.dtype)
    return labels if isinstance(y, torch.Tensor) else labels.numpy()


def balanced_subset(x, y, per_class: int):
    """The first ``per_class`` items of every class, in their original order."""
    labels = np.asarray(y)
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
    keep.sort()
    if isinstance(x, list):  # files of a folder dataset
        return [x[i] for i in keep], y[torch.from_numpy(keep)]
    if isinstance(x, torch.Tensor):
        index = torch.from_numpy(keep)
        return x[index], y[index]
    return x[keep], y[keep]
