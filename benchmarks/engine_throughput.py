"""Training throughput of the engine against a plain PyTorch loop written the way the papers' code is.

Also measures the engine's two input paths: the standard one (DataLoader + per-image torchvision transforms)
and the fast one (the dataset held as one tensor, crop and flip done on whole batches).

Both train a DML pair of CIFAR ResNet-32 (CE + KL, one SGD step per batch) on the same synthetic
CIFAR-100-shaped data, with the same batch size and number of steps.  The plain loop uses a map-style
dataset of PIL images, torchvision transforms (RandomCrop(32, 4), RandomHorizontalFlip, ToTensor,
Normalize) and a DataLoader, as RepDistiller / DML re-implementations do.  Prints images/s and the ratio.

    python benchmarks/engine_throughput.py [--steps 30] [--batch 64] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import harness  # noqa: F401  (torchvision shim)
import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

import harness.models  # noqa: F401
from harness.config.cell import Cell
from harness.data.datasets import load_dataset
from harness.training.engine import Runtime, Trainer

MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
MODEL = "cifar_resnet32"


class PilDataset(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def plain_loop(steps: int, batch: int) -> float:
    data = load_dataset({"name": "synthetic_cifar100", "train_per_class": (steps + 2) * batch // 100 + 1})
    transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    dataset = PilDataset(data.train_x.permute(0, 2, 3, 1).numpy(), data.train_y.numpy(), transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0)
    torch.manual_seed(0)
    nets = [timm.create_model(MODEL, num_classes=100) for _ in range(2)]
    params = [p for n in nets for p in n.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    for n in nets:
        n.train()
    done, start = 0, None
    for i, (x, y) in enumerate(loader):
        if i == 2:
            start = time.perf_counter()  # two warm-up steps
        if i == steps + 2:
            break
        z1, z2 = nets[0](x), nets[1](x)
        loss = (F.cross_entropy(z1, y) + F.kl_div(F.log_softmax(z1, 1), F.softmax(z2.detach(), 1), reduction="batchmean")
                + F.cross_entropy(z2, y) + F.kl_div(F.log_softmax(z2, 1), F.softmax(z1.detach(), 1), reduction="batchmean"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        done += len(y) if i >= 2 else 0
    return done / (time.perf_counter() - start)


def engine(steps: int, batch: int, channels_last: bool, pipeline: str = "fast") -> float:
    recipe = {"epochs": 2, "batch_size": batch, "optimizer": {"name": "sgd", "lr": 0.05},
              "schedule": {"name": "constant"}, "augment": {"crop_padding": 4, "flip": True}}
    per_class = steps * batch // 100
    cell = Cell(method="dml", hparams={}, group=(MODEL, MODEL),
                dataset={"name": "synthetic_cifar100", "train_per_class": per_class, "test_per_class": 1,
                         "pipeline": pipeline},
                recipe=recipe, seed=0)
    trainer = Trainer(cell, Runtime(device="cpu", channels_last=channels_last))
    warm = Trainer(cell, Runtime(device="cpu", channels_last=channels_last))
    for step, batch_ in enumerate(warm.train_batches.epoch(0)):  # warm-up, like the plain loop's first two steps
        warm.method.train_step(batch_, None)
        if step == 1:
            break
    return trainer.train_epoch()["images_per_s"]


def main() -> None:
    global MODEL
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=MODEL, help="any CIFAR model name (default: %(default)s)")
    args = parser.parse_args()
    MODEL = args.model
    torch.set_num_threads(args.threads)
    print(f"DML pair of {MODEL}, batch {args.batch}, {args.steps} steps, {args.threads} threads, "
          f"torch {torch.__version__}")
    plain = plain_loop(args.steps, args.batch)
    print(f"plain loop (DataLoader + torchvision transforms): {plain:8.1f} images/s")
    for pipeline, channels_last in (("standard", True), ("fast", False), ("fast", True)):
        ours = engine(args.steps, args.batch, channels_last, pipeline)
        print(f"engine ({pipeline} path, channels_last={channels_last!s:5}): {ours:8.1f} images/s   "
              f"ratio to the plain loop {ours / plain:.2f}")


if __name__ == "__main__":
    main()
