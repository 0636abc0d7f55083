"""``harness bench``: how fast a suite's cells train here, in each way a device can hold them.

Modes: ``separate`` (one cell on the device, its peers as K networks: what ``harness run`` does by default),
``stacked`` (the peers as one grouped network, ``resources.stack_peers``), ``packed`` (``k`` cells training
at once on the device, each in its own process, as Ray packs trials with fractional ``gpu`` resources) and
``seeds`` (``k`` seeds of the cell as one grouped network of all their peers, ``resources.stack_seeds``).  Each
measurement trains a cell's real method on its real input path (the engine's own step) after a warm-up, on full
batches only, in 3 windows of at least ``steps`` steps and ``min_seconds`` each (a CUDA device synchronised at
their ends), and keeps their median; packed processes start their windows together, after their warm-ups.  Memory
on a GPU is the peak reserved by the caching allocator plus the CUDA context a process holds.
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
from harness.training.loop import Loop
from harness.costs.memory import CONTEXT_GIB, GIB
from harness.training.engine import cap_gpu_memory
from harness.training.method import Step, load_methods

MODES = ("separate", "stacked", "packed", "seeds")
WINDOWS = 3  # timed windows per measurement; their median is kept


@dataclass(frozen=True)
class Timing:
    steps: int = 20  # at least this many steps per window
    warmup: int = 3  # untimed steps first (compilation, cuDNN's autotuning)
    min_seconds: float = 2.0  # and at least this long per window (20 steps of a small CNN take 0.2 s on a GPU)


@dataclass
class Measure:
    mode: str
    cell: str  # the cell's description
    cells: int  # cells training at once on the device
    images_per_s: float  # of one cell (images through every peer of it)
    memory_bytes: int | None  # peak device memory (CUDA); None on a CPU
    macs_per_image: float | None = None  # the cell's training forward multiply-adds per image
    error: str | None = None
    cell_hash: str = ""  # the cell measured (``gpu: auto`` reads its memory)

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


def _batches(loop: Loop):
    """The loop's batches (``{member: batch}``) epoch after epoch, full ones only where there are any: a last,
    smaller batch would be one timed step of a different shape (cuDNN autotuning it, a recompile) and few images."""
    full = loop.recipe.batch_size
    any_full = loop.members[0].inputs.num_train >= full
    epoch = 0
    while True:
        for batches in loop.batches_of(epoch, loop.alive):
            if len(batches[0]) == full or not any_full:
                yield batches
        epoch += 1


def timed(step, timing: Timing, device: torch.device, barrier=None) -> float:
    """Images per second of ``step(i)`` (one training step; returns its images): after ``timing.warmup`` steps
    (and ``barrier``, where processes measure together), the median of ``WINDOWS`` windows of at least
    ``timing.steps`` steps and ``timing.min_seconds`` each."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *a: None)
    i = 0
    for i in range(timing.warmup):
        step(i)
    sync(device)
    if barrier is not None:
        barrier.wait()  # every packed process is warm: their windows overlap
    rates = []
    for _ in range(WINDOWS):
        images, count, start = 0, 0, time.perf_counter()
        while count < timing.steps or time.perf_counter() - start < timing.min_seconds:
            i += 1
            images += step(i)
            count += 1
        sync(device)  # the clock is read on a synchronised device (a GPU may still be working on the queue)
        rates.append(images / (time.perf_counter() - start))
    return sorted(rates)[len(rates) // 2]


def time_steps(loop: Loop, timing: Timing, barrier=None) -> float:
    """Images per second of one cell (a Trainer, or one seed of a SeedBundle) trained by the loop's own step
    (:meth:`~harness.training.loop.Loop.step_members`: its passes, autocast and fp16 scale; no schedule), see
    :func:`timed`."""
    loop.start_members(0, loop.alive)
    batches, n = _batches(loop), len(loop.members[0].train_batches)

    def step(i: int) -> int:
        members = next(batches)
        step = Step(0, i % n, loop.recipe.epochs, n, global_batch=members[0].global_size)
        return loop.step_members(members, step)[1]

    return timed(step, timing, loop.device, barrier)


def peak_memory(device: torch.device) -> int | None:
    """What this process held on the GPU at its peak: the caching allocator's reserved memory (what packing must
    leave room for, not only what tensors used) plus the CUDA context; None on a CPU."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_reserved(device) + int(CONTEXT_GIB * GIB)


def measure_cell(cell: dict, runtime: Runtime, timing: Timing, mode: str = "separate", cells: int = 1,
                 barrier=None) -> Measure:
    """Train ``cell`` (a cell dict) in ``mode`` and time it (:func:`timed`); the memory its training needed."""
    cell = Cell.from_dict(cell)
    runtime = dataclasses.replace(runtime, stack_peers=mode == "stacked")
    try:
        trainer = Trainer(cell, runtime)
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.device)
        rate = time_steps(trainer, timing, barrier)
    except DatasetError:
        raise  # the suite's data is not here: one line for the whole bench (harness.cli), not one per mode
    except (ValueError, RuntimeError) as e:
        if barrier is not None:
            barrier.abort()  # the other packed processes do not wait for this one
        return Measure(mode, cell.describe(), cells, 0.0, None, error=str(e).splitlines()[0][:300],
                       cell_hash=cell.hash)
    macs = trainer.costs().get("train_forward_macs_per_image")
    return Measure(mode, cell.describe(), cells, rate, peak_memory(trainer.device), macs, cell_hash=cell.hash)


def _packed_worker(args) -> Measure:
    cell, runtime, timing, k, threads, barrier = args
    torch.set_num_threads(threads)
    cap_gpu_memory(runtime.torch_device(), 1 / k)
    return measure_cell(cell, runtime, timing, "packed", k, barrier)


def measure_packed(cell: dict, runtime: Runtime, timing: Timing, k: int) -> Measure:
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
            results = pool.map(_packed_worker, [(cell, runtime, timing, k, threads, barrier)] * k)
    failed = [r for r in results if r.error]
    if failed:
        return failed[0]
    slowest = min(results, key=lambda r: r.images_per_s)
    memory = [r.memory_bytes for r in results if r.memory_bytes is not None]
    return Measure("packed", slowest.cell, k, slowest.images_per_s, sum(memory) if memory else None,
                   slowest.macs_per_image)


def measure_seeds(cell: dict, runtime: Runtime, timing: Timing, k: int) -> Measure:
    """``k`` seeds of ``cell`` (its seed, +1, ...) trained as one bundle (harness/training/bundle.py): the rate of
    one of them, so that ``aggregate`` is what the device delivers to the k cells."""
    from harness.training.bundle import SeedBundle

    base = Cell.from_dict(cell)
    cells = [dataclasses.replace(base, seed=base.seed + i) for i in range(k)]
    try:
        bundle = SeedBundle(cells, runtime)
        if bundle.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(bundle.device)
        rate = time_steps(bundle, timing)
    except DatasetError:
        raise
    except (ValueError, RuntimeError) as e:
        return Measure("seeds", base.describe(), k, 0.0, None, error=str(e).splitlines()[0][:300])
    return Measure("seeds", base.describe(), k, rate, peak_memory(bundle.device),
                   bundle.costs[0].get("train_forward_macs_per_image"))
