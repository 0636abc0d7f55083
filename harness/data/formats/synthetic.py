"""Synthetic data: random images of a known shape, for benchmarks (never a table)."""
from __future__ import annotations

import torch

from harness.data.image_data import DATASETS, ImageData

@DATASETS.register("synthetic_cifar100")
def synthetic_cifar100(spec: dict, root: str | None) -> ImageData:
    """Random 32x32 RGB images in 100 classes (50 train / 10 test per class): for benchmarks, not for tables."""
    generator = torch.Generator().manual_seed(0)
    train_n, test_n = 100 * (spec.get("train_per_class") or 50), 100 * (spec.get("test_per_class") or 10)
    images = torch.randint(0, 256, (train_n + test_n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.arange(train_n + test_n) % 100
    return ImageData(name="synthetic_cifar100", train_x=images[:train_n], train_y=labels[:train_n],
                     test_x=images[train_n:], test_y=labels[train_n:], num_classes=100,
                     mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762))
