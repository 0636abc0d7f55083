"""Where datasets live, and the ones fetched when missing.

The data root is the first of: ``--data-root`` (or ``dataset.root``), ``$HARNESS_DATA``, ``$HARNESS_DATA_ROOT`` (its
older name), and ``<cache>/data`` (the harness's cache folder: ``$HARNESS_CACHE``, else ``~/.cache/okd-harness``).
A dataset with a public archive (:data:`ARCHIVES`: CIFAR-10/100, MNIST, Fashion-MNIST, Tiny-ImageNet) that is not
in the root is downloaded there the first time it is loaded, checked against its publisher's checksum (the
addresses and MD5 sums torchvision keeps for its own downloads, where it has them), unless downloads are off:
``--offline`` or ``$HARNESS_OFFLINE=1`` for a run, ``dataset.download: false`` for a suite.  ``$HARNESS_DATA_MIRROR``
(or ``--mirror URL``) fetches every archive from ``URL/<archive file name>`` instead: a copy inside a cluster
without internet, or a faster host.  A plug-in dataset registers its archives here the same way."""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from harness.data.image_data import DatasetError
from harness.fetching import FetchError, cache_folder, download
from harness.registry import Registry

OFF = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Archive:
    """One published file of a dataset: its name (also its name on a mirror), its MD5, the addresses it is
    published at (tried in order), the sub-folder of the data root it goes into, and whether to unpack it there
    (the IDX files of MNIST are read gzipped, as published)."""

    file: str
    md5: str
    urls: tuple[str, ...]
    into: str = ""
    unpack: bool = True


ARCHIVES: Registry[tuple[Archive, ...]] = Registry("downloadable dataset")


def data_root(given: str | None = None) -> Path:
    """The data root (see the module's docstring)."""
    for value in (given, os.environ.get("HARNESS_DATA"), os.environ.get("HARNESS_DATA_ROOT")):
        if value:
            return Path(value).expanduser()
    return cache_folder() / "data"


def offline() -> bool:
    return os.environ.get("HARNESS_OFFLINE", "").strip().lower() in OFF


def mirror() -> str | None:
    return (os.environ.get("HARNESS_DATA_MIRROR") or "").strip().rstrip("/") or None


CHECK = "check"  # dataset.download while `harness data check` looks: nothing is fetched or unpacked


def may_download(spec: dict) -> bool:
    """Whether a missing dataset of ``spec`` may be fetched (or unpacked) now."""
    return spec.get("download") not in (False, CHECK) and not offline()


def why_not_downloaded(name: str, spec: dict) -> str:
    """The clause an error about a missing dataset ends with: how to get it."""
    if name not in ARCHIVES:
        return ""
    if spec.get("download") == CHECK:
        return f"; 'harness data get {name}' downloads it"
    if spec.get("download") is False:
        return f"; the suite sets dataset.download: false (remove it, or run 'harness data get {name}')"
    if offline():
        return (f"; downloads are off (--offline or $HARNESS_OFFLINE): run 'harness data get {name}' where a "
                "network exists, then copy the data root here")
    return ""


def fetch(name: str, root: Path) -> None:
    """Download ``name``'s archives into ``root`` and unpack them (one process at a time per dataset and root: a
    file lock); a failed or corrupt download is one line and leaves nothing behind."""
    from filelock import FileLock

    archives = ARCHIVES.get(name)
    root.mkdir(parents=True, exist_ok=True)
    base = mirror()

    def fetched(archive: Archive, folder: Path) -> Path:
        urls = [f"{base}/{archive.file}"] if base else [f"{u.rstrip('/')}/{archive.file}" for u in archive.urls]
        try:
            return download(urls, folder / archive.file, archive.md5, "md5")
        except FetchError as e:
            raise DatasetError(f"dataset {name}: {e}{_mirror_hint(base)}") from None

    with FileLock(str(root / f".{name}.download.lock")):
        for archive in archives:
            folder = root / archive.into
            if not archive.unpack:
                fetched(archive, folder)
                continue
            with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}.") as scratch:
                path = fetched(archive, Path(scratch))
                unpacked = Path(scratch) / "unpacked"
                _unpack(path, unpacked)
                folder.mkdir(parents=True, exist_ok=True)
                for entry in unpacked.iterdir():  # each top-level entry moved in whole: never a half-unpacked tree
                    if (folder / entry.name).exists():
                        shutil.rmtree(folder / entry.name) if (folder / entry.name).is_dir() else (
                            folder / entry.name).unlink()
                    os.replace(entry, folder / entry.name)


def _unpack(path: Path, into: Path) -> None:
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                z.extractall(into)
        else:
            with tarfile.open(path) as t:
                t.extractall(into, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as e:
        raise DatasetError(f"{path.name}: cannot unpack ({type(e).__name__}: {e})") from None


def _mirror_hint(base: str | None) -> str:
    return (f" (the mirror $HARNESS_DATA_MIRROR={base} should serve the archive under its own file name)" if base
            else "; without internet: set $HARNESS_DATA_MIRROR (or --mirror URL) to a host that serves the archive, "
                 "or put the data in the data root yourself")


def _torchvision_archives():
    """CIFAR and the MNIST family: the addresses and checksums torchvision's dataset classes carry (it keeps them
    current when a host moves, as when MNIST left yann.lecun.com)."""
    from torchvision import datasets

    for name, cls in (("cifar10", datasets.CIFAR10), ("cifar100", datasets.CIFAR100)):
        ARCHIVES.register(name)((Archive(cls.filename, cls.tgz_md5, (cls.url.rsplit("/", 1)[0],)),))
    for name, cls in (("mnist", datasets.MNIST), ("fashion_mnist", datasets.FashionMNIST)):
        ARCHIVES.register(name)(tuple(Archive(file, md5, tuple(cls.mirrors), f"{cls.__name__}/raw", unpack=False)
                                      for file, md5 in cls.resources))


_torchvision_archives()
# Stanford's CS231n archive (its MD5 as other loaders of the field record it); unpacks to tiny-imagenet-200/
ARCHIVES.register("tiny_imagenet")((Archive("tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de",
                                            ("http://cs231n.stanford.edu",)),))
