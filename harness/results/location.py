"""Where a result store lives: a local (or mounted shared) folder, or any URI that pyarrow's filesystem layer
understands (``s3://bucket/path``, ``gs://…``, ``file:///…``), as Ray Tune's ``storage_path`` does.

Every read and write of the store goes through here, so that the same guarantees hold everywhere: a file is
replaced whole or not at all (a local folder: a temporary file, fsync and rename; an object store: a temporary
object moved into place, an object being published whole when its upload completes), and a missing file reads as
``None``, never as an exception.
"""
from __future__ import annotations

import fnmatch
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs


class StorageError(RuntimeError):
    """The store's location cannot be used (a URI pyarrow does not understand, missing credentials, no access);
    the message is one line."""


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the store's root, with "/" separators
    mtime: float  # seconds since the epoch (0 where the filesystem does not say)
    size: int
    is_dir: bool


def is_uri(root: str | os.PathLike) -> bool:
    return "://" in str(root)


def _fspath(root: str | os.PathLike) -> str:
    return str(Path(root).expanduser().resolve())


class Location:
    """A folder on some filesystem; paths given to its methods are relative to it (``cells/<hash>.json``)."""

    def __init__(self, root: str | os.PathLike):
        text = str(root)
        if is_uri(text) and not text.startswith("file://"):
            try:
                self.fs, base = pafs.FileSystem.from_uri(text)
            except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
                raise StorageError(f"--results {text}: not a storage URI pyarrow can open "
                                   f"({str(e).splitlines()[0][:200]}); give a folder, s3://bucket/path or "
                                   "gs://bucket/path") from None
            self.base = base.rstrip("/")
            self.local: Path | None = None
            self.uri = text
            try:  # credentials, endpoint and bucket: one line now, not a traceback in every trial
                bucket = self.fs.get_file_info(self.base.split("/")[0])
            except OSError as e:
                raise StorageError(f"--results {text}: cannot be reached ({str(e).splitlines()[0][:200]})") from None
            if self.fs.type_name in ("s3", "gcs") and bucket.type == pafs.FileType.NotFound:
                raise StorageError(f"--results {text}: bucket {self.base.split('/')[0]!r} does not exist; create it "
                                   "first (the harness never creates buckets)")
        else:
            self.local = Path(_fspath(text.removeprefix("file://") if text.startswith("file://") else text))
            self.fs, self.base, self.uri = pafs.LocalFileSystem(), str(self.local), str(self.local)

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    def path(self, relative: str = "") -> str:
        """The filesystem path of ``relative`` (what pyarrow's calls take)."""
        return f"{self.base}/{relative}".rstrip("/") if relative else self.base

    # --- reading -----------------------------------------------------------------------------------------
    def read_bytes(self, relative: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(self.path(relative)) as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError):
            return None
        except OSError as e:
            if self.fs.get_file_info(self.path(relative)).type == pafs.FileType.NotFound:
                return None
            raise StorageError(f"{self.uri}/{relative}: cannot be read ({str(e).splitlines()[0][:200]})") from None

    def is_file(self, relative: str) -> bool:
        return self.fs.get_file_info(self.path(relative)).type == pafs.FileType.File

    def entries(self, folder: str, recursive: bool = False) -> list[Entry]:
        """What ``folder`` holds (nothing when it does not exist)."""
        selector = pafs.FileSelector(self.path(folder), allow_not_found=True, recursive=recursive)
        return [_entry(info, info.path[len(self.base):].lstrip("/")) for info in self.fs.get_file_info(selector)]

    def glob(self, pattern: str) -> list[Entry]:
        """Entries matching a ``/``-separated pattern of ``fnmatch`` components (``ray/*/*abc*/checkpoint_*``),
        listed one level at a time: an object store is never listed recursively."""
        level = [""]
        parts = pattern.split("/")
        found: list[Entry] = []
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            matches = []
            for folder in level:
                if not any(c in part for c in "*?["):
                    entry = self._info(f"{folder}/{part}".lstrip("/"))
                    matches += [entry] if entry else []
                    continue
                matches += [e for e in self.entries(folder) if fnmatch.fnmatchcase(e.path.rsplit("/", 1)[-1], part)]
            if last:
                found = matches
            level = [e.path for e in matches if e.is_dir]
        return found

    def _info(self, relative: str) -> Entry | None:
        info = self.fs.get_file_info(self.path(relative))
        return None if info.type == pafs.FileType.NotFound else _entry(info, relative)

    def download(self, relative: str, folder: Path) -> Path | None:
        """A local file with the contents of ``relative``: the file itself for a local store, else a copy in
        ``folder``; None when it does not exist."""
        if self.local is not None:
            path = self.local / relative
            return path if path.is_file() else None
        data = self.read_bytes(relative)
        if data is None:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / relative.replace("/", "_")
        _write_local(target, data)
        return target

    # --- writing -----------------------------------------------------------------------------------------
    def write_bytes(self, relative: str, data: bytes) -> None:
        """Replace ``relative`` with ``data`` whole: a reader sees the old or the new contents, never a part."""
        if self.local is not None:
            return _write_local(self.local / relative, data)
        target = self.path(relative)
        temporary = f"{target.rsplit('/', 1)[0]}/.{target.rsplit('/', 1)[-1]}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            with self.fs.open_output_stream(temporary) as f:
                f.write(data)
            self.fs.move(temporary, target)
        except OSError as e:
            _quietly(self.fs.delete_file, temporary)
            raise StorageError(f"{self.uri}/{relative}: cannot be written ({str(e).splitlines()[0][:200]})") from None

    def upload(self, local: Path, relative: str) -> None:
        """Place the local file ``local`` at ``relative`` (moved for a local store, copied for a remote one)."""
        if self.local is not None:
            target = self.local / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(local, target)
            return
        self.write_bytes(relative, Path(local).read_bytes())

    def move_aside(self, relative: str) -> str:
        """Rename ``relative`` to ``relative.damaged-<UTC time>`` (kept for whoever wants to look, never read
        again); returns the new relative path."""
        import datetime as dt

        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        target = f"{relative}.damaged-{stamp}"
        self.fs.move(self.path(relative), self.path(target))
        return target

    def delete_dir(self, relative: str) -> None:
        _quietly(self.fs.delete_dir, self.path(relative))

    # --- Ray ---------------------------------------------------------------------------------------------
    def ray_storage(self, relative: str) -> dict:
        """``storage_path`` (and ``storage_filesystem`` for a remote store) for a Ray Tune / Train RunConfig."""
        if self.local is not None:
            return {"storage_path": str(self.local / relative)}
        return {"storage_path": self.path(relative), "storage_filesystem": self.fs}


def _entry(info: pafs.FileInfo, relative: str) -> Entry:
    mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
    return Entry(relative, mtime, info.size or 0, info.type == pafs.FileType.Directory)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def readable_as_umask_allows(fd: int) -> None:
    """A temporary file is created 0600; the file it becomes gets the mode any new file gets (0644 or, under a
    group's umask 002 on shared storage, 0664), so that a group's members can read the results."""
    os.fchmod(fd, 0o666 & ~_umask())


def _write_local(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        readable_as_umask_allows(fd)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _quietly(call, *args) -> None:
    try:
        call(*args)
    except OSError:  # not there (FileNotFoundError) or not removable: nothing to do
        pass
