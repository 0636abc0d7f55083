"""What is known of each dataset without reading it: training images, input shape and classes.

The suite index (GPU-hours) and the memory check of ``harness validate`` need them for datasets that are not on
this machine; the embedded subset's figures are its own (per class × 10, 28×28 grey)."""
from __future__ import annotations

# name: (training images, (channels, height, width), classes)
DATASET_FACTS = {
    "cifar10": (50_000, (3, 32, 32), 10), "cifar100": (50_000, (3, 32, 32), 100),
    "cinic10": (90_000, (3, 32, 32), 10), "tiny_imagenet": (100_000, (3, 64, 64), 200),
    "imagenet": (1_281_167, (3, 224, 224), 1000), "fashion_mnist": (60_000, (1, 28, 28), 10),
    "fashion_mnist_mini": (3_000, (1, 28, 28), 10), "synthetic_cifar100": (5_000, (3, 32, 32), 100),
}

# images in the smallest training class, where classes differ (ImageNet's range from 732 to 1,300)
FEWEST_PER_CLASS = {"imagenet": 732}


def train_images(dataset: dict) -> int:
    """Training images of a cell's dataset entry (its ``train_per_class`` subset where it has one)."""
    n, _, classes = DATASET_FACTS[dataset["name"]]
    per_class = dataset.get("train_per_class")
    return min(n, per_class * classes) if per_class else n


def network_input(dataset: dict, recipe: dict) -> tuple[tuple[int, int, int], int] | None:
    """(channels, height, width) the networks see in training, and the number of classes; None where the dataset
    is not known here (an ``imagefolder``).  A recipe's ``augment.train_size`` (an ImageNet crop) sets the side."""
    if dataset["name"] not in DATASET_FACTS:
        return None
    _, (chans, h, w), classes = DATASET_FACTS[dataset["name"]]
    side = (recipe.get("augment") or {}).get("train_size")
    return ((chans, side, side) if side else (chans, h, w)), classes


def fewest_per_class(dataset: dict) -> int:
    """Training images of the smallest class of a cell's dataset entry (after its ``train_per_class`` subset)."""
    n, _, classes = DATASET_FACTS[dataset["name"]]
    fewest = FEWEST_PER_CLASS.get(dataset["name"], n // classes)
    return min(fewest, dataset["train_per_class"]) if dataset.get("train_per_class") else fewest
