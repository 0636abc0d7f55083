"""Images/s of the standard input path alone (JPEG files decoded and augmented as the ImageNet recipes do:
RandomResizedCrop 224, flip, lighting) with 0, 1, 2, ... DataLoader workers, beside the images/s a training step
of the networks consumes on this machine, in one run.

    python benchmarks/input_pipeline.py [--images 512] [--side 256] [--workers 0,1,2] [--model resnet18]

The input keeps up where its rate is above the networks' need; on a GPU the need is that of `harness bench`.
"""
import harness  # noqa: F401  (the torchvision shim, first)
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

import harness.models  # noqa: F401
from harness.config.recipe import AugmentSpec
from harness.data.pipelines import ImageSet, StandardBatches, ImageTransform


def write_jpegs(folder: Path, n: int, side: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"{i:05d}.jpg"
        # smooth noise compresses like a photograph more than white noise does
        small = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((side, side), Image.BILINEAR).save(path, quality=90)
        paths.append(str(path))
    return paths


def input_rate(paths, workers: int, batch: int) -> float:
    spec = AugmentSpec(random_resized_crop=True, train_size=224, flip=True, lighting=0.1)
    tf = ImageTransform(spec, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (224, 224), train=True)
    batches = StandardBatches(ImageSet(paths, [0] * len(paths), tf), batch, seed=0, device=torch.device("cpu"),
                              channels_last=True, workers=workers)
    for _ in batches.epoch(0):  # starts the persistent workers, warms the page cache
        pass
    start, images = time.perf_counter(), 0
    for b in batches.epoch(1):
        images += len(b)
    return images / (time.perf_counter() - start)


def network_need(model: str, batch: int, steps: int) -> float:
    net = timm.create_model(model, num_classes=1000).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,))
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(Path(folder), args.images, args.side)
        rows = [(f"input, {w} worker(s)", input_rate(paths, int(w), args.batch)) for w in args.workers.split(",")]
    rows.append((f"{args.model} training step (CPU, {torch.get_num_threads()} threads)",
                 network_need(args.model, args.batch, args.steps)))
    base = rows[0][1]
    print(f"{'':48} {'img/s':>8} {'× 0 workers':>12}")
    for name, rate in rows:
        print(f"{name:48} {rate:8.1f} {rate / base:12.2f}")


if __name__ == "__main__":
    main()
