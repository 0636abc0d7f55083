"""``harness index``: one line per suite file — the paper table it mirrors, what it needs (dataset, GPUs per
trial), its size (cells, stage cells, epochs), an estimate of its GPU-hours and the status of its last run —
written to ``suites/README.md``, with the paper tables that have no suite and why.

The GPU-hours are training multiply-adds (3 × a forward pass of every network of a cell, per image and epoch,
torch's FLOP counter at the dataset's resolution) divided by a rate of multiply-adds per second of one GPU.  The
rate is measured when the results store holds finished GPU trials (:func:`measured_rate`: the median over them
of images/s × 3 × the recorded forward multiply-adds per image, per whole GPU); otherwise it is
``ASSUMED_MACS_PER_S``, the sustained rate we assume for one data-centre GPU training small CNNs in fp32 (no GPU
was available where this was written).
"""
from __future__ import annotations

import datetime as dt
from functools import lru_cache
from pathlib import Path

from harness.data.facts import DATASET_FACTS, train_images
from harness.papers.tables import PAPER_TABLES
from harness.results.store import ResultStore
from harness.suite.checks import suite_problems
from harness.suite.schema import Suite, SuiteError, load_suite
from harness.training.memory import GIB, cell_memory
from harness.training.stages import waves

ASSUMED_MACS_PER_S = 4e12  # sustained multiply-adds per second of one GPU in training (an assumption, see above)
TRAIN_PASSES = 3  # forward + backward ≈ 3 forward passes
BENCH_DIR = "bench"  # where `harness bench` leaves its measurements in a results store

# Paper tables that get no training suite, and why.
NO_SUITE = {
    "amln_table1": "parameter counts only: checked against the model zoo by tests/test_model_zoo.py, "
                   "printed by `harness list models`",
    "kdcl_table8": "object detection on COCO: out of scope (the harness trains classifiers)",
}


@lru_cache(maxsize=None)
def forward_macs(model: str, input_size: tuple[int, int, int], num_classes: int) -> float:
    import timm
    import torch

    import harness.models  # noqa: F401
    from harness.models.costs import flops
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


def suite_cost(suite: Suite, macs_per_s: float = ASSUMED_MACS_PER_S) -> dict:
    """Estimated GPU-hours of every cell (stage cells included), the wall time of the longest cell (its GPU-hours
    divided across the GPUs it trains on, perfect scaling assumed) and the memory per worker of the largest;
    None for each where the dataset's size is not known before loading it."""
    everything = [c for wave in waves(suite.cells) for c in wave]
    resources = suite.spec.resources
    if suite.spec.dataset.name not in DATASET_FACTS:
        return {"gpu_hours": None, "cell_wall_h": None, "memory_gib": None}
    devices = resources.workers * resources.gpu  # GPUs (or shares of one) a cell trains on at once
    memory = [cell_memory(c, resources.workers, resources.grad_accumulation) for c in everything]
    hours = [cell_gpu_hours(c, macs_per_s) for c in everything]
    return {"gpu_hours": sum(hours), "cell_wall_h": max(hours) / devices if devices else None,
            "memory_gib": max(m.total_bytes for m in memory) / GIB if all(memory) else None}


def suite_line(suite: Suite, store: ResultStore, macs_per_s: float = ASSUMED_MACS_PER_S,
               modified: dict[str, float] | None = None) -> dict:
    """``modified``: the store's record files and their times, listed once for all suites (a bucket is slow to
    list); listed here where not given."""
    everything = [c for wave in waves(suite.cells) for c in wave]
    stage_cells = len(everything) - len({c.hash for c in suite.cells})
    records = [store.get(c.hash) for c in everything]
    done = sum(1 for r in records if r and r.get("status") == "ok")
    failed = sum(1 for r in records if r and r.get("status") == "failed")
    modified = {e.path: e.mtime for e in store.record_entries()} if modified is None else modified
    times = [modified.get(store.record_path(c.hash), 0) for c, r in zip(everything, records) if r]
    last = dt.datetime.fromtimestamp(max(times)).strftime("%Y-%m-%d") if times else None
    return {
        "suite": suite.path.name, "table": suite.spec.paper_table.name if suite.spec.paper_table else "—",
        "dataset": suite.spec.dataset.name, "gpus": suite.spec.resources.gpu,
        "cells": len({c.hash for c in suite.cells}), "stage_cells": stage_cells,
        "epochs": sorted({c.recipe["epochs"] for c in suite.cells}),
        "workers": suite.spec.resources.workers,
        **suite_cost(suite, macs_per_s),
        "status": (f"{done}/{len(everything)} finished" + (f", {failed} failed" if failed else "")
                   + (f" (last {last})" if last else "")) if done or failed else "not run",
    }


def build_index(suites_dir: str | Path, results: str | Path) -> tuple[list[dict], list[str], dict[str, str], dict | None]:
    """Lines of every suite file, the suite files that do not validate, the paper tables without a suite, and the
    measured GPU rate (None: the assumed one is used)."""
    store = ResultStore(results)
    rate = measured_rate(store)
    lines, broken = [], []
    modified = {e.path: e.mtime for e in store.record_entries()}
    for path in sorted(Path(suites_dir).glob("*.yaml")):
        try:
            suite = load_suite(path)
            problems = suite_problems(suite)
            if problems:
                raise SuiteError(problems)
            lines.append(suite_line(suite, store, rate["macs_per_s"] if rate else ASSUMED_MACS_PER_S, modified))
        except SuiteError as e:
            broken.append(f"{path.name}: {e.lines[0]}")
    covered = {line["table"] for line in lines}
    missing = {t: NO_SUITE.get(t, "no suite yet") for t in PAPER_TABLES if t not in covered}
    return lines, broken, missing, rate


def render_index(lines: list[dict], broken: list[str], missing: dict[str, str], rate: dict | None = None) -> str:
    from tabulate import tabulate

    def hours(h):
        return "—" if h is None else "<0.1" if h < 0.05 else f"{h:.1f}"

    def trial(l):
        gpus = f"{l['gpus']:g}" if l["gpus"] else "0 (CPU)"
        return f"{l['workers']} × {gpus}" if l["workers"] > 1 else gpus

    rows = [[f"`{l['suite']}`", l["table"], l["dataset"], trial(l), l["cells"], l["stage_cells"],
             "/".join(map(str, l["epochs"])), hours(l["gpu_hours"]), hours(l["cell_wall_h"]),
             "—" if l["memory_gib"] is None else f"{l['memory_gib']:.1f}", l["status"]] for l in lines]
    out = [
        "# Suites", "",
        "Generated by `harness index` (do not edit by hand). One line per suite file: the paper table whose "
        "numbers its report prints beside ours, the dataset it needs (absent datasets: `--smoke` runs the "
        "embedded one), GPUs per trial (workers × GPUs per worker for data-parallel cells), cells (plus stage "
        "cells: teachers, assistants, paraphrasers), epochs, estimated GPU-hours, the estimated wall time of its "
        "longest cell (its GPU-hours divided across the GPUs it trains on), the estimated memory per worker "
        "of its largest cell (`harness/training/memory.py`), and the status of its last run in the results store "
        "the index was built from.", "",
        tabulate(rows, headers=["suite", "paper table", "dataset", "GPUs/trial", "cells", "stage cells", "epochs",
                                "est. GPU-h", "longest cell, h", "GiB/worker", "last run"], tablefmt="github",
                 disable_numparse=True), "",
        "GPU-hours are estimated: 3 × forward multiply-adds of every network per image and epoch, at "
        + (f"{rate['macs_per_s'] / 1e12:.3g} T multiply-adds/s per GPU, {rate['source']} "
           f"({', '.join(rate['gpus'])}). " if rate else
           f"an assumed {ASSUMED_MACS_PER_S / 1e12:g} T multiply-adds/s per GPU: the results store holds no finished "
           "GPU trial to measure it from (`harness index --results DIR` with one that does). ")
        + "Data loading, evaluation and methods' extra modules are not counted (see `harness/reporting/index.py`).", "",
    ]
    if missing:
        out += ["## Paper tables without a suite", ""] + [f"- `{t}`: {why}" for t, why in missing.items()] + [""]
    if broken:
        out += ["## Suite files that do not validate", ""] + [f"- {b}" for b in broken] + [""]
    return "\n".join(out)
