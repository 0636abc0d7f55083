"""The standard input pipeline: a DataLoader over images decoded one by one and augmented with torchvision
transforms, as the papers' code does.  It serves every dataset (ImageNet-sized folders included) and every
augmentation; the fast path (``harness.data.batches``) serves in-memory CIFAR-sized data with the augmentations it
can do in whole batches.  Both give :class:`~harness.data.batches.Batch` objects and draw all randomness from
(seed, epoch), so a resumed run sees the same order and the same augmentations.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from harness.config.recipe import AugmentSpec
from harness.data.batches import Batch, epoch_generator

# AlexNet's PCA lighting noise: eigenvalues and eigenvectors of ImageNet's RGB covariance (Krizhevsky 2012).
_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])

FAST_AUGMENTATIONS = ("crop_padding", "flip", "cutout")


def fast_path_problems(augment: AugmentSpec) -> list[str]:
    """Augmentations set in ``augment`` that the fast, batched path cannot do."""
    defaults = AugmentSpec()
    return [k for k in AugmentSpec.model_fields if k not in FAST_AUGMENTATIONS and getattr(augment, k) != getattr(defaults, k)]


class Lighting:
    """Add PCA-based colour noise with strength ``alpha`` to a [0, 1] tensor image."""

    def __init__(self, alpha: float):
        self.alpha = alpha

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        weights = torch.randn(3) * self.alpha
        shift = _EIGVEC @ (weights * _EIGVAL)
        return image + shift.view(3, 1, 1) if image.shape[0] == 3 else image


class Cutout:
    """Zero a ``size`` × ``size`` square centred uniformly in the (normalised) image, clipped at its border
    (DeVries & Taylor 2017: applied after normalisation, so the hole is the dataset's mean colour)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _, h, w = image.shape
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        half = self.size // 2
        image = image.clone()
        image[:, max(cy - half, 0): cy - half + self.size, max(cx - half, 0): cx - half + self.size] = 0
        return image


def image_transforms(augment: AugmentSpec, mean, std, size: tuple[int, int], train: bool):
    """torchvision transforms for a PIL image, training or test, as ``augment`` says."""
    steps: list = []
    if train:
        if augment.random_resized_crop:
            steps.append(transforms.RandomResizedCrop(augment.train_size or size[0]))
        elif augment.crop_padding:
            steps.append(transforms.RandomCrop(size, padding=augment.crop_padding))
        if augment.flip:
            steps.append(transforms.RandomHorizontalFlip())
        if augment.color_jitter:
            steps.append(transforms.ColorJitter(augment.color_jitter, augment.color_jitter, augment.color_jitter))
    else:
        if augment.test_resize:
            steps.append(transforms.Resize(augment.test_resize))
        if augment.test_crop:
            steps.append(transforms.CenterCrop(augment.test_crop))
    steps.append(transforms.ToTensor())
    if train and augment.lighting:
        steps.append(Lighting(augment.lighting))
    steps.append(transforms.Normalize(mean, std))
    if train and augment.cutout:
        steps.append(Cutout(augment.cutout))
    return transforms.Compose(steps)


class ImageSet(torch.utils.data.Dataset):
    """Item i → (``views`` transformed copies of image i, its label, i).  Images come from a uint8 tensor
    (N, C, H, W) or from a list of file paths.  An item ``(i, seed)`` draws its augmentations from ``seed``, so
    that they do not depend on which DataLoader worker, or how many, decode it."""

    def __init__(self, images, labels, transform, views: int = 1):
        self.images, self.labels, self.transform, self.views = images, labels, transform, views

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        item = self.images[i]
        if isinstance(item, torch.Tensor):
            array = item.permute(1, 2, 0).numpy()
            return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
        with Image.open(item) as img:
            return img.convert("RGB")

    def __getitem__(self, item):
        i, seed = item if isinstance(item, tuple) else (item, None)
        if seed is not None:  # torchvision's and our transforms draw from torch's global CPU generator; the CPU's
            # only: torch.manual_seed would reseed CUDA too, whose state the loop does not restore in process
            torch.random.default_generator.manual_seed(seed)
        img = self.image(i)
        return tuple(self.transform(img) for _ in range(self.views)), int(self.labels[i]), i


class SeededOrder(torch.utils.data.Sampler):
    """The epoch's order of the images, each with its own augmentation seed, both from (seed, epoch); the
    sampler runs in the main process, so persistent workers see every epoch's draws."""

    def __init__(self, n: int, seed: int, shuffle: bool):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        generator = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(self.n, generator=generator) if self.shuffle else torch.arange(self.n)
        seeds = torch.randint(2**62, (self.n,), generator=generator)
        return iter(zip(order.tolist(), seeds.tolist()))


def _collate(items) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    views = [torch.stack([item[0][v] for item in items]) for v in range(len(items[0][0]))]
    return views, torch.tensor([item[1] for item in items]), torch.tensor([item[2] for item in items])


MAX_LOADER_WORKERS = 8


def loader_workers(cpus: int) -> int:
    """DataLoader workers of a trial with ``cpus`` CPUs: all but one (the training loop's), at most 8."""
    return max(0, min(int(cpus) - 1, MAX_LOADER_WORKERS))


class StandardBatches:
    """Shuffled training batches through a DataLoader; same interface as the fast path's TrainBatches.

    ``workers`` > 0 decode in that many persistent worker processes (kept across epochs), ``prefetch`` batches
    ahead each, into pinned memory where the device is a GPU; the batches are the same for any number of workers.
    """

    PREFETCH = 4  # batches each worker decodes ahead

    def __init__(self, dataset: ImageSet, batch_size: int, seed: int, device, channels_last: bool,
                 workers: int = 0):
        self.dataset, self.batch_size, self.seed, self.device, self.workers = dataset, batch_size, seed, device, workers
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.y = torch.as_tensor(np.asarray(dataset.labels))
        self._loaders: dict[bool, tuple[SeededOrder, torch.utils.data.DataLoader]] = {}

    def __len__(self) -> int:
        full, rest = divmod(len(self.dataset), self.batch_size)
        return full + (rest > 1)

    def _loader(self, shuffle: bool) -> tuple[SeededOrder, torch.utils.data.DataLoader]:
        if shuffle not in self._loaders:
            order = SeededOrder(len(self.dataset), self.seed, shuffle)
            loader = torch.utils.data.DataLoader(
                self.dataset, batch_size=self.batch_size, sampler=order, num_workers=self.workers,
                collate_fn=_collate, pin_memory=self.device.type == "cuda", persistent_workers=self.workers > 0,
                prefetch_factor=self.PREFETCH if self.workers else None,
            )
            self._loaders[shuffle] = order, loader
        return self._loaders[shuffle]

    def _to_device(self, views, y, index) -> Batch:
        views = [v.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format) for v in views]
        # every copy non-blocking: a blocking one waits for the device's queue (a full sync every step on CUDA)
        return Batch(views=views, y=y.to(self.device, non_blocking=True), index=index.to(self.device, non_blocking=True))

    def _batches(self, shuffle: bool, epoch: int) -> Iterator[tuple]:
        order, loader = self._loader(shuffle)
        order.set_epoch(epoch)
        state = torch.get_rng_state() if self.workers == 0 else None  # items reseed this process's generator
        try:
            yield from loader
        finally:
            if state is not None:
                torch.set_rng_state(state)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        for views, y, index in self._batches(True, epoch):
            if len(y) < 2:
                break  # a last batch of one image would break batch norm
            yield self._to_device(views, y, index)

    def evaluate(self) -> Iterator[Batch]:
        for views, y, index in self._batches(False, 0):
            yield self._to_device(views, y, index)
