"""Images/s of one cell trained in one process, on 2 data-parallel gloo workers (torch.distributed, CPU), and the
overhead of Ray Train (a `harness run` of the same cell on 2 workers) against the in-process trainer.

    python benchmarks/data_parallel.py [--epochs N] [--per-class N]

Figures of one run side by side (these machines vary by ±15% between runs).  On 2 cores, 2 workers of 1 thread
each are expected to be no faster than 1 process of 2 threads: the point is the overhead, not a speed-up."""
import harness  # noqa: F401  (the torchvision shim, first)
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from harness.suite.schema import load_suite
from harness.training.engine import Runtime, Trainer
from harness.training.parallel import Replicas


def suite_dict(epochs: int, per_class: int, workers: int) -> dict:
    return {"name": "dp_bench", "dataset": {"name": "synthetic_cifar100", "train_per_class": per_class,
                                            "test_per_class": 5},
            "groups": [["cifar_resnet8", "cifar_resnet8"]], "methods": ["dml"], "seeds": [0],
            "recipe": {"epochs": epochs, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
                       "augment": {"crop_padding": 4, "flip": True}},
            "resources": {"workers": workers, "cpu_per_worker": 1} if workers > 1 else {"cpu": 2}}


def _rank(rank, world, port, cell, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    trainer = Trainer(cell, Runtime(device="cpu"), Replicas(rank=rank, world=world))
    trainer.run()
    if rank == 0:
        torch.save(trainer.history, out)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=20)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump(suite_dict(args.epochs, args.per_class, 1)))
    cell = load_suite(path).cells[0]

    torch.set_num_threads(2)
    start = time.perf_counter()
    one = Trainer(cell, Runtime(device="cpu"))
    one.run()
    in_process_s = time.perf_counter() - start
    rate_one = sorted(h["images_per_s"] for h in one.history)[len(one.history) // 2]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(2, port, cell, folder / "ddp.pt"), nprocs=2, start_method="spawn")
    ddp = torch.load(folder / "ddp.pt")
    rate_two = sorted(h["images_per_s"] for h in ddp)[len(ddp) // 2]

    path.write_text(yaml.safe_dump(suite_dict(args.epochs, args.per_class, 2)))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness.cli", "run", str(path), "--results", str(folder / "r"),
                    "--reports", str(folder / "rep"), "--no-dashboard", "--num-cpus", "3"],
                   check=True, capture_output=True)
    ray_s = time.perf_counter() - start

    top = f"top-1 net1 after {args.epochs} epochs"
    print(f"DML ResNet-8 pair, batch 64, {len(one.inputs.train) * 64} images/epoch, {args.epochs} epochs, CPU")
    print(f"| setting | images/s (median epoch) | {top} | wall time |")
    print("|---|---|---|---|")
    print(f"| 1 process, 2 threads | {rate_one:.0f} | {one.history[-1]['top1/net1']:.1f} | {in_process_s:.1f} s |")
    print(f"| 2 gloo workers × 1 thread | {rate_two:.0f} (×{rate_two / rate_one:.2f}) | "
          f"{ddp[-1]['top1/net1']:.1f} | |")
    print(f"| `harness run`, Ray Train 2 workers (Ray start included) | | | {ray_s:.1f} s "
          f"(+{ray_s - in_process_s:.1f} s over in-process) |")


if __name__ == "__main__":
    main()
