"""The result store: one JSON record per cell, keyed by the cell's hash, written atomically.

A record is written when a cell finishes (status ``ok``) or fails (status ``failed``, with its error).
Finished records are never rewritten by a later run; failed ones are tried again.  Records are shared by
every suite that contains the same cell.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from harness.config.cell import Cell


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: a reader sees the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class CorruptRecord(ValueError):
    """A result record that is not valid JSON (a disk problem or a hand edit)."""


class ResultStore:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.cells_dir = self.root / "cells"
        self.ray_dir = self.root / "ray"

    def weights_path(self, cell_hash: str) -> Path:
        """The deployed networks of a finished cell, for the stages that load them (a teacher)."""
        return self.root / "weights" / f"{cell_hash}.pt"

    def record_path(self, cell_hash: str) -> Path:
        return self.cells_dir / f"{cell_hash}.json"

    def get(self, cell_hash: str) -> dict | None:
        path = self.record_path(cell_hash)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as e:
            raise CorruptRecord(f"{path}: corrupt result record ({e}); delete it to run the cell again") from None

    def is_finished(self, cell: Cell) -> bool:
        record = self.get(cell.hash)
        return record is not None and record.get("status") == "ok"

    def put(self, record: dict) -> Path:
        path = self.record_path(record["hash"])
        if record.get("status") != "ok":
            existing = self.get(record["hash"])
            if existing is not None and existing.get("status") == "ok":
                return path  # a late failure report never replaces a finished result
        atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True))
        return path

    def records(self, cells: list[Cell]) -> dict[str, dict]:
        """Records of the given cells that exist, by hash."""
        out = {}
        for cell in cells:
            record = self.get(cell.hash)
            if record is not None:
                out[cell.hash] = record
        return out

    def prune_checkpoints(self, hashes) -> tuple[int, int]:
        """Delete the Ray Tune checkpoints of cells whose record is ``ok`` and whose weights are saved: they exist
        to resume an unfinished cell, and a finished one is never trained again (2 per trial of every epoch's
        networks and optimizer states add up to gigabytes per suite).  A failed or unfinished cell keeps its own.
        The trial folders stay (progress.csv, result.json: the dashboard's and TensorBoard's history).
        Returns (folders deleted, bytes freed)."""
        folders, freed = 0, 0
        for cell_hash in hashes:
            record = self.get(cell_hash)
            if record is None or record.get("status") != "ok" or not self.weights_path(cell_hash).is_file():
                continue
            for folder in self.ray_dir.glob(f"*/*{cell_hash}*/checkpoint_*"):
                freed += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
                shutil.rmtree(folder, ignore_errors=True)
                folders += 1
        return folders, freed
