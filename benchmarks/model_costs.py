"""Parameters, multiply-adds and inference time per image of every network of the paper tables, at its
dataset's resolution (AMLN Table 4 reports these three for its ImageNet networks).

    python benchmarks/model_costs.py [--batch 32] [--device cpu] [--only resnet]
"""
from __future__ import annotations

import argparse

import harness  # noqa: F401  (torchvision shim)
import timm
import torch
from tabulate import tabulate

from harness.costs.networks import flops, parameters, seconds_per_image
from harness.models.zoo import PAPER_MODELS, RESOLUTION


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", default="", help="substring of the model names to measure")
    args = parser.parse_args()
    rows = []
    for kind, classes in (("cifar", 100), ("imagenet", 1000)):
        for name in dict.fromkeys(PAPER_MODELS[kind].values()):
            if args.only not in name:
                continue
            model = timm.create_model(name, num_classes=classes)
            size = (3, *RESOLUTION[kind])
            ms = 1e3 * seconds_per_image(model, size, batch=args.batch, device=args.device)
            rows.append([name, "x".join(map(str, size)), f"{parameters(model) / 1e6:.2f}",
                         f"{flops(model.cpu(), size) / 2e9:.3f}", f"{ms:.3f}"])
    print(f"device {args.device}, batch {args.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(tabulate(rows, headers=["model", "input", "params (M)", "GMACs", "ms / image"]))


if __name__ == "__main__":
    main()
