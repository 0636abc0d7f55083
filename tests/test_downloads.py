"""Data with no manual step: a dataset with a public archive is fetched into the data root when missing (checked
against its published checksum, through a mirror where one is set), never where downloads are off; a corrupt
download is one line and leaves nothing; ImageNet's official archives are unpacked into class folders.  Every
archive is served on 127.0.0.1 by the test, in the real format, with the checksum made for it."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from harness.data import downloads
from harness.data.datasets import DatasetError, load_dataset
from tests.helpers import cli, write_cifar10
from tests.test_datasets import write_fashion_mnist


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def cifar10_archive(folder, n=8):
    """cifar-10-python.tar.gz as published: cifar-10-batches-py/ with five training batches and the test batch."""
    source = folder.parent / "source"
    write_cifar10(source / "cifar-10-batches-py", batches=5, n=n, n_test=n)
    path = folder / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return path


def publish(monkeypatch, name: str, folder) -> None:
    """The dataset's archives as the test made them: their checksums in place of the published ones."""
    archives = downloads.ARCHIVES.get(name)
    monkeypatch.setitem(downloads.ARCHIVES._entries, name,
                        tuple(dataclasses.replace(a, md5=md5(folder / a.file)) for a in archives))


@pytest.fixture
def online(monkeypatch, tmp_path):
    """Downloads on (the tests' default is off), a data root of the test's own, and no mirror."""
    monkeypatch.delenv("HARNESS_OFFLINE", raising=False)
    monkeypatch.delenv("HARNESS_DATA_MIRROR", raising=False)
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def test_harness_data_get_fetches_cifar10_through_the_mirror_once(http_folder, online, monkeypatch, capfd):
    folder, base = http_folder
    cifar10_archive(folder)
    publish(monkeypatch, "cifar10", folder)
    code, out, err = cli(capfd, "data", "get", "cifar10", "--mirror", base)
    assert code == 0, err
    assert out.startswith("cifar10: present: 40 training and 8 test images, 10 classes; checksum ")
    assert f"(data root {online})" in out
    assert http_folder.requests == ["/cifar-10-python.tar.gz"]
    # unpacked in place, the archive and the scratch folder gone
    assert sorted(p.name for p in online.iterdir() if not p.name.endswith(".lock")) == ["cifar-10-batches-py"]
    code, out, _ = cli(capfd, "data", "get", "cifar10", "--mirror", base)
    assert code == 0 and "present" in out and len(http_folder.requests) == 1  # here already: not fetched again
    import os
    assert "HARNESS_DATA_MIRROR" not in os.environ  # --mirror held for the command only


def test_a_missing_dataset_is_fetched_when_a_run_loads_it(http_folder, online, monkeypatch):
    """What `harness run` does on its driver: the loader downloads into the default data root, then reads it."""
    folder, base = http_folder
    cifar10_archive(folder, n=4)
    publish(monkeypatch, "cifar10", folder)
    monkeypatch.setenv("HARNESS_DATA_MIRROR", base + "/")
    data = load_dataset({"name": "cifar10"})
    assert len(data.train_y) == 20 and (online / "cifar-10-batches-py" / "data_batch_5").is_file()


def test_the_default_data_root_is_in_the_cache(http_folder, online, monkeypatch, tmp_path):
    folder, base = http_folder
    monkeypatch.delenv("HARNESS_DATA")
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    assert downloads.data_root() == tmp_path / "cache" / "data"
    monkeypatch.setenv("HARNESS_DATA_ROOT", str(tmp_path / "older"))  # the variable's older name still counts
    assert downloads.data_root() == tmp_path / "older" and downloads.data_root("given") .name == "given"


def test_a_corrupt_download_is_one_line_and_not_kept(http_folder, online, monkeypatch, capfd):
    folder, base = http_folder
    cifar10_archive(folder)
    publish(monkeypatch, "cifar10", folder)
    (folder / "cifar-10-python.tar.gz").write_bytes(b"<html>503 Service Unavailable</html>")  # what a proxy sends
    code, out, err = cli(capfd, "data", "get", "cifar10", "--mirror", base)
    assert code == 1
    line = out.strip()
    assert "\n" not in line and line.startswith("cifar10: missing: dataset cifar10: cannot download")
    assert "it was not kept" in line and "md5" in line
    assert not online.exists() or not [p for p in online.rglob("*") if not p.name.endswith(".lock")]


def test_an_unreachable_mirror_is_one_line(online, capfd):
    from tests.helpers import free_port

    code, out, _ = cli(capfd, "data", "get", "cifar100", "--mirror", f"http://127.0.0.1:{free_port()}")
    assert code == 1 and "\n" not in out.strip()
    assert "cannot download cifar-100-python.tar.gz" in out and "Connection refused" in out


def test_offline_never_downloads(http_folder, online, monkeypatch):
    folder, base = http_folder
    cifar10_archive(folder)
    publish(monkeypatch, "cifar10", folder)
    monkeypatch.setenv("HARNESS_DATA_MIRROR", base)
    monkeypatch.setenv("HARNESS_OFFLINE", "1")
    with pytest.raises(DatasetError) as info:
        load_dataset({"name": "cifar10"})
    assert "downloads are off" in str(info.value) and "harness data get cifar10" in str(info.value)
    monkeypatch.delenv("HARNESS_OFFLINE")
    with pytest.raises(DatasetError) as info:
        load_dataset({"name": "cifar10", "download": False})
    assert "dataset.download: false" in str(info.value)
    assert http_folder.requests == []


@pytest.mark.parametrize("name, into", [("fashion_mnist", "FashionMNIST/raw"), ("mnist", "MNIST/raw")])
def test_the_mnist_family_is_fetched_as_published(http_folder, online, monkeypatch, name, into):
    """Four gzipped IDX files each, kept gzipped in torchvision's layout."""
    folder, base = http_folder
    write_fashion_mnist(folder, n_train=30, n_test=10)
    publish(monkeypatch, name, folder)
    monkeypatch.setenv("HARNESS_DATA_MIRROR", base)
    data = load_dataset({"name": name})
    assert tuple(data.train_x.shape) == (30, 1, 28, 28) and data.name == name
    assert sorted(p.name for p in (online / into).iterdir()) == sorted(p.name for p in folder.glob("*.gz"))
    assert data.mean == ((0.1307,) if name == "mnist" else (0.2860,))


# ------------------------------------------------------------------------------------------- ImageNet's archives
WNIDS = ["n01440764", "n01443537"]


def jpeg(color) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(out, "JPEG")
    return out.getvalue()


def add_bytes(tar, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def imagenet_archives(folder, per_class=3, val_labels=(1, 0, 1, 0)):
    """ILSVRC2012's three files in their real formats: the devkit (meta.mat, the validation ground truth as
    ILSVRC2012 ids), the training tar of one tar per class, and the validation tar of unsorted JPEGs."""
    import scipy.io

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "wordnet_height", "num_train_images"]
    synsets = np.array([(i + 1, wnid, f"class {i}", "", 0, 0, per_class) for i, wnid in enumerate(WNIDS)]
                       + [(1001, "n00000001", "a parent", "", 2, 1, 0)],  # a non-leaf synset, which is skipped
                       dtype=[(f, object) for f in fields])
    mat = io.BytesIO()
    scipy.io.savemat(mat, {"synsets": synsets})
    with tarfile.open(folder / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        add_bytes(tar, "ILSVRC2012_devkit_t12/data/meta.mat", mat.getvalue())
        add_bytes(tar, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
                  "".join(f"{label + 1}\n" for label in val_labels).encode())
    with tarfile.open(folder / "ILSVRC2012_img_train.tar", "w") as tar:
        for c, wnid in enumerate(WNIDS):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as class_tar:
                for i in range(per_class):
                    add_bytes(class_tar, f"{wnid}_{i}.JPEG", jpeg((200 * c, 10 * i, 0)))
            add_bytes(tar, f"{wnid}.tar", inner.getvalue())
    with tarfile.open(folder / "ILSVRC2012_img_val.tar", "w") as tar:
        for i, _ in enumerate(val_labels):
            add_bytes(tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG", jpeg((0, 0, 50 * i)))


def test_imagenet_is_unpacked_from_its_official_archives(tmp_path, monkeypatch, capfd):
    """No valprep script: the validation images land in their class folders by the devkit's ground truth; a
    check does not unpack (hours on the real archives), `harness data get imagenet` does; an unpacking cut short is
    done again from scratch."""
    import torchvision.datasets.imagenet as tv_imagenet

    root = tmp_path / "data"
    folder = root / "imagenet"
    folder.mkdir(parents=True)
    imagenet_archives(folder)
    for key, (file, _) in list(tv_imagenet.ARCHIVE_META.items()):
        monkeypatch.setitem(tv_imagenet.ARCHIVE_META, key, (file, md5(folder / file)))

    code, out, _ = cli(capfd, "data", "check", "imagenet", "--data-root", root)
    assert code == 1 and "not unpacked yet" in out and "harness data get imagenet" in out
    assert not (folder / "train").exists()
    (folder / "train" / WNIDS[0]).mkdir(parents=True)  # what an unpacking killed midway leaves
    (folder / ".harness-unpacking").touch()
    code, out, err = cli(capfd, "data", "get", "imagenet", "--data-root", root)
    assert code == 0, out + err
    assert "imagenet: present: 6 training and 4 test images, 2 classes" in out
    assert not (folder / ".harness-unpacking").exists()
    assert sorted(p.name for p in (folder / "val").iterdir()) == WNIDS
    assert sorted(p.name for p in (folder / "val" / WNIDS[1]).iterdir()) == ["ILSVRC2012_val_00000001.JPEG",
                                                                              "ILSVRC2012_val_00000003.JPEG"]
    data = load_dataset({"name": "imagenet"}, str(root))
    assert data.test_y.tolist() == [0, 0, 1, 1] and data.train_y.tolist() == [0, 0, 0, 1, 1, 1]
