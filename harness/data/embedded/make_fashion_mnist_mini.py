"""Rebuild the embedded Fashion-MNIST subset from the full IDX files (run once; the output is committed).

    python -m harness.data.make_fashion_mnist_mini /usr/share/datasets/fashion-mnist

Keeps the first TRAIN_PER_CLASS training and TEST_PER_CLASS test images of each class, in file order,
so the subset is class-balanced and reproducible without a seed.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from harness.data.datasets import balanced_subset
from harness.data.formats.idx import read_idx_splits

TRAIN_PER_CLASS, TEST_PER_CLASS = 300, 200


def main(root: str) -> None:
    out = Path(__file__).with_name("fashion_mnist_mini.npz")
    train, test = read_idx_splits(Path(root))
    (xtr, ytr), (xte, yte) = balanced_subset(*train, TRAIN_PER_CLASS), balanced_subset(*test, TEST_PER_CLASS)
    np.savez_compressed(out, train_x=xtr, train_y=ytr, test_x=xte, test_y=yte)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {len(ytr)} train, {len(yte)} test images")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist")
