"""A record knows its data (issue 17): every record carries the fingerprint of the data it trained on, a finished
cell is reused only on that data, other data trains under its own key (the first data's hashes stay as they are),
and a dataset that does not fit its recipe is one line before Ray starts."""
import pickle
import shutil

import numpy as np
import yaml
from PIL import Image

from harness.data.datasets import load_dataset
from harness.data.fingerprint import fingerprint
from harness.results.store import ResultStore
from harness.suite.schema import load_suite
from tests.helpers import cli, harness_main, records, TINY_RECIPE, tiny_suite_dict, write_cifar10


def test_the_fingerprint_follows_the_content_and_the_class_sizes():
    spec = {"name": "fashion_mnist_mini", "train_per_class": 10, "test_per_class": 5}
    first, again = fingerprint(load_dataset(spec)), fingerprint(load_dataset(spec))
    assert first == again
    assert first["train"] == {"images": 100, "per_class": 10} and first["test"] == {"images": 50, "per_class": 5}
    data = load_dataset(spec)
    data.train_x[3, 0, 5, 5] ^= 1  # one bit of one pixel
    assert fingerprint(data)["checksum"] != first["checksum"]
    data = load_dataset(spec)
    data.train_y[0] = (data.train_y[0] + 1) % 10  # one label
    changed = fingerprint(data)
    assert changed["checksum"] != first["checksum"] and changed["train"]["per_class"][data.train_y[0]] == 11


def _image_tree(root, sizes):
    for split in ("train", "test"):
        for c, size in enumerate(sizes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(3):
                Image.new("RGB", size, (40 * c, 10 * i, 0)).save(folder / f"{i}.png")


def test_a_file_tree_is_fingerprinted_by_its_names_wherever_it_lives(tmp_path):
    _image_tree(tmp_path / "a", [(12, 12), (12, 12)])
    shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "b")
    here = load_dataset({"name": "imagefolder", "root": str(tmp_path / "a")})
    there = load_dataset({"name": "imagefolder", "root": str(tmp_path / "elsewhere" / "b")})
    assert here.image_size == (12, 12)  # one size: served as it is, no crop size needed
    assert fingerprint(here) == fingerprint(there)
    (tmp_path / "a" / "train" / "class1" / "2.png").rename(tmp_path / "a" / "train" / "class1" / "9.png")
    assert fingerprint(load_dataset({"name": "imagefolder", "root": str(tmp_path / "a")})) != fingerprint(there)


def test_an_image_tree_of_mixed_sizes_without_a_crop_size_is_one_line_before_ray(tmp_path, capfd):
    _image_tree(tmp_path / "data", [(12, 12), (16, 10)])
    suite = tiny_suite_dict(dataset={"name": "imagefolder", "root": str(tmp_path / "data")}, methods=["ind"], seeds=[0])
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(suite))
    code, out, err = cli(capfd, "run", path, "--results", tmp_path / "results", "--reports", tmp_path / "reports")
    out = out + err
    lines = out.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in out, out
    assert "cannot read its first batch" in lines[0] and "not all of one size" in lines[0], out
    assert "augment.train_size" in lines[0] and not (tmp_path / "results" / "cells").exists()


def _copy_with_one_pixel_changed(source, target):
    shutil.copytree(source, target)
    batch_file = target / "cifar-10-batches-py" / "data_batch_1"
    batch = pickle.loads(batch_file.read_bytes())
    batch[b"data"] = np.array(batch[b"data"])
    batch[b"data"][0, 0] ^= 0xFF
    batch_file.write_bytes(pickle.dumps(batch, protocol=2))


def _run(capfd, path, tmp_path, address) -> str:
    code, out = harness_main(capfd, "run", path, "--results", tmp_path / "results", "--reports", tmp_path / "reports",
                             address=address)
    assert code == 0, out
    return out


def test_a_finished_cell_is_reused_only_on_its_own_data(tmp_path, monkeypatch, ray_address, capfd):
    write_cifar10(tmp_path / "a" / "cifar-10-batches-py", batches=2, n=20, n_test=10)
    _copy_with_one_pixel_changed(tmp_path / "a", tmp_path / "b")
    suite = tiny_suite_dict(dataset={"name": "cifar10"}, methods=["ind"], seeds=[0],
                            recipe={**TINY_RECIPE, "epochs": 1, "batch_size": 16})
    path = tmp_path / "cifar.yaml"
    path.write_text(yaml.safe_dump(suite))
    (plain,) = load_suite(path).cells
    results = tmp_path / "results"

    def run(root) -> str:
        monkeypatch.setenv("HARNESS_DATA_ROOT", str(root))
        return _run(capfd, path, tmp_path, ray_address)

    out = run(tmp_path / "a")
    first = ResultStore(results).get(plain.hash)
    assert first["status"] == "ok"
    assert first["data"] == fingerprint(load_dataset({"name": "cifar10"}, str(tmp_path / "a")))
    assert first["data"]["train"] == {"images": 40, "per_class": 4}

    out = run(tmp_path / "b")  # one pixel differs: not reused, trained under its own key, the first kept
    said = [line for line in out.splitlines() if "is not what" in line]
    assert len(said) == 1 and "1 finished cell(s)" in said[0] and "keyed apart" in said[0], out
    assert "0 finished already, 1 to run" in out
    found = records(results)
    assert len(found) == 2 and found[plain.hash] == first  # the first data's result is as it was
    (other,) = [r for h, r in found.items() if h != plain.hash]
    assert other["status"] == "ok" and other["data"]["checksum"] != first["data"]["checksum"]
    assert other["cell"]["dataset"]["data"] == f"d{other['data']['checksum']}"
    (data_line,) = [line for line in (tmp_path / "reports" / "tiny.md").read_text().splitlines()
                    if line.startswith("- Data: ")]
    assert f"checksum {other['data']['checksum']}, 40 training images (4 per class)" in data_line
    assert f"so these cells are keyed apart (d{other['data']['checksum']})" in data_line

    assert "1 finished already, 0 to run" in run(tmp_path / "b")  # each data finds its own result
    out = run(tmp_path / "a")
    assert "1 finished already, 0 to run" in out and "is not what" not in out
    assert len(records(results)) == 2
