"""The Ray Tune function trainable: one cell, reported every epoch with a checkpoint, stored at the end.

It resumes from, in order: Tune's own checkpoint (a retried trial), else the newest readable checkpoint
that an earlier run of the same cell left in the result store's Tune folders.
"""
from __future__ import annotations

import datetime as dt
import os
import tempfile
import time
import traceback
from pathlib import Path

import torch

import harness  # noqa: F401  (torchvision shim before timm)
from harness.config.cell import Cell
from harness.results.provenance import hardware, package_versions
from harness.results.store import ResultStore
from harness.training.engine import Runtime, Trainer

CHECKPOINT_FILE = "state.pt"


class CorruptCheckpoint(RuntimeError):
    pass


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, wrong format: all mean "unusable"
        raise CorruptCheckpoint(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None


def previous_checkpoints(store: ResultStore, cell_hash: str) -> list[Path]:
    """Checkpoints of this cell from earlier runs, newest first."""
    found = store.ray_dir.glob(f"*/*{cell_hash}*/checkpoint_*/{CHECKPOINT_FILE}")
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def resume_state(trainer: Trainer, store: ResultStore, log) -> None:
    from ray import tune

    candidates = []
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            candidates.append(Path(folder) / CHECKPOINT_FILE)
            candidates += previous_checkpoints(store, trainer.cell.hash)
            return _load_first(trainer, candidates, log)
    _load_first(trainer, previous_checkpoints(store, trainer.cell.hash), log)


def _load_first(trainer: Trainer, candidates: list[Path], log) -> None:
    for path in candidates:
        try:
            trainer.load_state_dict(load_checkpoint(path))
            log(f"resumed {trainer.cell.describe()} from epoch {trainer.epoch} ({path})")
            return
        except (CorruptCheckpoint, ValueError, KeyError) as e:
            log(f"skipping checkpoint: {e}")


def train_cell(config: dict) -> None:
    """Tune entry point. ``config`` = {"cell": Cell.to_dict(), "runtime": {...}, "results": dir, "code": {...}}."""
    from ray import tune

    cell = Cell.from_dict(config["cell"])
    store = ResultStore(config["results"])
    required = tune.get_context().get_trial_resources().required_resources
    cpus, gpus = int(required.get("CPU", 1) or 1), float(required.get("GPU", 0) or 0)
    torch.set_num_threads(max(cpus, 1))
    started = time.time()
    record = {
        "hash": cell.hash, "cell": cell.to_dict(), "identity": cell.identity(), "seed": cell.seed,
        "code": config.get("code", {}), "packages": package_versions(),
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "trial": tune.get_context().get_trial_name(),
    }
    try:
        runtime = Runtime(**{**config.get("runtime", {}), "results": config["results"]})
        trainer = Trainer(cell, runtime)
        record["hardware"] = {**hardware(str(trainer.device)), "gpu_share": gpus}  # of one GPU, for the index's rates
        resume_state(trainer, store, print)

        def report(trainer: Trainer, metrics: dict) -> None:
            with tempfile.TemporaryDirectory() as folder:
                torch.save(trainer.state_dict(), os.path.join(folder, CHECKPOINT_FILE))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

        summary = trainer.run(on_epoch=report)
        weights = store.weights_path(cell.hash)
        digest = trainer.save_weights(weights)
        record.update(status="ok", history=trainer.history, **summary,
                      params=trainer.method.parameter_counts(), costs=trainer.costs(), stages=trainer.stage_provenance,
                      weights={"file": str(weights.relative_to(store.root)), "sha256": digest})
    except Exception as e:
        record.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        raise
    finally:
        if "status" in record:
            record["wall_time_s"] = round(time.time() - started, 2)
            record["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            store.put(record)
