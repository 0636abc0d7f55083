"""Folders of image files: CINIC-10's PNG class folders, Tiny-ImageNet's layout, ImageNet and any tree of class
folders (torchvision's ImageFolder convention)."""
from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import torch

from harness.data.downloads import CHECK, fetch, may_download, why_not_downloaded
from harness.data.image_data import (DATASETS, DatasetError, ImageData, _image_data, _looked_in, _one_line,
                                   read_rgb_images)

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
    if folder is None and root and may_download(spec):
        fetch("tiny_imagenet", Path(root).expanduser())
        folder = candidates[0]
    if folder is None:
        raise DatasetError(f"dataset tiny_imagenet: no {layout} in {_looked_in(candidates)}; {TINY_IMAGENET_HOW}"
                           f"{why_not_downloaded('tiny_imagenet', spec)}")
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


IMAGENET_ARCHIVES = ("ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
IMAGENET_UNFINISHED = ".harness-unpacking"  # present while the archives are being unpacked


@DATASETS.register("imagenet")
def imagenet(spec: dict, root: str | None) -> ImageData:
    """ImageNet-1k as class folders: <root>/imagenet/{train,val}/<wnid>/*.JPEG (or <root>/{train,val}), unpacked
    once from the official archives (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and the devkit
    ILSVRC2012_devkit_t12.tar.gz) where those lie there instead: torchvision's ImageNet reads the devkit and sorts
    the validation images into their class folders."""
    candidates = [Path(root).expanduser() / "imagenet", Path(root).expanduser()] if root else []
    for folder in candidates:
        if (folder / "train").is_dir() and (folder / "val").is_dir() and not (folder / IMAGENET_UNFINISHED).exists():
            return _folder_dataset("imagenet", folder / "train", folder / "val", IMAGENET_MEAN, IMAGENET_STD)
    for folder in candidates:
        if all((folder / a).is_file() for a in IMAGENET_ARCHIVES):
            if spec.get("download") in (False, CHECK):
                raise DatasetError(f"dataset imagenet: the official archives in {folder} are not unpacked yet: "
                                   "run 'harness data get imagenet' (or a suite that does not set download: false)")
            unpack_imagenet(folder)
            return _folder_dataset("imagenet", folder / "train", folder / "val", IMAGENET_MEAN, IMAGENET_STD)
    raise DatasetError(
        f"dataset imagenet: no train/ and val/ class folders (imagenet/{{train,val}}/<wnid>/*.JPEG), nor the "
        f"official archives ({', '.join(IMAGENET_ARCHIVES)}), in {_looked_in(candidates)}; download the archives "
        "from image-net.org (an account is needed) into DIR/imagenet and pass --data-root DIR"
    )


def unpack_imagenet(folder: Path) -> None:
    """train/ and val/ class folders from the official archives in ``folder``, with torchvision's ImageNet (it
    checks the archives' MD5 sums).  A marker file stands while this runs: an unpacking cut short is done again,
    from scratch, the next time."""
    from filelock import FileLock
    from torchvision.datasets import ImageNet

    marker = folder / IMAGENET_UNFINISHED
    with FileLock(str(folder / ".imagenet.unpack.lock")):
        if (folder / "train").is_dir() and (folder / "val").is_dir() and not marker.exists():
            return  # another process unpacked it meanwhile
        if marker.exists():  # cut short earlier: what it left is ours to remove
            for leftover in ("train", "val", "meta.bin"):
                path = folder / leftover
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        marker.touch()
        try:
            for split in ("train", "val"):
                ImageNet(str(folder), split=split)
        except ModuleNotFoundError as e:
            raise DatasetError(f"dataset imagenet: reading the devkit needs {e.name}: pip install "
                               "\"okd-harness[imagenet]\"") from None
        except (RuntimeError, OSError, tarfile.TarError) as e:
            raise DatasetError(f"dataset imagenet: cannot unpack the archives in {folder} ({_one_line(e)})") from None
        marker.unlink()


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
