"""What a dataset is once loaded (:class:`ImageData`), the registry of loaders by name, and what the on-disk formats
(:mod:`harness.data.formats`) share: one-line errors, and decoding image files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from harness.registry import Registry


class DatasetError(RuntimeError):
    """A dataset that is missing or malformed; the message says where we looked and how to get it."""


@dataclass
class ImageData:
    """A dataset: uint8 images (N, C, H, W) held in memory, or lists of image files (ImageNet-sized data),
    with int64 labels.  File datasets are RGB; their network input size comes from the recipe."""

    name: str
    train_x: torch.Tensor | list[str]
    train_y: torch.Tensor
    test_x: torch.Tensor | list[str]
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    native_size: tuple[int, int] | None = None  # of file datasets, where all images share one size

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train_x, torch.Tensor)

    @property
    def in_chans(self) -> int:
        return self.train_x.shape[1] if self.in_memory else 3

    @property
    def image_size(self) -> tuple[int, int] | None:
        return tuple(self.train_x.shape[2:]) if self.in_memory else self.native_size


DatasetLoader = Callable[[dict, "str | None"], ImageData]
DATASETS: Registry[DatasetLoader] = Registry("dataset")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _looked_in(candidates: list[Path]) -> str:
    if not candidates:
        return "no folder (no data root given: pass --data-root DIR, set dataset.root or $HARNESS_DATA_ROOT)"
    return ", ".join(str(c) for c in candidates)


def _image_data(name: str, train, test, num_classes: int, mean, std) -> ImageData:
    (xtr, ytr), (xte, yte) = train, test
    return ImageData(
        name=name,
        train_x=torch.from_numpy(np.ascontiguousarray(xtr, dtype=np.uint8)),
        train_y=torch.from_numpy(np.asarray(ytr, dtype=np.int64)),
        test_x=torch.from_numpy(np.ascontiguousarray(xte, dtype=np.uint8)),
        test_y=torch.from_numpy(np.asarray(yte, dtype=np.int64)),
        num_classes=num_classes,
        mean=tuple(mean),
        std=tuple(std),
    )


def read_rgb_images(paths: list[Path], size: tuple[int, int]) -> np.ndarray:
    """Decode image files with PIL into one uint8 array (N, 3, H, W); greyscale or palette images become RGB."""
    from PIL import Image

    height, width = size
    out = np.empty((len(paths), 3, height, width), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
        except Exception as e:  # PIL raises OSError, ValueError, SyntaxError... for unreadable files
            raise DatasetError(f"{path}: PIL cannot open this image ({_one_line(e)})") from None
        if rgb.size != (width, height):
            raise DatasetError(f"{path}: image is {rgb.size[0]}x{rgb.size[1]} pixels, expected {width}x{height}")
        out[i] = np.asarray(rgb).transpose(2, 0, 1)
    return out
