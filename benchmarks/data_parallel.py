"""Images/s of one cell on 1 and on 2 data-parallel gloo workers (torch.distributed, 1 CPU thread each), on an
image folder of JPEG files whose decoding dominates the step: the input split's speed-up, side by side in one run.

    python benchmarks/data_parallel.py [--epochs N] [--per-class N] [--side PX] [--ray]

Each worker loads, decodes and augments only its rows of every global batch, so 2 workers should approach 2× the
images/s of 1 (before the split, each decoded the whole global batch: at most 1×).  ``--ray`` adds the wall time
of the same cell through `harness run` (Ray Train, 2 workers) against the in-process trainer: Ray's overhead.
These machines vary by ±15% between runs; compare figures of one run."""
import harness  # noqa: F401  (the torchvision shim, first)
import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from harness.suite.schema import load_suite
from harness.training.engine import Runtime, Trainer
from harness.training.launch import local_ranks
from harness.training.parallel import Replicas


def write_folder(root: Path, classes: int, per_class: int, side: int) -> None:
    """root/{train,test}/<class>/<i>.jpg: smooth noise (it compresses like a photograph more than white noise)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", max(per_class // 4, 2))):
        for c in range(classes):
            folder = root / split / f"class{c:02d}"
            folder.mkdir(parents=True)
            for i in range(n):
                small = rng.integers(0, 256, (side // 16, side // 16, 3), dtype=np.uint8)
                Image.fromarray(small).resize((side, side), Image.BILINEAR).save(folder / f"{i}.jpg", quality=90)


def suite_dict(root: Path, epochs: int, workers: int) -> dict:
    return {"name": "dp_bench", "dataset": {"name": "imagefolder", "root": str(root)},
            "groups": [["cifar_resnet8", "cifar_resnet8"]], "methods": ["dml"], "seeds": [0],
            "recipe": {"epochs": epochs, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
                       "augment": {"random_resized_crop": True, "train_size": 32, "flip": True, "crop_padding": 0,
                                   "test_resize": 36, "test_crop": 32}},
            "resources": {"workers": workers, "cpu_per_worker": 1} if workers > 1 else {"cpu": 1}}


def _rank(rank: int, world: int, cell, out: str) -> None:
    torch.set_num_threads(1)
    trainer = Trainer(cell, Runtime(device="cpu"), Replicas(rank=rank, world=world))
    trainer.run()
    if rank == 0:
        torch.save(trainer.history, out)


def median_rate(history: list[dict]) -> float:
    rates = sorted(h["images_per_s"] for h in history[1:] or history)  # the first epoch warms the page cache
    return rates[len(rates) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=64)
    parser.add_argument("--side", type=int, default=384, help="side of the JPEG files, in pixels")
    parser.add_argument("--ray", action="store_true", help="also time `harness run` with Ray Train, 2 workers")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    write_folder(folder / "data", args.classes, args.per_class, args.side)
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump(suite_dict(folder / "data", args.epochs, 1)))
    cell = load_suite(path).cells[0]

    torch.set_num_threads(1)
    start = time.perf_counter()
    one = Trainer(cell, Runtime(device="cpu"))
    one.run()
    one_s = time.perf_counter() - start
    start = time.perf_counter()
    assert local_ranks(_rank, cell, str(folder / "two.pt")) == [0, 0]
    two_s = time.perf_counter() - start
    two = torch.load(folder / "two.pt")
    rate_one, rate_two = median_rate(one.history), median_rate(two)

    print(f"DML ResNet-8 pair, batch 64, {args.classes * args.per_class} JPEG files of {args.side}×{args.side} "
          f"px (random-resized crop to 32), {args.epochs} epochs, CPU")
    print("| setting | images/s (median epoch after the first) | top-1 net1 | wall time |")
    print("|---|---|---|---|")
    print(f"| 1 worker × 1 thread | {rate_one:.0f} | {one.history[-1]['top1/net1']:.1f} | {one_s:.1f} s |")
    print(f"| 2 gloo workers × 1 thread | {rate_two:.0f} (×{rate_two / rate_one:.2f}) | {two[-1]['top1/net1']:.1f} "
          f"| {two_s:.1f} s |")
    if args.ray:
        path.write_text(yaml.safe_dump(suite_dict(folder / "data", args.epochs, 2)))
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "harness.cli", "run", str(path), "--results", str(folder / "r"),
                        "--reports", str(folder / "rep"), "--no-dashboard", "--num-cpus", "3"],
                       check=True, capture_output=True)
        ray_s = time.perf_counter() - start
        print(f"| `harness run`, Ray Train 2 workers (Ray start included) | | | {ray_s:.1f} s |")


if __name__ == "__main__":
    main()
