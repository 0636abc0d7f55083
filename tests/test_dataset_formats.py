"""CIFAR-10/100, CINIC-10 and Tiny-ImageNet from tiny files in their real on-disk formats, written here."""
import pickle

import numpy as np
import pytest
from PIL import Image

from harness.data.datasets import DatasetError, load_dataset
from tests.helpers import write_batch, write_cifar10


def one_line_error(spec, root, *needles):
    """Load and expect a DatasetError whose message is one line naming every one of ``needles``."""
    with pytest.raises(DatasetError) as info:
        load_dataset(spec, None if root is None else str(root))
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert str(needle) in message, (needle, message)
    return message


# ---------------------------------------------------------------------------------------------------- CIFAR


def test_cifar10_from_the_data_root(tmp_path):
    train, test = write_cifar10(tmp_path / "cifar-10-batches-py")
    data = load_dataset({"name": "cifar10"}, str(tmp_path))
    assert tuple(data.train_x.shape) == (40, 3, 32, 32) and tuple(data.test_x.shape) == (10, 3, 32, 32)
    assert str(data.train_x.dtype) == "torch.uint8" and str(data.train_y.dtype) == "torch.int64"
    # batch 2's first image follows batch 1; rows are channel-major R, G, B planes of 32x32
    first_of_batch2 = train[1][b"data"][0]
    assert np.array_equal(data.train_x[20].numpy(), first_of_batch2.reshape(3, 32, 32))
    assert np.array_equal(data.train_x[20, 1, 0, :].numpy(), first_of_batch2[1024:1056])  # green, top row
    assert data.train_y.tolist() == train[0][b"labels"] + train[1][b"labels"]
    assert data.test_y.tolist() == test[b"labels"]
    assert data.num_classes == 10 and data.mean == (0.4914, 0.4822, 0.4465) and data.std == (0.2470, 0.2435, 0.2616)


def test_cifar10_root_is_the_batches_folder_and_subsets(tmp_path):
    write_cifar10(tmp_path / "batches", batches=1)
    data = load_dataset({"name": "cifar10", "train_per_class": 1, "test_per_class": 1}, str(tmp_path / "batches"))
    assert len(data.train_y) == 10 and np.bincount(data.train_y.numpy()).tolist() == [1] * 10
    assert len(data.test_y) == 10


def test_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    train = write_batch(folder / "train", 30, b"fine_labels", seed=3, classes=100)
    test = write_batch(folder / "test", 5, b"fine_labels", seed=50, classes=100)
    data = load_dataset({"name": "cifar100", "train_per_class": 1}, str(tmp_path))
    assert data.num_classes == 100 and data.mean == (0.5071, 0.4865, 0.4409)
    assert data.train_y.tolist() == train[b"fine_labels"]  # 30 distinct classes: one each already
    assert data.test_y.tolist() == [50, 51, 52, 53, 54]
    assert np.array_equal(data.test_x[4].numpy(), test[b"data"][4].reshape(3, 32, 32))
    # the root may also be the cifar-100-python folder itself
    assert len(load_dataset({"name": "cifar100"}, str(folder)).train_y) == 30


def test_cifar_missing_folder_names_every_place_looked(tmp_path):
    message = one_line_error({"name": "cifar10"}, tmp_path, tmp_path / "cifar-10-batches-py", "data_batch_1",
                             "test_batch", "--data-root", "harness data get cifar10")  # the tests run offline
    assert f"{tmp_path / 'cifar-10-batches-py'}, {tmp_path};" in message
    one_line_error({"name": "cifar100"}, tmp_path, tmp_path / "cifar-100-python", "cifar-100-python.tar.gz")


def test_cifar_without_a_data_root_looks_in_the_default_one(monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    one_line_error({"name": "cifar10"}, None, tmp_path / "cache" / "data" / "cifar-10-batches-py")
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path / "mine"))
    one_line_error({"name": "cifar10"}, None, tmp_path / "mine" / "cifar-10-batches-py")


def test_cifar_missing_batch_is_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_batch(folder / "data_batch_2", 5)
    write_batch(folder / "test_batch", 5)
    one_line_error({"name": "cifar10"}, tmp_path, folder / "data_batch_1", "missing")
    write_batch(folder / "data_batch_1", 5)
    (folder / "test_batch").unlink()
    one_line_error({"name": "cifar10"}, tmp_path, folder / "test_batch", "missing")
    (tmp_path / "cifar-100-python").mkdir()
    one_line_error({"name": "cifar100"}, tmp_path, tmp_path / "cifar-100-python" / "train", "missing")


def test_not_a_cifar_batch_is_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder, batches=1, n=5, n_test=5)
    (folder / "data_batch_1").write_bytes(b"<html>404 Not Found</html>")
    one_line_error({"name": "cifar10"}, tmp_path, folder / "data_batch_1", "not a CIFAR batch")
    # a CIFAR-10 batch where CIFAR-100 is expected: no fine_labels key
    write_batch(tmp_path / "cifar-100-python" / "train", 5)
    write_batch(tmp_path / "cifar-100-python" / "test", 5)
    one_line_error({"name": "cifar100"}, tmp_path, tmp_path / "cifar-100-python" / "train", "not a CIFAR batch",
                   "fine_labels")
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": np.zeros((5, 100), np.uint8), b"labels": [0] * 5}, f)
    one_line_error({"name": "cifar10"}, tmp_path, folder / "data_batch_1", "not a CIFAR batch", "(N, 3072)")


# ------------------------------------------------------------------------------------------------- CINIC-10
CINIC_CLASSES = ("cat", "airplane", "bird")  # written unsorted: labels follow the sorted folder names


def write_cinic(folder, per_class=2, size=(32, 32)):
    """{split: {class: [HxWx3 arrays in file order]}}, saved as PNGs; the first train cat is greyscale."""
    rng = np.random.default_rng(0)
    written = {}
    for split in ("train", "valid", "test"):
        written[split] = {}
        for cls in CINIC_CLASSES:
            (folder / split / cls).mkdir(parents=True)
            written[split][cls] = []
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                if split == "train" and cls == "cat" and i == 0:
                    grey = pixels[..., 0]
                    Image.fromarray(grey, mode="L").save(folder / split / cls / f"cifar10-{split}-{i}.png")
                    pixels = np.stack([grey] * 3, axis=-1)
                else:
                    Image.fromarray(pixels).save(folder / split / cls / f"cifar10-{split}-{i}.png")
                written[split][cls].append(pixels)
    return written


def test_cinic10_reads_pngs_in_sorted_class_order(tmp_path):
    written = write_cinic(tmp_path / "cinic-10")
    data = load_dataset({"name": "cinic10"}, str(tmp_path))
    assert tuple(data.train_x.shape) == (6, 3, 32, 32) and tuple(data.test_x.shape) == (6, 3, 32, 32)
    assert str(data.train_x.dtype) == "torch.uint8" and data.num_classes == 3
    assert data.train_y.tolist() == [0, 0, 1, 1, 2, 2]  # airplane, bird, cat
    assert np.array_equal(data.train_x[1].numpy(), written["train"]["airplane"][1].transpose(2, 0, 1))
    assert np.array_equal(data.train_x[4].numpy(), written["train"]["cat"][0].transpose(2, 0, 1))  # grey → RGB
    assert np.array_equal(data.test_x[3].numpy(), written["test"]["bird"][1].transpose(2, 0, 1))
    assert data.mean == (0.47889522, 0.47227842, 0.43047404)
    small = load_dataset({"name": "cinic10", "train_per_class": 1}, str(tmp_path / "cinic-10"))  # root = cinic-10
    assert small.train_y.tolist() == [0, 1, 2] and len(small.test_y) == 6  # valid is not used


def test_cinic10_missing_folder_and_split(tmp_path):
    one_line_error({"name": "cinic10"}, tmp_path, tmp_path / "cinic-10", f"{tmp_path};",
                   "cinic-10/{train,valid,test}/<class>/*.png", "--data-root")
    (tmp_path / "cinic-10" / "train" / "cat").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "cinic-10" / "train" / "cat" / "a.png")
    one_line_error({"name": "cinic10"}, tmp_path, tmp_path / "cinic-10" / "test", "split folder is missing")


def test_cinic10_unreadable_and_wrong_size_images_are_named(tmp_path):
    write_cinic(tmp_path / "cinic-10", per_class=1)
    bad = tmp_path / "cinic-10" / "test" / "bird" / "cifar10-test-0.png"
    bad.write_bytes(b"not a png at all")
    one_line_error({"name": "cinic10"}, tmp_path, bad, "PIL cannot open")
    Image.new("RGB", (31, 32)).save(bad, format="PNG")
    one_line_error({"name": "cinic10"}, tmp_path, bad, "31x32", "expected 32x32")


# -------------------------------------------------------------------------------------------- Tiny-ImageNet
WNIDS = ("n02124075", "n01443537", "n09999999")  # class index = line order, not sorted order


def write_tiny_imagenet(folder, per_class=2, val=("n09999999", "n02124075", "n02124075", "n01443537")):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("".join(f"{w}\n" for w in WNIDS))
    for wnid in WNIDS:
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(images / f"{wnid}_{i}.JPEG")
    (folder / "val" / "images").mkdir(parents=True)
    lines = []
    for i, wnid in enumerate(val):
        name = f"val_{i}.JPEG"
        if i == 0:  # a greyscale JPEG, as some of the real ones are
            Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8), mode="L").save(folder / "val/images" / name)
        else:
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "val/images" / name)
        lines.append(f"{name}\t{wnid}\t0\t0\t63\t63\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(lines))


def test_tiny_imagenet_train_and_val(tmp_path):
    write_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    data = load_dataset({"name": "tiny_imagenet"}, str(tmp_path))
    assert tuple(data.train_x.shape) == (6, 3, 64, 64) and tuple(data.test_x.shape) == (4, 3, 64, 64)
    assert str(data.test_x.dtype) == "torch.uint8" and data.num_classes == 3
    assert data.train_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.test_y.tolist() == [2, 0, 0, 1]
    grey = data.test_x[0].numpy()  # converted to RGB: three equal planes
    assert np.array_equal(grey[0], grey[1]) and np.array_equal(grey[1], grey[2])
    assert data.mean == (0.4802, 0.4481, 0.3975) and data.std == (0.2770, 0.2691, 0.2821)
    small = load_dataset({"name": "tiny_imagenet", "train_per_class": 1, "test_per_class": 1},
                         str(tmp_path / "tiny-imagenet-200"))  # root = the dataset folder itself
    assert small.train_y.tolist() == [0, 1, 2] and small.test_y.tolist() == [2, 0, 1]


def test_tiny_imagenet_missing_folder(tmp_path):
    one_line_error({"name": "tiny_imagenet"}, tmp_path, tmp_path / "tiny-imagenet-200", f"{tmp_path};",
                   "wnids.txt", "val/val_annotations.txt", "tiny-imagenet-200.zip")


def test_tiny_imagenet_missing_val_annotations(tmp_path):
    write_tiny_imagenet(tmp_path / "tiny-imagenet-200", per_class=1)
    annotations = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    annotations.unlink()
    one_line_error({"name": "tiny_imagenet"}, tmp_path, annotations, "missing")


def test_tiny_imagenet_unknown_wnid_in_annotations(tmp_path):
    write_tiny_imagenet(tmp_path / "tiny-imagenet-200", per_class=1, val=("n02124075", "n00000042"))
    folder = tmp_path / "tiny-imagenet-200"
    one_line_error({"name": "tiny_imagenet"}, tmp_path, f"{folder / 'val' / 'val_annotations.txt'}:2",
                   "'n00000042'", "val_1.JPEG", folder / "wnids.txt")


def test_tiny_imagenet_unreadable_and_wrong_size_images_are_named(tmp_path):
    write_tiny_imagenet(tmp_path / "tiny-imagenet-200", per_class=1, val=("n02124075",))
    image = tmp_path / "tiny-imagenet-200" / "train" / "n01443537" / "images" / "n01443537_0.JPEG"
    Image.new("RGB", (32, 32)).save(image, format="JPEG")
    one_line_error({"name": "tiny_imagenet"}, tmp_path, image, "32x32", "expected 64x64")
    image.write_bytes(b"\xff\xd8\xff truncated")
    one_line_error({"name": "tiny_imagenet"}, tmp_path, image, "PIL cannot open")


def test_harness_data_check_says_what_is_here_from_where_with_its_fingerprint(tmp_path, capfd):
    """One line per dataset: present (its images, classes and checksum, the checksum a record keeps) or missing (the
    loader's own line, naming where it looked); exit 1 where a dataset asked for is missing; an unknown name is the
    registry's one line."""
    from harness.data.fingerprint import fingerprint
    from tests.helpers import cli

    write_cifar10(tmp_path / "cifar-10-batches-py")
    checksum = fingerprint(load_dataset({"name": "cifar10"}, str(tmp_path)))["checksum"]
    code, out, _ = cli(capfd, "data", "check", "cifar10", "fashion_mnist_mini", "--data-root", tmp_path)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 2
    assert lines[0].startswith("cifar10: present: 40 training and 10 test images, 10 classes;") and checksum in lines[0]
    assert lines[1].startswith("fashion_mnist_mini: present:")
    code, out, _ = cli(capfd, "data", "check", "cifar100", "--data-root", tmp_path)
    assert code == 1 and out.startswith("cifar100: missing: ") and str(tmp_path) in out and len(out.splitlines()) == 1
    code, out, err = cli(capfd, "data", "check", "cifar1000")
    assert code == 2 and "unknown dataset 'cifar1000' (did you mean 'cifar100'?)" in err
