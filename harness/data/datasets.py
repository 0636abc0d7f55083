"""Datasets by name.  Each loader returns whole uint8 tensors: the engine augments on the training device."""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from harness.registry import Registry

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
EMBEDDED_FASHION_MNIST = Path(__file__).with_name("embedded") / "fashion_mnist_mini.npz"


class DatasetError(RuntimeError):
    """A dataset that is missing or malformed; the message says where we looked and how to get it."""


@dataclass
class ImageData:
    """A dataset: uint8 images (N, C, H, W) held in memory, or lists of image files (ImageNet-sized data),
    with int64 labels.  File datasets are RGB; their network input size comes from the recipe."""

    name: str
    train_x: torch.Tensor | list[str]
    train_y: torch.Tensor
    test_x: torch.Tensor | list[str]
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    native_size: tuple[int, int] | None = None  # of file datasets, where all images share one size

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train_x, torch.Tensor)

    @property
    def in_chans(self) -> int:
        return self.train_x.shape[1] if self.in_memory else 3

    @property
    def image_size(self) -> tuple[int, int] | None:
        return tuple(self.train_x.shape[2:]) if self.in_memory else self.native_size


DatasetLoader = Callable[[dict, "str | None"], ImageData]
DATASETS: Registry[DatasetLoader] = Registry("dataset")


def load_dataset(spec: dict, data_root: str | None = None) -> ImageData:
    """Load ``spec['name']``, then keep the first ``train_per_class`` / ``test_per_class`` images per class."""
    data = DATASETS.get(spec["name"])(spec, spec.get("root") or data_root or os.environ.get("HARNESS_DATA_ROOT"))
    for split, key in (("train", "train_per_class"), ("test", "test_per_class")):
        if spec.get(key):
            x, y = balanced_subset(getattr(data, f"{split}_x"), getattr(data, f"{split}_y"), spec[key])
            setattr(data, f"{split}_x", x)
            setattr(data, f"{split}_y", y)
    if spec.get("label_noise"):
        data.train_y = symmetric_label_noise(data.train_y, spec["label_noise"], data.num_classes)
    return data


LABEL_NOISE_SEED = 0  # one draw of the noisy labels for every cell and seed: the seeds compare on the same data


def symmetric_label_noise(y, rate: float, num_classes: int, seed: int = LABEL_NOISE_SEED):
    """Each label replaced, with probability ``rate``, by a class drawn uniformly from all classes (so it stays
    right with probability 1/C): the "symmetric" noise of the noisy-label literature.  Returns new labels of the
    same type; the draw depends only on ``seed`` and the number of labels."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).clone()
    flip = torch.rand(len(labels), generator=generator) < rate
    labels[flip] = torch.randint(0, num_classes, (int(flip.sum()),), generator=generator).to(labels.dtype)
    return labels if isinstance(y, torch.Tensor) else labels.numpy()


def balanced_subset(x, y, per_class: int):
    """The first ``per_class`` items of every class, in their original order."""
    labels = np.asarray(y)
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
    keep.sort()
    if isinstance(x, list):  # files of a folder dataset
        return [x[i] for i in keep], y[torch.from_numpy(keep)]
    if isinstance(x, torch.Tensor):
        index = torch.from_numpy(keep)
        return x[index], y[index]
    return x[keep], y[keep]


# ---------------------------------------------------------------------------------------------- IDX files
_IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped): a big-endian header, then unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetError(f"{path}: header says shape {shape} but the file holds {body.size} values")
    return body.reshape(shape).copy()  # frombuffer is read-only; torch wants writable memory


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.exists():
            return candidate
    return None


def read_fashion_mnist(folder: Path):
    """((train_x, train_y), (test_x, test_y)) as numpy arrays from the four IDX files in ``folder``."""
    splits = []
    for split in ("train", "test"):
        images, labels = (_find_idx(folder, stem) for stem in _IDX_NAMES[split])
        if images is None or labels is None:
            raise DatasetError(f"{folder}: no {split} IDX files")
        x, y = read_idx(images), read_idx(labels)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DatasetError(f"{folder}: {split} images {x.shape} and labels {y.shape} do not match")
        splits.append((x[:, None], y.astype(np.int64)))
    return tuple(splits)


def _fashion_mnist_data(name: str, train, test) -> ImageData:
    (xtr, ytr), (xte, yte) = train, test
    return ImageData(
        name=name,
        train_x=torch.from_numpy(np.ascontiguousarray(xtr)),
        train_y=torch.from_numpy(np.asarray(ytr, dtype=np.int64)),
        test_x=torch.from_numpy(np.ascontiguousarray(xte)),
        test_y=torch.from_numpy(np.asarray(yte, dtype=np.int64)),
        num_classes=10,
        mean=(0.2860,),
        std=(0.3530,),
    )


@DATASETS.register("fashion_mnist")
def fashion_mnist(spec: dict, root: str | None) -> ImageData:
    """Full Fashion-MNIST from IDX files: the data root, its torchvision layout, or Debian's package."""
    candidates = []
    if root:
        base = Path(root).expanduser()
        candidates += [base, base / "fashion-mnist", base / "FashionMNIST" / "raw"]
    candidates.append(DEBIAN_FASHION_MNIST)
    for folder in candidates:
        if _find_idx(folder, _IDX_NAMES["train"][0]):
            return _fashion_mnist_data("fashion_mnist", *read_fashion_mnist(folder))
    if spec.get("download") and root:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(root, train=True, download=True)
        FashionMNIST(root, train=False, download=True)
        return _fashion_mnist_data("fashion_mnist", *read_fashion_mnist(Path(root) / "FashionMNIST" / "raw"))
    looked = ", ".join(str(c) for c in candidates)
    raise DatasetError(
        f"dataset fashion_mnist: no train-images-idx3-ubyte[.gz] (IDX layout) in {looked}; install Debian's "
        "'dataset-fashion-mnist', pass --data-root DIR, or set dataset.download: true where a network exists"
    )


@DATASETS.register("fashion_mnist_mini")
def fashion_mnist_mini(spec: dict, root: str | None) -> ImageData:
    """The class-balanced Fashion-MNIST subset shipped inside the package (300 train / 200 test per class)."""
    if not EMBEDDED_FASHION_MNIST.exists():
        raise DatasetError(f"dataset fashion_mnist_mini: {EMBEDDED_FASHION_MNIST} is missing; reinstall the package")
    with np.load(EMBEDDED_FASHION_MNIST) as z:
        return _fashion_mnist_data("fashion_mnist_mini", (z["train_x"], z["train_y"]), (z["test_x"], z["test_y"]))


@DATASETS.register("synthetic_cifar100")
def synthetic_cifar100(spec: dict, root: str | None) -> ImageData:
    """Random 32x32 RGB images in 100 classes (50 train / 10 test per class): for benchmarks, not for tables."""
    generator = torch.Generator().manual_seed(0)
    train_n, test_n = 100 * (spec.get("train_per_class") or 50), 100 * (spec.get("test_per_class") or 10)
    images = torch.randint(0, 256, (train_n + test_n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.arange(train_n + test_n) % 100
    return ImageData(name="synthetic_cifar100", train_x=images[:train_n], train_y=labels[:train_n],
                     test_x=images[train_n:], test_y=labels[train_n:], num_classes=100,
                     mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762))


# ------------------------------------------------------------------------------- shared by the loaders below
def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _looked_in(candidates: list[Path]) -> str:
    if not candidates:
        return "no folder (no data root given: pass --data-root DIR, set dataset.root or $HARNESS_DATA_ROOT)"
    return ", ".join(str(c) for c in candidates)


def _image_data(name: str, train, test, num_classes: int, mean, std) -> ImageData:
    (xtr, ytr), (xte, yte) = train, test
    return ImageData(
        name=name,
        train_x=torch.from_numpy(np.ascontiguousarray(xtr, dtype=np.uint8)),
        train_y=torch.from_numpy(np.asarray(ytr, dtype=np.int64)),
        test_x=torch.from_numpy(np.ascontiguousarray(xte, dtype=np.uint8)),
        test_y=torch.from_numpy(np.asarray(yte, dtype=np.int64)),
        num_classes=num_classes,
        mean=tuple(mean),
        std=tuple(std),
    )


def read_rgb_images(paths: list[Path], size: tuple[int, int]) -> np.ndarray:
    """Decode image files with PIL into one uint8 array (N, 3, H, W); greyscale or palette images become RGB."""
    from PIL import Image

    height, width = size
    out = np.empty((len(paths), 3, height, width), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
        except Exception as e:  # PIL raises OSError, ValueError, SyntaxError... for unreadable files
            raise DatasetError(f"{path}: PIL cannot open this image ({_one_line(e)})") from None
        if rgb.size != (width, height):
            raise DatasetError(f"{path}: image is {rgb.size[0]}x{rgb.size[1]} pixels, expected {width}x{height}")
        out[i] = np.asarray(rgb).transpose(2, 0, 1)
    return out


# --------------------------------------------------------------------------------------- CIFAR-10 / CIFAR-100
_CIFAR = {
    # name: (folder, train batches, test batch, label key, classes, mean, std, torchvision class, tarball)
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", b"labels", 10,
                (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "CIFAR10",
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", ("train",), "test", b"fine_labels", 100,
                 (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "CIFAR100",
                 "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}


def read_cifar_batch(path: Path, label_key: bytes, num_classes: int):
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) from one pickled CIFAR batch (python version)."""
    import pickle

    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise DatasetError(f"{path}: CIFAR batch file is missing") from None
    except Exception as e:  # UnpicklingError, EOFError, ... anything that is not a pickle
        raise DatasetError(f"{path}: not a CIFAR batch (cannot unpickle: {_one_line(e)})") from None
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: not a CIFAR batch (a pickled {type(batch).__name__}, expected a dict)")
    found = {}
    for key in (b"data", label_key):
        value = batch.get(key, batch.get(key.decode()))
        if value is None:
            raise DatasetError(f"{path}: not a CIFAR batch (no {key!r} key; keys are {sorted(batch, key=repr)})")
        found[key] = value
    data = np.asarray(found[b"data"])
    labels = np.asarray(found[label_key])
    if data.dtype.kind not in "biu" or labels.dtype.kind not in "biu":
        raise DatasetError(f"{path}: not a CIFAR batch (data of type {data.dtype} and labels of type {labels.dtype}; "
                           "expected integers)")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise DatasetError(f"{path}: not a CIFAR batch (data {data.shape} and labels {labels.shape}; "
                           "expected (N, 3072) and (N,))")
    if data.dtype != np.uint8 and data.size and (data.min() < 0 or data.max() > 255):
        raise DatasetError(f"{path}: not a CIFAR batch (pixel values run from {data.min()} to {data.max()})")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"{path}: labels run from {labels.min()} to {labels.max()}, outside 0..{num_classes - 1}")
    return data.astype(np.uint8).reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _load_cifar(name: str, spec: dict, root: str | None) -> ImageData:
    folder_name, train_names, test_name, label_key, classes, mean, std, tv_class, url = _CIFAR[name]
    names = (*train_names, test_name)
    candidates = []
    if root:
        base = Path(root).expanduser()
        candidates = [base / folder_name, base]
    # the conventional sub-folder if it exists at all, else the root itself if it holds any batch file
    folder = next((c for c in candidates[:1] if c.is_dir()), None) or next(
        (c for c in candidates[1:] if any((c / n).is_file() for n in names)), None)
    if folder is None and spec.get("download") and root:
        try:
            from torchvision import datasets as tv_datasets

            getattr(tv_datasets, tv_class)(root, train=True, download=True)
            getattr(tv_datasets, tv_class)(root, train=False, download=True)
        except Exception as e:
            raise DatasetError(f"dataset {name}: download into {root} with torchvision failed "
                               f"({type(e).__name__}: {_one_line(e)}); fetch {url} and extract it there") from None
        folder = candidates[0]
    if folder is None:
        raise DatasetError(
            f"dataset {name}: no {folder_name}/ (the pickled 'python version': {', '.join(names)}) in "
            f"{_looked_in(candidates)}; extract {url} into DIR and pass --data-root DIR, "
            "or set dataset.download: true where a network exists"
        )
    present = [n for n in train_names if (folder / n).is_file()]
    if train_names[0] not in present:  # data_batch_1 (CIFAR-10) or train (CIFAR-100) is required
        raise DatasetError(f"{folder / train_names[0]}: CIFAR batch file is missing (expected {', '.join(names)} "
                           f"in {folder}); re-extract {url}")
    if not (folder / test_name).is_file():
        raise DatasetError(f"{folder / test_name}: CIFAR batch file is missing (expected {', '.join(names)} "
                           f"in {folder}); re-extract {url}")
    parts = [read_cifar_batch(folder / n, label_key, classes) for n in present]
    train = (np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]))
    test = read_cifar_batch(folder / test_name, label_key, classes)
    return _image_data(name, train, test, classes, mean, std)


@DATASETS.register("cifar10")
def cifar10(spec: dict, root: str | None) -> ImageData:
    """CIFAR-10 from torchvision's cifar-10-batches-py/ (data_batch_1..5, test_batch) in the data root."""
    return _load_cifar("cifar10", spec, root)


@DATASETS.register("cifar100")
def cifar100(spec: dict, root: str | None) -> ImageData:
    """CIFAR-100 (fine labels) from torchvision's cifar-100-python/ (train, test) in the data root."""
    return _load_cifar("cifar100", spec, root)


# ------------------------------------------------------------------------------------------------- CINIC-10
CINIC10_HOW = ("get CINIC-10.tar.gz (see github.com/BayesWatch/cinic-10), extract it into DIR/cinic-10 "
               "and pass --data-root DIR")


def _class_folders(split: Path) -> list[str]:
    return sorted(p.name for p in split.iterdir() if p.is_dir())


@DATASETS.register("cinic10")
def cinic10(spec: dict, root: str | None) -> ImageData:
    """CINIC-10 from cinic-10/{train,test}/<class>/*.png: trains on 'train' only (as ACKD does), tests on 'test'.

    Classes are the sorted folder names of ``train`` ('valid', the third split, is not used); images are 32x32
    PNGs, greyscale ones converted to RGB.
    """
    candidates = []
    if root:
        base = Path(root).expanduser()
        candidates = [base / "cinic-10", base]
    folder = next((c for c in candidates[:1] if c.is_dir()), None) or next(
        (c for c in candidates[1:] if (c / "train").is_dir() or (c / "test").is_dir()), None)
    if folder is None:
        raise DatasetError(f"dataset cinic10: no cinic-10/ (CINIC-10 layout: cinic-10/{{train,valid,test}}/<class>/"
                           f"*.png) in {_looked_in(candidates)}; {CINIC10_HOW}")
    classes = None
    splits = []
    for split in ("train", "test"):
        split_dir = folder / split
        if not split_dir.is_dir():
            raise DatasetError(f"{split_dir}: CINIC-10 split folder is missing (expected {folder}/"
                               f"{{train,valid,test}}/<class>/*.png); {CINIC10_HOW}")
        names = _class_folders(split_dir)
        if classes is None:
            classes = names
            if not classes:
                raise DatasetError(f"{split_dir}: no class folders (expected {split_dir}/<class>/*.png)")
        elif names != classes:
            raise DatasetError(f"{split_dir}: class folders {names} differ from those in {folder / 'train'} "
                               f"{classes}")
        paths, labels = [], []
        for label, cls in enumerate(classes):
            files = sorted(p for p in (split_dir / cls).iterdir() if p.suffix.lower() == ".png")
            if not files:
                raise DatasetError(f"{split_dir / cls}: no *.png images in this CINIC-10 class folder")
            paths += files
            labels += [label] * len(files)
        splits.append((read_rgb_images(paths, (32, 32)), labels))
    return _image_data("cinic10", *splits, len(classes),
                       (0.47889522, 0.47227842, 0.43047404), (0.24205776, 0.23828046, 0.25874835))


# ---------------------------------------------------------------------------------------------- Tiny-ImageNet
TINY_IMAGENET_HOW = "unzip http://cs231n.stanford.edu/tiny-imagenet-200.zip into DIR and pass --data-root DIR"


@DATASETS.register("tiny_imagenet")
def tiny_imagenet(spec: dict, root: str | None) -> ImageData:
    """Tiny-ImageNet-200 from tiny-imagenet-200/ (wnids.txt, train/, val/): the labelled val set is the test set.

    Class index = line order of wnids.txt; images are 64x64 JPEGs, greyscale ones converted to RGB.
    """
    candidates = []
    if root:
        base = Path(root).expanduser()
        candidates = [base / "tiny-imagenet-200", base]
    folder = next((c for c in candidates[:1] if c.is_dir()), None) or next(
        (c for c in candidates[1:] if (c / "wnids.txt").is_file()), None)
    layout = ("tiny-imagenet-200/ with wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and "
              "val/val_annotations.txt")
    if folder is None:
        raise DatasetError(f"dataset tiny_imagenet: no {layout} in {_looked_in(candidates)}; {TINY_IMAGENET_HOW}")
    wnids_file = folder / "wnids.txt"
    if not wnids_file.is_file():
        raise DatasetError(f"{wnids_file}: Tiny-ImageNet class list is missing (expected {layout}); "
                           f"{TINY_IMAGENET_HOW}")
    wnids = [line.strip() for line in wnids_file.read_text().splitlines() if line.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise DatasetError(f"{wnids_file}: expected one distinct class id per line, found {len(wnids)} lines "
                           f"with {len(set(wnids))} distinct ids")
    index = {wnid: i for i, wnid in enumerate(wnids)}

    train_paths, train_labels = [], []
    for label, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpeg", ".jpg")) if images.is_dir() else []
        if not files:
            raise DatasetError(f"{images}: no *.JPEG training images for class {wnid} (expected {layout}); "
                               f"{TINY_IMAGENET_HOW}")
        train_paths += files
        train_labels += [label] * len(files)

    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise DatasetError(f"{annotations}: Tiny-ImageNet val annotations are missing (expected {layout}); "
                           f"{TINY_IMAGENET_HOW}")
    test_paths, test_labels = [], []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DatasetError(f"{annotations}:{number}: expected 'file<TAB>wnid<TAB>box', got {line.strip()!r}")
        file_name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise DatasetError(f"{annotations}:{number}: class {wnid!r} (for {file_name}) is not in {wnids_file}")
        test_paths.append(folder / "val" / "images" / file_name)
        test_labels.append(index[wnid])
    if not test_paths:
        raise DatasetError(f"{annotations}: no annotations (expected 'file<TAB>wnid<TAB>box' lines)")

    train = (read_rgb_images(train_paths, (64, 64)), train_labels)
    test = (read_rgb_images(test_paths, (64, 64)), test_labels)
    return _image_data("tiny_imagenet", train, test, len(wnids), (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821))


# ------------------------------------------------------------------------------------ folders of image files
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def scan_class_folders(folder: Path, classes: list[str] | None = None) -> tuple[list[str], torch.Tensor, list[str]]:
    """(files, labels, classes) of a tree ``folder/<class>/<image>``, classes in sorted order (torchvision's
    ImageFolder convention); ``classes`` pins the class list (the test split must use the training one)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder is missing (expected {folder}/<class>/<image files>)")
    found = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if classes is None:
        classes = found
    elif found != classes:
        raise DatasetError(f"{folder}: class folders {found[:5]}... differ from the training split's {classes[:5]}...")
    if not classes:
        raise DatasetError(f"{folder}: no class folders (expected {folder}/<class>/<image files>)")
    try:
        samples = make_dataset(str(folder), {c: i for i, c in enumerate(classes)}, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:
        raise DatasetError(f"{folder}: {_one_line(e)}") from None
    files = [path for path, _ in samples]
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return files, labels, classes


def _folder_dataset(name: str, train_dir: Path, test_dir: Path, mean, std, size_check: int = 0) -> ImageData:
    """``size_check``: up to this many files, every image's header is read, and a tree of one image size is served at
    that size (no crop size needed); ImageNet's sizes differ, so it is not read there."""
    train_files, train_y, classes = scan_class_folders(train_dir)
    test_files, test_y, _ = scan_class_folders(test_dir, classes)
    files = train_files + test_files
    return ImageData(name=name, train_x=train_files, train_y=train_y, test_x=test_files, test_y=test_y,
                     num_classes=len(classes), mean=mean, std=std,
                     native_size=_one_size(files) if len(files) <= size_check else None)


def _one_size(files: list[str]) -> tuple[int, int] | None:
    """(height, width) every image file shares (from its header alone), else None; an unreadable file is one line."""
    from PIL import Image, UnidentifiedImageError

    sizes = set()
    for path in files:
        try:
            with Image.open(path) as image:
                sizes.add(image.size)
        except (OSError, UnidentifiedImageError) as e:
            raise DatasetError(f"{path}: not a readable image ({_one_line(e)})") from None
        if len(sizes) > 1:
            return None
    if not sizes:
        return None
    (width, height), = sizes
    return height, width


@DATASETS.register("imagenet")
def imagenet(spec: dict, root: str | None) -> ImageData:
    """ImageNet-1k as class folders: <root>/imagenet/{train,val}/<wnid>/*.JPEG (or <root>/{train,val})."""
    candidates = [Path(root).expanduser() / "imagenet", Path(root).expanduser()] if root else []
    for folder in candidates:
        if (folder / "train").is_dir() and (folder / "val").is_dir():
            return _folder_dataset("imagenet", folder / "train", folder / "val", IMAGENET_MEAN, IMAGENET_STD)
    raise DatasetError(
        f"dataset imagenet: no train/ and val/ class folders (imagenet/{{train,val}}/<wnid>/*.JPEG, the val "
        f"images sorted into class folders) {_looked_in(candidates)}; get ILSVRC2012 from image-net.org, "
        "arrange it so (e.g. with its valprep script) and pass --data-root DIR"
    )


@DATASETS.register("imagefolder")
def imagefolder(spec: dict, root: str | None) -> ImageData:
    """Any tree of class folders: <root>/train/<class>/* and <root>/test/<class>/* (or val/); ImageNet
    normalisation.  Name the folder with dataset.root."""
    if not root:
        raise DatasetError("dataset imagefolder: needs a folder: set dataset.root (or pass --data-root DIR)")
    base = Path(root).expanduser()
    test = next((base / t for t in ("test", "val") if (base / t).is_dir()), base / "test")
    if not (base / "train").is_dir():
        raise DatasetError(f"dataset imagefolder: no {base}/train (expected {base}/train/<class>/<images> and "
                           f"{base}/test/<class>/<images> or {base}/val/<class>/<images>)")
    return _folder_dataset("imagefolder", base / "train", test, IMAGENET_MEAN, IMAGENET_STD, size_check=200_000)
