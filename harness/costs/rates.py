"""What a suite costs on GPUs, and at what rate: the estimated GPU-hours of its cells, the rate of multiply-adds per
second they are divided by (measured by the store's finished GPU trials or by ``harness bench``, else assumed), the
GPU memory ``harness bench`` measured per cell, and the words ``validate`` and ``run --dry-run`` print.

The GPU-hours are training multiply-adds (3 × a forward pass of every network of a cell, per image and epoch,
torch's FLOP counter at the dataset's resolution) divided by a rate of multiply-adds per second of one GPU.  The
rate is measured when the results store holds finished GPU trials (:func:`measured_rate`: the median over them
of images/s × 3 × the recorded forward multiply-adds per image, per whole GPU); otherwise it is
``ASSUMED_MACS_PER_S``, the sustained rate we assume for one data-centre GPU training small CNNs in fp32 (no GPU
was available where this was written).
"""
from __future__ import annotations

from functools import lru_cache

from harness.costs.memory import GIB, cell_memory
from harness.data.facts import DATASET_FACTS, train_images
from harness.results.store import ResultStore

ASSUMED_MACS_PER_S = 4e12  # sustained multiply-adds per second of one GPU in training (an assumption, see above)
TRAIN_PASSES = 3  # forward + backward ≈ 3 forward passes
BENCH_DIR = "bench"  # where `harness bench` leaves its measurements in a results store

@lru_cache(maxsize=None)
def forward_macs(model: str, input_size: tuple[int, int, int], num_classes: int) -> float:
    import timm
    import torch

    import harness.models  # noqa: F401
    from harness.costs.networks import flops
    from harness.models.meta import ShapesOnly

    with torch.device("meta"), ShapesOnly():  # counted from shapes: nothing allocated, no weight initialised
        net = timm.create_model(model, num_classes=num_classes, in_chans=input_size[0])
        return flops(net, input_size) / 2


def measured_rate(store: ResultStore) -> dict | None:
    """Multiply-adds per second of one GPU, measured by the finished GPU trials of ``store``; None if it has none.

    Per trial: median images/s over its epochs × 3 × its recorded forward multiply-adds per image, divided by the
    share of a GPU the trial had.  The median over trials, with the GPUs' names and the number of trials.
    """
    rates, gpus = [], set()
    for entry in store.record_entries():
        record = store.get(entry.path.rsplit("/", 1)[-1].removesuffix(".json"))
        if record is None:  # damaged, and moved aside by get()
            continue
        hardware, macs = record.get("hardware", {}), record.get("costs", {}).get("train_forward_macs_per_image")
        speeds = sorted(h["images_per_s"] for h in record.get("history", []) if h.get("images_per_s"))
        if record.get("status") != "ok" or not hardware.get("gpu") or not macs or not speeds:
            continue
        rates.append(speeds[len(speeds) // 2] * TRAIN_PASSES * macs / (hardware.get("gpu_share") or 1.0))
        gpus.add(hardware["gpu"])
    if not rates:
        return bench_rate(store)
    rates.sort()
    return {"macs_per_s": rates[len(rates) // 2], "gpus": sorted(gpus), "trials": len(rates),
            "source": f"the median rate of {len(rates)} finished GPU trial(s) of the results store"}


def _benches(store: ResultStore):
    """The store's ``harness bench`` records, newest first (an unreadable one skipped)."""
    import json

    entries = sorted((e for e in store.location.entries(BENCH_DIR) if e.path.endswith(".json")),
                     key=lambda e: e.mtime, reverse=True)
    for entry in entries:
        try:
            yield json.loads(store.location.read_bytes(entry.path) or b"{}")
        except ValueError:
            continue


def bench_rate(store: ResultStore) -> dict | None:
    """The rate of the newest ``harness bench`` of the store on a GPU (its ``separate`` mode: what a run does by
    default), where the store has no finished GPU trial; None where it has no such bench either."""
    for bench in _benches(store):
        gpu, rate = bench.get("hardware", {}).get("gpu"), bench.get("macs_per_s", {}).get("separate")
        if gpu and rate:
            return {"macs_per_s": rate, "gpus": [gpu], "trials": 0,
                    "source": f"the rate `harness bench` measured on {gpu} ({bench.get('date', '?')})"}
    return None


def bench_memory(store: ResultStore) -> dict[tuple[str, str], tuple[int, str]]:
    """(cell hash, mode) → (bytes, where and when): the GPU memory ``harness bench`` measured for one cell trained
    alone (``separate`` or ``stacked`` peers; peak reserved plus the CUDA context), the newest measurement of each
    in the store's benches; what ``gpu: auto`` packs by where it exists."""
    measured: dict[tuple[str, str], tuple[int, str]] = {}
    for bench in _benches(store):
        gpu = bench.get("hardware", {}).get("gpu")
        for m in bench.get("measures", []):
            if (gpu and m.get("cell_hash") and m.get("cells") == 1 and m.get("memory_bytes")
                    and m.get("mode") in ("separate", "stacked") and (m["cell_hash"], m["mode"]) not in measured):
                measured[(m["cell_hash"], m["mode"])] = (int(m["memory_bytes"]),
                                                         f"measured by harness bench on {gpu}, {bench.get('date', '?')}")
    return measured


def cell_gpu_hours(cell, macs_per_s: float = ASSUMED_MACS_PER_S) -> float:
    """Estimated GPU-hours of one cell (see the module docstring)."""
    _, size, classes = DATASET_FACTS[cell.dataset["name"]]
    epochs = min(cell.stop_epoch or cell.recipe["epochs"], cell.recipe["epochs"])
    macs = sum(forward_macs(m, size, classes) for m in cell.group)
    return TRAIN_PASSES * macs * train_images(cell.dataset) * epochs / macs_per_s / 3600


def suite_cost(suite, macs_per_s: float = ASSUMED_MACS_PER_S) -> dict:
    """Estimated GPU-hours of every cell (stage cells included), the wall time of the longest cell (its GPU-hours
    divided across the GPUs it trains on, perfect scaling assumed) and the memory per worker of the largest;
    None for each where the dataset's size is not known before loading it."""
    everything = suite.plan.everything
    resources = suite.spec.resources
    if suite.spec.dataset.name not in DATASET_FACTS:
        return {"gpu_hours": None, "cell_wall_h": None, "memory_gib": None}
    devices = resources.workers * resources.gpu  # GPUs (or shares of one) a cell trains on at once
    memory = [cell_memory(c, resources.workers, resources.grad_accumulation) for c in everything]
    hours = [cell_gpu_hours(c, macs_per_s) for c in everything]
    return {"gpu_hours": sum(hours), "cell_wall_h": max(hours) / devices if devices else None,
            "memory_gib": max(m.total_bytes for m in memory) / GIB if all(memory) else None}


def cost_words(suite, rate: dict | None) -> str:
    """``; est. 41 GPU-h (longest cell 2.1 h on 8 workers × 1 GPU), 13.2 GiB per worker``, from the measured rate
    (``measured_rate`` of a store) or the assumed one (it says which)."""
    cost = suite_cost(suite, rate["macs_per_s"] if rate else ASSUMED_MACS_PER_S)
    if cost["gpu_hours"] is None:
        return ""
    resources = suite.spec.resources
    on = f"{resources.workers} workers × {resources.gpu:g} GPU" if resources.workers > 1 else f"{resources.gpu:g} GPU"
    wall = f" (longest cell {cost['cell_wall_h']:.1f} h on {on})" if cost["cell_wall_h"] is not None else ""
    memory = f", {cost['memory_gib']:.1f} GiB per worker" if cost["memory_gib"] is not None else ""
    source = (f"measured rate of {rate['trials']} GPU trial(s)" if rate and rate["trials"] else
              f"rate of `harness bench` on {rate['gpus'][0]}" if rate else "assumed GPU rate, see suites/README.md")
    hours = "<0.1" if cost["gpu_hours"] < 0.05 else f"{cost['gpu_hours']:.1f}"
    return f"; est. {hours} GPU-h{wall}{memory} ({source})"
