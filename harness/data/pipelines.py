"""The standard input pipeline: a DataLoader over images decoded one by one and augmented with torchvision
transforms, as the papers' code does.  It serves every dataset (ImageNet-sized folders included) and every
augmentation; the fast path (``harness.data.batches``) serves in-memory CIFAR-sized data with the augmentations it
can do in whole batches.  Both give :class:`~harness.data.batches.Batch` objects and draw all randomness from
(seed, epoch), so a resumed run sees the same order and the same augmentations.  Images cross to the device as
uint8 and are normalised there; a data-parallel worker loads and decodes only its rows of each global batch
(:class:`~harness.data.batches.Shard`) and its share of the test batches.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from harness.config.recipe import AugmentSpec
from harness.data.batches import Batch, Shard, apply_cutout, epoch_generator

# AlexNet's PCA lighting noise: eigenvalues and eigenvectors of ImageNet's RGB covariance (Krizhevsky 2012).
_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])

FAST_AUGMENTATIONS = ("crop_padding", "flip", "cutout")


def fast_path_problems(augment: AugmentSpec) -> list[str]:
    """Augmentations set in ``augment`` that the fast, batched path cannot do."""
    defaults = AugmentSpec()
    return [k for k in AugmentSpec.model_fields if k not in FAST_AUGMENTATIONS and getattr(augment, k) != getattr(defaults, k)]


def lighting_shift(alpha: float) -> torch.Tensor:
    """AlexNet's PCA colour noise of strength ``alpha``: the RGB shift of one image (drawn from torch's global
    generator, as every per-image draw here)."""
    weights = torch.randn(3) * alpha
    return _EIGVEC @ (weights * _EIGVAL)


def cutout_centre(h: int, w: int) -> torch.Tensor:
    """The centre (row, column) of one image's Cutout square, uniform over the image."""
    return torch.stack([torch.randint(h, ()), torch.randint(w, ())])


class ToSize:
    """The whole image resized to ``size`` (h, w) where it is not that size already: the size a recipe states
    (``train_size``, else ``test_crop``) is what the network sees, even where no crop or resize of the recipe would
    get there (a folder of 384-pixel images under a 32-pixel recipe).  Deterministic; a no-op on images of that
    size."""

    def __init__(self, size: tuple[int, int]):
        self.size = (size[1], size[0])  # PIL's (width, height)

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.size == self.size else image.resize(self.size, Image.BILINEAR)


class ImageTransform:
    """One image's augmentation, cut where the data crosses to the device.  On the host: the PIL transforms (crop,
    resize, flip, colour jitter) give a uint8 tensor, then the per-image draws of the tensor steps are made in their
    order (the colour shift of AlexNet's lighting noise, the centre of a Cutout square).  On the device,
    :meth:`finish` makes a batch of them normalised float images: ``/255`` (torchvision's ``ToTensor``), plus the
    colour shift, minus the mean, over the std (``Normalize``), then the Cutout square zeroed (DeVries & Taylor
    2017: after normalisation, so the hole is the dataset's mean colour).  These are the per-image torchvision
    chain's operations in its order, so its numbers, with a quarter of the bytes crossing to the device."""

    def __init__(self, augment: AugmentSpec, mean, std, size: tuple[int, int], train: bool):
        steps: list = []
        if train:
            if augment.random_resized_crop:
                steps.append(transforms.RandomResizedCrop(augment.train_size or size[0]))
            else:
                steps.append(ToSize(size))
                if augment.crop_padding:
                    steps.append(transforms.RandomCrop(size, padding=augment.crop_padding))
            if augment.flip:
                steps.append(transforms.RandomHorizontalFlip())
            if augment.color_jitter:
                steps.append(transforms.ColorJitter(augment.color_jitter, augment.color_jitter, augment.color_jitter))
        else:
            if augment.test_resize:
                steps.append(transforms.Resize(augment.test_resize))  # an int: the shorter side; (h, w): exactly
            else:  # no resize stated: the test images reach the network at the training size, whole
                steps.append(ToSize(size))
            if augment.test_crop:
                steps.append(transforms.CenterCrop(augment.test_crop))
        self.pil = transforms.Compose([*steps, transforms.PILToTensor()])
        self.lighting = augment.lighting if train else 0.0
        self.cutout = augment.cutout if train else 0
        self.mean_std = torch.tensor([mean, std]).view(2, 1, -1, 1, 1)
        self._on_device: dict[torch.device, torch.Tensor] = {}  # the mean and std, copied once per device

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(uint8 image, its colour shift or None, its Cutout centre or None)."""
        pixels = self.pil(image)
        shift = lighting_shift(self.lighting) if self.lighting else None
        centre = cutout_centre(*pixels.shape[1:]) if self.cutout else None
        return pixels, shift, centre

    def finish(self, pixels: torch.Tensor, shifts: torch.Tensor | None, centres: torch.Tensor | None) -> torch.Tensor:
        """uint8 images (N, C, H, W) and their draws, on the device → normalised float images."""
        x = pixels.float().div_(255)
        if shifts is not None and x.shape[1] == 3:  # lighting noise shifts RGB colours; a grey image has none
            x = x + shifts.view(-1, 3, 1, 1)
        if x.device not in self._on_device:
            self._on_device[x.device] = self.mean_std.to(x.device, non_blocking=True)
        mean, std = self._on_device[x.device]
        x = x.sub_(mean).div_(std)
        if centres is not None:
            x = apply_cutout(x, self.cutout, [centres[:, :1], centres[:, 1:]])
        return x


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


def _stack(values: list) -> torch.Tensor | None:
    return None if values[0] is None else torch.stack(values)


def _collate(items) -> tuple[list[tuple], torch.Tensor, torch.Tensor]:
    """Items → per view (uint8 images, colour shifts or None, Cutout centres or None), labels, indices."""
    views = [tuple(_stack([item[0][v][k] for item in items]) for k in range(3)) for v in range(len(items[0][0]))]
    return views, torch.tensor([item[1] for item in items]), torch.tensor([item[2] for item in items])


class ShardOfBatches(torch.utils.data.Sampler):
    """A batch sampler: the epoch's order cut into global batches of ``batch_size``, and of each, the rows this
    worker trains on (training), or every ``world``-th batch whole (evaluation)."""

    def __init__(self, order: SeededOrder, batch_size: int, shard: Shard, train: bool):
        self.order, self.batch_size, self.shard, self.train = order, batch_size, shard, train

    def sizes(self) -> list[int]:
        """The global batches' sizes; a training epoch drops a last batch of one image (batch norm)."""
        full, rest = divmod(self.order.n, self.batch_size)
        sizes = [self.batch_size] * full + ([rest] if rest else [])
        return [n for n in sizes if n >= 2] if self.train else sizes

    def __iter__(self):
        pairs = list(self.order)
        for b, n in enumerate(self.sizes()):
            batch = pairs[b * self.batch_size: b * self.batch_size + n]
            if self.train and self.shard.trains(n):
                yield batch[self.shard.rows(n)]
            elif not self.train and self.shard.takes(b):
                yield batch

    def __len__(self) -> int:
        sizes = self.sizes()
        if self.train:
            return sum(self.shard.trains(n) for n in sizes)
        return sum(self.shard.takes(b) for b in range(len(sizes)))


MAX_LOADER_WORKERS = 8


def loader_workers(cpus: int) -> int:
    """DataLoader workers of a trial with ``cpus`` CPUs: all but one (the training loop's), at most 8."""
    return max(0, min(int(cpus) - 1, MAX_LOADER_WORKERS))


class StandardBatches:
    """Shuffled training batches through a DataLoader; same interface as the fast path's TrainBatches.

    ``workers`` > 0 decode in that many persistent worker processes (kept across epochs), ``prefetch`` batches
    ahead each, into pinned memory where the device is a GPU; the batches are the same for any number of workers.
    A data-parallel worker (``shard``) decodes only its rows of each global batch and its share of the test set.
    """

    PREFETCH = 4  # batches each worker decodes ahead

    def __init__(self, dataset: ImageSet, batch_size: int, seed: int, device, channels_last: bool,
                 workers: int = 0, shard: Shard = Shard()):
        self.dataset, self.batch_size, self.seed, self.device, self.workers = dataset, batch_size, seed, device, workers
        self.shard = shard
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.y = torch.as_tensor(np.asarray(dataset.labels))
        self._loaders: dict[bool, tuple[ShardOfBatches, torch.utils.data.DataLoader]] = {}

    def __len__(self) -> int:
        full, rest = divmod(len(self.dataset), self.batch_size)
        return full + (rest > 1)

    def _loader(self, train: bool) -> tuple[ShardOfBatches, torch.utils.data.DataLoader]:
        if train not in self._loaders:
            batches = ShardOfBatches(SeededOrder(len(self.dataset), self.seed, shuffle=train), self.batch_size,
                                     self.shard, train)
            loader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=batches, num_workers=self.workers,
                collate_fn=_collate, pin_memory=self.device.type == "cuda", persistent_workers=self.workers > 0,
                prefetch_factor=self.PREFETCH if self.workers else None,
            )
            self._loaders[train] = batches, loader
        return self._loaders[train]

    def _to_device(self, views, y, index, total: int = 0) -> Batch:
        # every copy non-blocking: a blocking one waits for the device's queue (a full sync every step on CUDA)
        views = [self.dataset.transform.finish(*(t.to(self.device, non_blocking=True) if t is not None else None
                                                  for t in view)).contiguous(memory_format=self.memory_format)
                 for view in views]
        return Batch(views=views, y=y.to(self.device, non_blocking=True),
                     index=index.to(self.device, non_blocking=True), total=total)

    def _batches(self, train: bool, epoch: int) -> Iterator[tuple]:
        batches, loader = self._loader(train)
        batches.order.set_epoch(epoch)
        state = torch.get_rng_state() if self.workers == 0 else None  # items reseed this process's generator
        try:
            yield from loader
        finally:
            if state is not None:
                torch.set_rng_state(state)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """This worker's rows of every global batch; a batch too small for every worker to train on is an empty
        one of its global size (every worker skips it alike, and the schedules still step)."""
        batches, _ = self._loader(True)
        loaded = self._batches(True, epoch)
        try:
            for n in batches.sizes():
                if self.shard.trains(n):
                    yield self._to_device(*next(loaded), total=n)
                else:
                    empty = torch.empty(0, dtype=torch.long)
                    yield Batch(views=[], y=empty, index=empty, total=n)
        finally:
            loaded.close()

    def evaluate(self) -> Iterator[Batch]:
        """This worker's test batches (every ``world``-th), whole."""
        for views, y, index in self._batches(False, 0):
            yield self._to_device(views, y, index)
