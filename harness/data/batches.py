"""Mini-batches from in-memory uint8 tensors, augmented in whole batches on the training device.

Per-image Python transforms cost more than the small networks of CIFAR-sized tables on a CPU; here a batch
is cropped and flipped with a few tensor operations.  All randomness comes from a generator seeded by
(seed, epoch), so an epoch's order and augmentation are the same after a resume and on any device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F


@dataclass
class Batch:
    """One mini-batch: a normalised view per peer (or one shared view), labels and dataset indices.  On a
    data-parallel worker it holds this worker's rows of a global batch of ``total`` images (0: the whole batch)."""

    views: list[torch.Tensor]
    y: torch.Tensor
    index: torch.Tensor
    total: int = 0

    @property
    def global_size(self) -> int:
        """Images in the global batch this batch belongs to (every pass of every worker)."""
        return self.total or len(self)

    @property
    def x(self) -> torch.Tensor:
        return self.views[0]

    def view(self, peer: int) -> torch.Tensor:
        """The input of peer ``peer``: its own view when each peer has one, else the shared view."""
        return self.views[peer % len(self.views)]

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Shard:
    """Which rows of every global batch this process trains on: a global batch of ``n`` images is cut into
    ``world × accumulation`` contiguous parts whose sizes differ by one image at most (``torch.tensor_split``'s
    cut); worker ``rank`` takes parts ``rank·a … rank·a + a − 1``, one pass each.  The input pipelines load,
    decode and augment only these rows; a batch too small to give every part 2 images (batch norm) is trained by
    no worker."""

    rank: int = 0
    world: int = 1
    accumulation: int = 1

    @property
    def parts(self) -> int:
        return self.world * self.accumulation

    def trains(self, n: int) -> bool:
        """Whether a global batch of ``n`` images is trained (every part gets 2 images at least)."""
        return n >= 2 * self.parts if self.parts > 1 else n >= 2

    def part_sizes(self, n: int) -> list[int]:
        """Sizes of this worker's parts of a global batch of ``n`` images."""
        small, extra = divmod(n, self.parts)
        first = self.rank * self.accumulation
        return [small + (k < extra) for k in range(first, first + self.accumulation)]

    def rows(self, n: int) -> slice:
        """This worker's rows of a global batch of ``n`` images (the union of its parts, contiguous)."""
        small, extra = divmod(n, self.parts)
        first = self.rank * self.accumulation
        start = first * small + min(first, extra)
        return slice(start, start + sum(self.part_sizes(n)))

    def sizes_of_pass(self, n: int, k: int) -> list[int]:
        """Sizes of every worker's part in pass ``k`` of a global batch of ``n`` images, in rank order."""
        small, extra = divmod(n, self.parts)
        return [small + (r * self.accumulation + k < extra) for r in range(self.world)]

    def takes(self, b: int) -> bool:
        """Whether test batch ``b`` is this worker's (the test set's batches dealt out in turn)."""
        return b % self.world == self.rank


def balanced_split(labels: torch.Tensor, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held-out) indices: ``per_class`` images of every class drawn with ``seed``, the rest kept."""
    generator = torch.Generator().manual_seed(seed)
    held = []
    for c in torch.unique(labels.cpu()):
        members = torch.nonzero(labels.cpu() == c).flatten()
        if len(members) <= per_class:
            raise ValueError(f"class {int(c)} has {len(members)} training images, cannot hold out {per_class}")
        held.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    held_out = torch.cat(held).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held_out] = False
    return torch.nonzero(mask).flatten(), held_out


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def draw_crop_flip(n: int, padding: int, flip: bool, generator: torch.Generator) -> list[torch.Tensor]:
    """The random numbers of :func:`random_crop_flip` for ``n`` images: row and column offsets, flips."""
    draws = []
    if padding:
        draws += [torch.randint(0, 2 * padding + 1, (n,), generator=generator),
                  torch.randint(0, 2 * padding + 1, (n,), generator=generator)]
    if flip:
        draws.append((torch.rand(n, generator=generator) < 0.5).long())
    return draws


def apply_crop_flip(images: torch.Tensor, padding: int, flip: bool, draws: list[torch.Tensor]) -> torch.Tensor:
    """Zero-pad by ``padding``, crop the original size at the drawn offsets, flip the drawn images."""
    n, c, h, w = images.shape
    out = images
    draws = list(draws)
    if padding:
        dy, dx = draws.pop(0), draws.pop(0)
        padded = F.pad(images, (padding, padding, padding, padding))
        rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
        batch = torch.arange(n, device=images.device)[:, None, None, None]
        chans = torch.arange(c, device=images.device)[None, :, None, None]
        out = padded[batch, chans, rows, cols]
    if flip:
        flipped = draws.pop(0).bool()
        out = torch.where(flipped[:, None, None, None], out.flip(3), out)
    return out


def random_crop_flip(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding``, take a random crop of the original size, flip half of the images."""
    draws = [d.to(images.device) for d in draw_crop_flip(len(images), padding, flip, generator)]
    return apply_crop_flip(images, padding, flip, draws)


def draw_cutout(n: int, h: int, w: int, generator: torch.Generator) -> list[torch.Tensor]:
    """The random numbers of :func:`cutout`: each square's centre."""
    return [torch.randint(0, h, (n, 1), generator=generator), torch.randint(0, w, (n, 1), generator=generator)]


def apply_cutout(images: torch.Tensor, size: int, draws: list[torch.Tensor]) -> torch.Tensor:
    _, _, h, w = images.shape
    cy, cx = draws[0] - size // 2, draws[1] - size // 2
    rows, cols = torch.arange(h, device=images.device), torch.arange(w, device=images.device)
    in_rows = (rows >= cy) & (rows < cy + size)
    in_cols = (cols >= cx) & (cols < cx + size)
    return images.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0)


def cutout(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero a ``size``-sided square per image, centred uniformly in it and clipped at its border."""
    n, _, h, w = images.shape
    return apply_cutout(images, size, [d.to(images.device) for d in draw_cutout(n, h, w, generator)])


def to_device_once(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Integer CPU tensors moved to ``device`` in one transfer, from pinned memory on a GPU, without a host sync."""
    if device.type == "cpu" or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    moved = flat.pin_memory().to(device, non_blocking=True)
    out, start = [], 0
    for t in tensors:
        out.append(moved[start: start + t.numel()].view(t.shape))
        start += t.numel()
    return out


class Normalize:
    """uint8 images → float, scaled to [0, 1], standardised per channel, in the chosen memory format."""

    def __init__(self, mean, std, device, channels_last: bool):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = (images.float() - self.mean) / self.std
        return out.contiguous(memory_format=self.memory_format)


class TrainBatches:
    """Shuffled, augmented training batches; ``views`` independent augmentations of the same images."""

    def __init__(self, x, y, batch_size: int, normalize: Normalize, seed: int,
                 crop_padding: int = 0, flip: bool = False, views: int = 1, cutout: int = 0, shard: Shard = Shard()):
        self.x, self.y = x, y
        self.batch_size, self.normalize, self.seed = batch_size, normalize, seed
        self.crop_padding, self.flip, self.views, self.cutout = crop_padding, flip, views, cutout
        self.shard = shard

    def __len__(self) -> int:
        full, rest = divmod(len(self.y), self.batch_size)
        return full + (rest > 1)  # a last batch of one image would break batch norm: it is dropped

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The epoch's batches (this worker's rows of each).  Every random number of the epoch is drawn first, on
        the CPU, for whole global batches in the order they use them, so that any number of workers sees the same
        draws; the rows of this worker reach the device in one transfer: augmenting a batch on a GPU then never
        waits for a copy from the host."""
        generator = epoch_generator(self.seed, epoch)
        order = torch.randperm(len(self.y), generator=generator)
        _, _, h, w = self.x.shape
        plan = []  # per batch: its size, its indices, then per view the crop/flip draws and the cutout draws
        for start in range(0, len(order), self.batch_size):
            index = order[start: start + self.batch_size]
            if len(index) < 2:
                break
            views = []
            for _ in range(self.views):
                crop = draw_crop_flip(len(index), self.crop_padding, self.flip, generator)
                views.append((crop, draw_cutout(len(index), h, w, generator) if self.cutout else []))
            mine = self.shard.rows(len(index))
            plan.append((len(index), index[mine], [([d[mine] for d in crop], [d[mine] for d in cut])
                                                   for crop, cut in views]))
        flat = [t for _, index, views in plan for t in [index] + [d for crop, cut in views for d in crop + cut]]
        moved = iter(to_device_once(flat, self.x.device))
        for n, index, views in plan:
            device_index = next(moved)
            raw = self.x[device_index]
            out = []
            for crop, cut in views:
                view = self.normalize(apply_crop_flip(raw, self.crop_padding, self.flip, [next(moved) for _ in crop]))
                out.append(apply_cutout(view, self.cutout, [next(moved) for _ in cut]) if cut else view)
            yield Batch(views=out, y=self.y[device_index], index=device_index, total=n)


def eval_batches(x, y, batch_size: int, normalize: Normalize, shard: Shard = Shard()) -> Iterator[Batch]:
    """The test batches in order, this worker's of them (every ``world``-th)."""
    for b, start in enumerate(range(0, len(y), batch_size)):
        if not shard.takes(b):
            continue
        index = torch.arange(start, min(start + batch_size, len(y)), device=x.device)
        yield Batch(views=[normalize(x[index])], y=y[index], index=index)
