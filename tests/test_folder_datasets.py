"""Folder datasets (ImageNet layout, any class-folder tree) through the standard pipeline, end to end."""
import numpy as np
import pytest
import torch
from PIL import Image

from harness.config.cell import Cell
from harness.data.datasets import DatasetError, load_dataset
from harness.training.engine import Trainer
from tests.helpers import TINY_RECIPE


def write_tree(base, split, classes, per_class, size=(20, 24), fmt="JPEG"):
    rng = np.random.default_rng(0)
    for c in classes:
        (base / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            array = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(array).save(base / split / c / f"{c}_{i}.{fmt.lower()}", fmt)


def test_imagenet_layout(tmp_path):
    write_tree(tmp_path / "imagenet", "train", ["n02", "n01"], 3)
    write_tree(tmp_path / "imagenet", "val", ["n02", "n01"], 2)
    data = load_dataset({"name": "imagenet", "train_per_class": 2}, str(tmp_path))
    assert not data.in_memory and data.num_classes == 2 and data.in_chans == 3
    assert len(data.train_x) == 4 and data.train_y.tolist() == [0, 0, 1, 1]  # n01 sorts first
    assert all("/imagenet/train/n01/" in p for p in data.train_x[:2])
    assert len(data.test_x) == 4


def test_missing_imagenet_is_one_line(tmp_path):
    with pytest.raises(DatasetError) as info:
        load_dataset({"name": "imagenet"}, str(tmp_path))
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value) and "{train,val}" in str(info.value)


def test_test_split_must_have_the_training_classes(tmp_path):
    write_tree(tmp_path, "train", ["a", "b"], 1)
    write_tree(tmp_path, "test", ["a", "c"], 1)
    with pytest.raises(DatasetError, match="differ from the training split"):
        load_dataset({"name": "imagefolder", "root": str(tmp_path)})


def test_imagefolder_trains_through_the_standard_pipeline(tmp_path):
    write_tree(tmp_path, "train", ["cat", "dog", "emu"], 6, fmt="PNG")
    write_tree(tmp_path, "val", ["cat", "dog", "emu"], 2, fmt="PNG")
    recipe = {**TINY_RECIPE, "batch_size": 6,
              "augment": {"random_resized_crop": True, "train_size": 16, "crop_padding": 0, "flip": True,
                          "color_jitter": 0.4, "lighting": 0.1, "test_resize": 18, "test_crop": 16}}
    cell = Cell(method="dml", hparams={}, group=("cifar_resnet8", "cifar_resnet8"),
                dataset={"name": "imagefolder", "root": str(tmp_path), "pipeline": "auto"}, recipe=recipe, seed=0)
    trainer = Trainer(cell)
    assert trainer.inputs.pipeline == "standard" and trainer.inputs.image_size == (16, 16)
    batch = next(iter(trainer.train_batches.epoch(0)))
    assert batch.x.shape == (6, 3, 16, 16)
    trainer.run()
    last = trainer.history[-1]
    assert 0 <= last["top1/ens"] <= 100 and last["epoch"] == 2
    again = Trainer(cell)
    again.run()
    assert torch.equal(torch.cat([p.flatten() for p in trainer.method.modules.parameters()]),
                       torch.cat([p.flatten() for p in again.method.modules.parameters()]))


def test_fast_pipeline_refuses_what_it_cannot_do(tmp_path):
    recipe = {**TINY_RECIPE, "augment": {"color_jitter": 0.4}}
    cell = Cell(method="ind", hparams={}, group=("cifar_resnet8",),
                dataset={"name": "fashion_mnist_mini", "train_per_class": 2, "test_per_class": 1, "pipeline": "fast"},
                recipe=recipe, seed=0)
    with pytest.raises(DatasetError, match="cannot do color_jitter"):
        Trainer(cell)
    auto = Cell(**{**cell.to_dict(), "group": ("cifar_resnet8",),
                   "dataset": {**cell.dataset, "pipeline": "auto"}})
    assert Trainer(auto).inputs.pipeline == "standard"


def test_a_stated_image_size_is_honoured_and_train_and_test_images_reach_the_network_alike(tmp_path):
    """A folder of 96 × 96 JPEGs under a recipe of 32-pixel images with no random-resized crop: each image is
    resized whole to 32 × 32 for training (then padded and cropped) and for testing; before, training saw 96-pixel
    images (or 32-pixel patches of them) and the test a 32-pixel centre crop."""
    from torchvision import transforms

    write_tree(tmp_path, "train", ["a", "b"], 4, size=(96, 96))
    write_tree(tmp_path, "val", ["a", "b"], 2, size=(96, 96))
    recipe = {**TINY_RECIPE, "batch_size": 4, "augment": {"crop_padding": 0, "flip": False, "train_size": 32,
                                                          "test_crop": 32}}
    cell = Cell(method="ind", hparams={}, group=("cifar_resnet8",),
                dataset={"name": "imagefolder", "root": str(tmp_path), "pipeline": "standard"}, recipe=recipe, seed=0)
    trainer = Trainer(cell)
    train = next(iter(trainer.train_batches.epoch(0)))
    test = next(iter(trainer.inputs.test()))
    assert train.x.shape[1:] == test.x.shape[1:] == (3, 32, 32)
    first = sorted((tmp_path / "val" / "a").iterdir())[0]
    whole = transforms.PILToTensor()(Image.open(first).convert("RGB").resize((32, 32), Image.BILINEAR)).float()
    crop = transforms.PILToTensor()(transforms.CenterCrop(32)(Image.open(first).convert("RGB"))).float()
    mean = torch.tensor(trainer.data.mean).view(3, 1, 1) * 255
    std = torch.tensor(trainer.data.std).view(3, 1, 1) * 255
    shown = test.x[0].float() * std + mean  # back to pixel values
    assert (shown - whole).abs().max() < 1.0 and (shown - crop).abs().mean() > 10
