"""A cell's record through its trial, one life for every way a trial trains (one cell, stacked seeds, data-parallel
workers): started with what the cell is and how it runs, told where it ran, then finished (its weights stored) or
failed (the error and its traceback), and written to the store once, whatever ends the trial."""
from __future__ import annotations

import contextlib
import datetime as dt
import time
import traceback
from typing import Callable

from harness.config.cell import Cell
from harness.results.provenance import hardware, package_versions
from harness.results.store import ResultStore
from harness.scheduling.trial import TrialConfig


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class CellRecord:
    """What the store will hold of one cell of a trial (``fields``); decided once it is finished or failed."""

    def __init__(self, cell: Cell, trial: TrialConfig, name: str, parallel: dict):
        self.cell, self.started = cell, time.time()
        self.fields = {
            "hash": cell.hash, "cell": cell.to_dict(), "identity": cell.identity(), "seed": cell.seed,
            "code": trial.code, "packages": package_versions(), "started": _now(), "trial": name,
            **({"attempt": trial.attempt} if trial.attempt else {}),
            **({"overrides": list(trial.overrides)} if trial.overrides else {}),
            "parallel": parallel,
        }

    @property
    def decided(self) -> bool:
        return "status" in self.fields

    def ran_on(self, data_fingerprint: dict, device: str, gpu_share: float) -> None:
        """The data the cell trained on and the hardware; ``gpu_share``: the GPU the cell had (every worker's share,
        or a stacked seed's part of its trial's), for the index's rates."""
        self.fields.update(data=data_fingerprint, hardware={**hardware(device), "gpu_share": gpu_share})

    def finish(self, store: ResultStore, member, summary: dict, restarts: int, params: dict, costs: dict) -> None:
        """Trained: its weights into the store, its history, summary, parameters, costs and stages."""
        relative, digest = store.save_weights(self.cell.hash, member.save_weights)
        self.fields.update(status="ok", history=member.history, restarts=restarts, **summary, params=params,
                           costs=costs, stages=member.stage_provenance, weights={"file": relative, "sha256": digest})

    def fail(self, error: str, **more) -> None:
        if not self.decided:
            self.fields.update(status="failed", error=error, **more)

    def written(self) -> dict:
        """The record as the store keeps it, with its wall time and end."""
        return {**self.fields, "wall_time_s": round(time.time() - self.started, 2), "finished": _now()}


@contextlib.contextmanager
def recorded(store: ResultStore, records: list[CellRecord], write: bool = True,
             raises: Callable[[Exception], bool] = lambda e: False):
    """The trial's body: an exception fails every record not yet decided (with its traceback) and ends the trial
    normally (recorded, it is not retried: it would fail again) unless ``raises(e)``; every decided record is written
    on the way out where ``write`` (a data-parallel cell's rank 0)."""
    try:
        yield
    except Exception as e:
        for record in records:
            record.fail(f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        if raises(e):
            raise
    finally:
        if write:
            for record in records:
                if record.decided:
                    store.put(record.written())
