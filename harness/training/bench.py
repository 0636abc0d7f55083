"""``harness bench``: how fast a suite's cells train here, in each way a device can hold them.

Modes: ``separate`` (one cell on the device, its peers as K networks: what ``harness run`` does by default),
``stacked`` (the peers as one grouped network, ``resources.stack_peers``), ``packed`` (``k`` cells training
at once on the device, each in its own process, as Ray packs trials with fractional ``gpu`` resources) and
``seeds`` (``k`` seeds of the cell as one grouped network of all their peers, ``resources.stack_seeds``).  Each
measurement trains a cell's real method on its real input path for a fixed number of steps after a warm-up,
and reads the clock once at the end (a CUDA device is synchronised first).
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import time
from dataclasses import dataclass

import torch

from harness.config.cell import Cell
from harness.data.datasets import DatasetError
from harness.training.engine import Runtime, Trainer
from harness.training.method import Step, load_methods

MODES = ("separate", "stacked", "packed", "seeds")


@dataclass
class Measure:
    mode: str
    cell: str  # the cell's description
    cells: int  # cells training at once on the device
    images_per_s: float  # of one cell (images through every peer of it)
    memory_bytes: int | None  # peak device memory (CUDA); None on a CPU
    macs_per_image: float | None = None  # the cell's training forward multiply-adds per image
    error: str | None = None

    @property
    def aggregate(self) -> float:
        return self.images_per_s * self.cells


def stack_error(cell: Cell) -> str | None:
    """Why the cell's peers cannot be stacked (the method or the group), None if they can."""
    cls = load_methods().get(cell.method)
    return cls.stack_error(cls.HParams.model_validate(cell.hparams), tuple(cell.group))


def seed_stack_error(cell: Cell) -> str | None:
    """Why several seeds of the cell cannot be stacked (the method, the group or its precision), None if they can."""
    from harness.training.bundle import bundle_error

    return bundle_error([cell, dataclasses.replace(cell, seed=cell.seed + 1)])


def _batches(trainer: Trainer):
    epoch = 0
    while True:
        for batch in trainer.train_batches.epoch(epoch):
            yield batch
        epoch += 1


def timed(step, steps: int, warmup: int, device: torch.device) -> float:
    """Images per second of ``steps`` calls of ``step(i)`` (one training step; returns its images) after ``warmup``
    (compilation, cudnn's autotuning)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *a: None)
    images = 0
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start, images = time.perf_counter(), 0
        images += step(i)
    sync(device)
    return images / (time.perf_counter() - start)


def time_steps(trainer: Trainer, steps: int, warmup: int) -> float:
    """Images per second of ``steps`` training steps of one cell after ``warmup``."""
    trainer.method.modules.train()
    trainer.method.on_epoch_start(0)
    batches, n = _batches(trainer), len(trainer.train_batches)

    def step(i: int) -> int:  # the engine's own step: its passes, autocast and fp16 scale (no schedule)
        batch = next(batches)
        return trainer.train_step(batch, Step(0, i % n, trainer.recipe.epochs, n, global_batch=len(batch)))[1]

    return timed(step, steps, warmup, trainer.device)


def measure_cell(cell: dict, runtime: Runtime, steps: int, warmup: int, mode: str = "separate",
                 cells: int = 1) -> Measure:
    """Train ``cell`` (a cell dict) for ``steps`` timed steps in ``mode``; the memory its training needed."""
    cell = Cell.from_dict(cell)
    runtime = dataclasses.replace(runtime, stack_peers=mode == "stacked")
    try:
        trainer = Trainer(cell, runtime)
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.device)
        rate = time_steps(trainer, steps, warmup)
    except DatasetError:
        raise  # the suite's data is not here: one line for the whole bench (harness.cli), not one per mode
    except (ValueError, RuntimeError) as e:
        return Measure(mode, cell.describe(), cells, 0.0, None, error=str(e).splitlines()[0][:300])
    memory = torch.cuda.max_memory_allocated(trainer.device) if trainer.device.type == "cuda" else None
    macs = trainer.costs().get("train_forward_macs_per_image")
    return Measure(mode, cell.describe(), cells, rate, memory, macs)


def _packed_worker(args) -> Measure:
    cell, runtime, steps, warmup, k, threads, barrier = args
    torch.set_num_threads(threads)
    barrier.wait()  # every packed process starts its timed steps together
    return measure_cell(cell, runtime, steps, warmup, "packed", k)


def measure_packed(cell: dict, runtime: Runtime, steps: int, warmup: int, k: int) -> Measure:
    """``k`` copies of the cell training at once on the device, each in its own process with 1/k of the CPUs:
    the rate of one of them (the slowest), so that ``aggregate`` is what the device delivers to k cells."""
    threads = max(1, (os.cpu_count() or 1) // k)
    # forked from a server process that imported this module once and never touched CUDA (safe for CUDA, as spawn
    # is): spawned, every packed process of every cell imported torch and the harness again, seconds each
    context = mp.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    with context.Manager() as manager:
        barrier = manager.Barrier(k)
        with context.Pool(k) as pool:
            results = pool.map(_packed_worker, [(cell, runtime, steps, warmup, k, threads, barrier)] * k)
    failed = [r for r in results if r.error]
    if failed:
        return failed[0]
    slowest = min(results, key=lambda r: r.images_per_s)
    memory = [r.memory_bytes for r in results if r.memory_bytes is not None]
    return Measure("packed", slowest.cell, k, slowest.images_per_s, sum(memory) if memory else None,
                   slowest.macs_per_image)


def measure_seeds(cell: dict, runtime: Runtime, steps: int, warmup: int, k: int) -> Measure:
    """``k`` seeds of ``cell`` (its seed, +1, ...) trained as one bundle (harness/training/bundle.py): the rate of
    one of them, so that ``aggregate`` is what the device delivers to the k cells."""
    from harness.training.bundle import SeedBundle

    base = Cell.from_dict(cell)
    cells = [dataclasses.replace(base, seed=base.seed + i) for i in range(k)]
    try:
        bundle = SeedBundle(cells, runtime)
        if bundle.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(bundle.device)
        bundle.start_epoch(0)
        streams = [_batches(t) for t in bundle.trainers]

        def step(i: int) -> int:
            batches = {s: next(stream) for s, stream in enumerate(streams)}
            bundle.train_step(batches, Step(0, i % bundle.steps, bundle.recipe.epochs, bundle.steps))
            return len(batches[0])

        rate = timed(step, steps, warmup, bundle.device)
    except DatasetError:
        raise
    except (ValueError, RuntimeError) as e:
        return Measure("seeds", base.describe(), k, 0.0, None, error=str(e).splitlines()[0][:300])
    memory = torch.cuda.max_memory_allocated(bundle.device) if bundle.device.type == "cuda" else None
    return Measure("seeds", base.describe(), k, rate, memory, bundle.costs[0].get("train_forward_macs_per_image"))
