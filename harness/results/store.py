"""The result store: one JSON record per cell, keyed by the cell's hash, written atomically.

A record is written when a cell finishes (status ``ok``) or fails (status ``failed``, with its error).
Finished records are never rewritten by a later run; failed ones are tried again.  Records are shared by
every suite that contains the same cell.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from harness.config.cell import Cell
from harness.results.location import Entry, Location, StorageError


REQUIRED = ("hash", "status")  # what every record has, finished or failed


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class ResultStore:
    """Records (``cells/<hash>.json``), weights (``weights/<hash>.pt``) and Ray's trial folders (``ray/``) under
    one root: a folder, or a URI such as ``s3://bucket/suite-results`` (see ``harness.results.location``)."""

    def __init__(self, root: str | os.PathLike, on_damage=_say):
        self.location = Location(root)
        self.on_damage = on_damage  # told, in one line, of each damaged file moved aside
        self._verified: dict[str, tuple[int, int]] = {}  # hash -> (size, mtime) of weights whose SHA-256 matched
        self.uri = self.location.uri  # what a trial is given to open the same store
        # the local folder (None for a remote store): tests and tools that look at files directly
        self.root = self.location.local
        self.cells_dir = self.root / "cells" if self.root else None
        self.ray_dir = self.root / "ray" if self.root else None

    def check_writable(self) -> None:
        """Write and remove a small file, before any trial starts: a read-only, missing or full store is one
        line now rather than a traceback in every trial."""
        reason = self.unwritable()
        if reason:
            raise StorageError(f"--results {self.uri}: cannot write there ({reason}); fix its permissions or free "
                               "space, or give another --results")

    def unwritable(self) -> str | None:
        """Why a small file cannot be written and removed here ("No space left on device"), or None."""
        probe = f".write-probe-{os.getpid()}"
        try:
            self.location.write_bytes(probe, b"x" * 4096)
            self.location.fs.delete_file(self.location.path(probe))
        except (OSError, StorageError) as e:
            return e.strerror if isinstance(e, OSError) and e.strerror else str(e).split(": ")[-1]
        return None

    # --- records -----------------------------------------------------------------------------------------
    def record_path(self, cell_hash: str) -> str:
        return f"cells/{cell_hash}.json"

    def get(self, cell_hash: str) -> dict | None:
        """The cell's record; None when there is none.  A damaged record (not JSON, not an object, missing its
        hash or status, another cell's) is moved aside, reported in one line, and reads as None: the cell runs
        again."""
        path = self.record_path(cell_hash)
        data = self.location.read_bytes(path)
        if data is None:
            return None
        try:
            record = json.loads(data)
            problem = ("not a JSON object" if not isinstance(record, dict) else
                       f"no {', '.join(k for k in REQUIRED if k not in record)}" if any(k not in record for k in REQUIRED)
                       else f"the record of another cell ({record['hash']!r})" if record["hash"] != cell_hash else None)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            problem = f"not JSON ({str(e)[:80]})"
        if problem is None:
            return record
        aside = self.location.move_aside(path)
        self.on_damage(f"{self.uri}/{path}: damaged result record ({problem}); moved to {aside}, the cell runs again")
        return None

    def is_finished(self, cell: Cell) -> bool:
        record = self.get(cell.hash)
        return record is not None and record.get("status") == "ok"

    def put(self, record: dict) -> str:
        path = self.record_path(record["hash"])
        if record.get("status") != "ok":
            existing = self.get(record["hash"])
            if existing is not None and existing.get("status") == "ok":
                return path  # a late failure report never replaces a finished result
        self.location.write_bytes(path, json.dumps(record, indent=1, sort_keys=True).encode())
        return path

    def records(self, cells: list[Cell]) -> dict[str, dict]:
        """Records of the given cells that exist, by hash."""
        out = {}
        for cell in cells:
            record = self.get(cell.hash)
            if record is not None:
                out[cell.hash] = record
        return out

    def record_entries(self) -> list[Entry]:
        """Every record file of the store (with its modification time)."""
        return [e for e in self.location.entries("cells") if e.path.endswith(".json") and not e.is_dir]

    @contextlib.contextmanager
    def cell_lock(self, cell_hash: str, on_wait=_say):
        """Held while a cell trains, so that two runs sharing the store (two ``harness run`` of one suite, or two
        suites with a cell in common) never train it twice: the second waits, then finds it finished.  Local and
        mounted stores only (``locks/<hash>.lock``); an object store has no locks."""
        if self.root is None:
            yield
            return
        import filelock

        self._lock_path(cell_hash).parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(self._lock_path(cell_hash))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            on_wait(f"cell {cell_hash} is being trained by another run on {self.uri}; waiting for it")
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def _lock_path(self, cell_hash: str) -> Path:
        return self.root / "locks" / f"{cell_hash}.lock"

    def is_training(self, cell_hash: str) -> bool:
        """Whether a run holds the cell's lock now (it is training); False on an object store (no locks)."""
        if self.root is None or not self._lock_path(cell_hash).exists():
            return False
        import filelock

        lock = filelock.FileLock(self._lock_path(cell_hash))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            return True
        lock.release()
        return False

    # --- weights -----------------------------------------------------------------------------------------
    def weights_relative(self, cell_hash: str) -> str:
        return f"weights/{cell_hash}.pt"

    def weights_path(self, cell_hash: str) -> Path:
        """The deployed networks of a finished cell in a local store (see ``weights_file`` for any store)."""
        if self.root is None:
            raise ValueError(f"{self.uri} is not a local folder; use weights_file()")
        return self.root / self.weights_relative(cell_hash)

    def has_weights(self, cell_hash: str) -> bool:
        return self.location.is_file(self.weights_relative(cell_hash))

    def weights_intact(self, cell_hash: str) -> bool:
        """Whether a finished cell's weights are there and are the file its record names (SHA-256, in a local
        store; a remote one is trusted for being there).  A file that is not is moved aside, reported in one line,
        and reads as missing: the stage is trained again rather than failing every cell that loads it."""
        from harness.results.weights import file_sha256

        relative = self.weights_relative(cell_hash)
        if not self.has_weights(cell_hash):
            return False
        if self.root is None:
            return True
        stat = self.weights_path(cell_hash).stat()
        if self._verified.get(cell_hash) == (stat.st_size, stat.st_mtime_ns):
            return True  # hashed already and not touched since (a run asks once per student of a teacher)
        expected = ((self.get(cell_hash) or {}).get("weights") or {}).get("sha256")
        if expected is None or file_sha256(self.weights_path(cell_hash)) == expected:
            self._verified[cell_hash] = (stat.st_size, stat.st_mtime_ns)
            return True
        aside = self.location.move_aside(relative)
        self.on_damage(f"{self.uri}/{relative}: damaged weights (SHA-256 differs from the record's); moved to "
                       f"{aside}, the stage runs again")
        return False

    def weights_file(self, cell_hash: str) -> Path:
        """A local file holding a finished cell's networks, for the stages that load them (a teacher): the file
        itself in a local store (which may not exist: the loader says so), a downloaded copy from a remote one."""
        if self.root is not None:
            return self.weights_path(cell_hash)
        found = self.location.download(self.weights_relative(cell_hash), Path(tempfile.gettempdir()) / "harness-weights")
        if found is None:
            from harness.results.weights import StageError

            raise StageError(f"{self.uri}/{self.weights_relative(cell_hash)}: stage weights not found; run the suite "
                             "again to train the stage")
        return found

    def save_weights(self, cell_hash: str, write) -> tuple[str, str]:
        """``write(path) -> sha256`` saves the networks to a local file, which is then placed in the store; returns
        (the file's path relative to the store, its SHA-256)."""
        relative = self.weights_relative(cell_hash)
        if self.root is not None:
            return relative, write(self.weights_path(cell_hash))
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder) / f"{cell_hash}.pt"
            digest = write(local)
            self.location.upload(local, relative)
        return relative, digest

    # --- Ray's folders -----------------------------------------------------------------------------------
    def checkpoints(self, cell_hash: str, name: str) -> list[Entry]:
        """Files ``name`` in the Tune and Train checkpoints of this cell's trials, newest first."""
        found = self.location.glob(f"ray/*/*{cell_hash}*/checkpoint_*/{name}")
        return sorted(found, key=lambda e: e.mtime, reverse=True)

    def prune_checkpoints(self, hashes) -> tuple[int, int]:
        """Delete the Ray Tune checkpoints of cells whose record is ``ok`` and whose weights are saved: they exist
        to resume an unfinished cell, and a finished one is never trained again (2 per trial of every epoch's
        networks and optimizer states add up to gigabytes per suite).  A failed or unfinished cell keeps its own.
        The trial folders stay (progress.csv, result.json: the dashboard's and TensorBoard's history).
        Returns (folders deleted, bytes freed)."""
        folders, freed = 0, 0
        for cell_hash in hashes:
            record = self.get(cell_hash)
            if record is None or record.get("status") != "ok" or not self.has_weights(cell_hash):
                continue
            for folder in self.location.glob(f"ray/*/*{cell_hash}*/checkpoint_*"):
                if not folder.is_dir:
                    continue
                freed += sum(e.size for e in self.location.entries(folder.path, recursive=True) if not e.is_dir)
                self.location.delete_dir(folder.path)
                folders += 1
        return folders, freed
