"""What ``harness bench`` prints and keeps: images/s per cell and per device in each mode, memory, and what the
measured rates project for the whole suite (GPU-hours and wall time), written to the results store so that
``harness index`` and ``harness validate`` estimate with the measured rate (:func:`harness.costs.rates.bench_rate`)."""
from __future__ import annotations

import datetime as dt
import json
import statistics

from tabulate import tabulate

from harness.costs.rates import BENCH_DIR, TRAIN_PASSES, suite_cost
from harness.results.provenance import hardware
from harness.results.store import ResultStore
from harness.suite.schema import Suite
from harness.costs.bench import Measure


def mode_label(m: Measure) -> str:
    return f"{m.mode} ×{m.cells}" if m.mode in ("packed", "seeds") else m.mode


def rates(measures: list[Measure]) -> dict[str, float]:
    """Multiply-adds per second of the device in each mode (median over the cells measured): aggregate images/s
    × 3 × the cell's forward multiply-adds per image, so that cells of other sizes can be projected from it."""
    by_mode: dict[str, list[float]] = {}
    for m in measures:
        if not m.error and m.macs_per_image:
            by_mode.setdefault(mode_label(m), []).append(m.aggregate * TRAIN_PASSES * m.macs_per_image)
    return {mode: statistics.median(values) for mode, values in by_mode.items()}


def bench_table(suite: Suite, measures: list[Measure], devices: int) -> str:
    """One row per (mode, cell), then one per mode with the whole suite's projected GPU-hours and wall time on
    ``devices`` devices at that mode's rate."""
    rows = []
    for m in measures:
        memory = "" if m.memory_bytes is None else f"{m.memory_bytes / 2**20:,.0f}"
        rows.append([mode_label(m), m.cell, m.cells, f"{m.images_per_s:,.0f}" if not m.error else "—",
                     f"{m.aggregate:,.0f}" if not m.error else "—", memory, m.error or ""])
    out = [tabulate(rows, headers=["mode", "cell", "cells/device", "img/s per cell", "img/s per device", "GPU MiB",
                                   "refused"], tablefmt="github", disable_numparse=True)]
    measured = rates(measures)
    base = measured.get("separate")
    projection = []
    for mode, rate in measured.items():
        cost = suite_cost(suite, rate)
        if cost["gpu_hours"] is None:
            continue
        projection.append([mode, f"{rate / 1e9:,.1f}", f"{rate / base:.2f}" if base else "",
                           f"{cost['gpu_hours']:,.3g}", f"{cost['gpu_hours'] / devices:,.3g}"])
    if projection:
        out += ["", tabulate(projection, headers=["mode", "G multiply-adds/s per device", "× separate",
                                                  "suite device-hours", f"suite wall h on {devices} device(s)"],
                             tablefmt="github", disable_numparse=True)]
    return "\n".join(out)


def save_bench(store: ResultStore, suite: Suite, measures: list[Measure], device: str, steps: int) -> str:
    """Keep the measurement in the store (``bench/<host>-<time>.json``); returns its path."""
    info = hardware(device)
    now = dt.datetime.now(dt.timezone.utc)
    path = f"{BENCH_DIR}/{info['host']}-{now:%Y%m%dT%H%M%S}.json"
    record = {"suite": suite.name, "date": now.isoformat(timespec="seconds"), "hardware": info, "steps": steps,
              "macs_per_s": {k: v for k, v in rates(measures).items()},
              "measures": [{**m.__dict__, "aggregate": m.aggregate} for m in measures]}
    store.location.write_bytes(path, json.dumps(record, indent=1).encode())
    return path
