"""How a cell's data reaches its networks: the fast batched path or the standard DataLoader path, the
held-out validation split, per-peer views and the test batches, behind one small interface."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from harness.config.recipe import Recipe
from harness.data.batches import Batch, Normalize, Shard, TrainBatches, balanced_split, eval_batches
from harness.data.datasets import DatasetError, ImageData
from harness.data.pipelines import ImageSet, ImageTransform, StandardBatches, fast_path_problems


@dataclass
class Inputs:
    train: TrainBatches | StandardBatches
    test: Callable[[], Iterator[Batch]]
    validation: Callable[[], Iterator[Batch]] | None
    num_train: int
    pipeline: str
    image_size: tuple[int, int]  # what the networks see


def choose_pipeline(requested: str, data: ImageData, recipe: Recipe) -> str:
    """'fast' where the data is in memory and every augmentation can be batched, else 'standard'."""
    problems = fast_path_problems(recipe.augment)
    if requested == "fast":
        if not data.in_memory:
            raise DatasetError(f"dataset {data.name}: pipeline 'fast' needs an in-memory dataset; use 'standard'")
        if problems:
            raise DatasetError(f"dataset {data.name}: pipeline 'fast' cannot do {', '.join(problems)}; "
                               "use pipeline 'standard' or 'auto'")
        return "fast"
    if requested == "standard" or problems or not data.in_memory:
        return "standard"
    return "fast"


def _take(items, index: torch.Tensor):
    return items[index] if isinstance(items, torch.Tensor) else [items[i] for i in index.tolist()]


def build_inputs(data: ImageData, recipe: Recipe, seed: int, requested: str, views: int, held_out_per_class: int,
                 device: torch.device, channels_last: bool, eval_batch_size: int, workers: int,
                 shard: Shard = Shard()) -> Inputs:
    """The cell's inputs; a data-parallel worker's (``shard``) load only its rows of each training batch and its
    share of the test batches (the validation split, which methods read whole, stays whole)."""
    pipeline = choose_pipeline(requested, data, recipe)
    train_x, train_y = data.train_x, data.train_y
    val_x = val_y = None
    if held_out_per_class:
        kept, val = balanced_split(torch.as_tensor(train_y), held_out_per_class, seed)
        val_x, val_y = _take(train_x, val), _take(train_y, val)
        train_x, train_y = _take(train_x, kept), _take(train_y, kept)
    augment = recipe.augment

    if pipeline == "fast":
        normalize = Normalize(data.mean, data.std, device, channels_last)
        train = TrainBatches(train_x.to(device), train_y.to(device), recipe.batch_size, normalize, seed=seed,
                             crop_padding=augment.crop_padding, flip=augment.flip, views=views, cutout=augment.cutout,
                             shard=shard)
        test_x, test_y = data.test_x.to(device), data.test_y.to(device)

        def test():
            return eval_batches(test_x, test_y, eval_batch_size, normalize, shard)

        validation = None
        if val_x is not None:
            vx, vy = val_x.to(device), val_y.to(device)

            def validation():
                return eval_batches(vx, vy, eval_batch_size, normalize)

        return Inputs(train, test, validation, len(train_y), pipeline, data.image_size)

    side = augment.train_size or augment.test_crop
    size = (side, side) if side else data.image_size
    if size is None:
        raise DatasetError(f"dataset {data.name}: its image files are not all of one size, so the recipe must set "
                           "augment.train_size and augment.test_crop (e.g. 224)")
    train_tf = ImageTransform(augment, data.mean, data.std, size, train=True)
    test_tf = ImageTransform(augment, data.mean, data.std, size, train=False)
    train = StandardBatches(ImageSet(train_x, train_y, train_tf, views), recipe.batch_size, seed, device,
                            channels_last, workers, shard)

    def loader_of(images, labels, shard: Shard = Shard()) -> Callable[[], Iterator[Batch]]:
        batches = StandardBatches(ImageSet(images, labels, test_tf), eval_batch_size, seed, device, channels_last,
                                  workers, shard)
        return batches.evaluate

    validation = loader_of(val_x, val_y) if val_x is not None else None
    return Inputs(train, loader_of(data.test_x, data.test_y, shard), validation, len(train_y), pipeline, size)
