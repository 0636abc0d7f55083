"""Weights files of finished stage cells (``results/weights/<hash>.pt``) and of user checkpoints: written atomically
with their SHA-256, read back into networks created by name through timm, frozen, with their provenance."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from harness.config.cell import Cell
from harness.models.layouts import KEY_LAYOUTS, fit_state, misfit
from harness.fetching import FetchError, cache_folder, download, file_digest
from harness.results.location import readable_as_umask_allows
WEIGHTS_FORMAT = 1


class StageError(RuntimeError):
    """A stage's weights are missing, unreadable or not the ones expected, or a stage cannot be defined; the
    message is one line."""


def file_sha256(path: str | Path) -> str:
    return file_digest(path, "sha256")


def save_networks(path: Path, cell: Cell, networks: list[tuple[str, nn.Module]], num_classes: int,
                  in_chans: int, modules: dict[str, nn.Module] | None = None) -> str:
    """Write a cell's deployed networks (and any other ``modules`` a later stage needs, such as FT's
    paraphraser) atomically; returns the file's SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": WEIGHTS_FORMAT, "cell_hash": cell.hash, "cell": cell.to_dict(),
        "num_classes": num_classes, "in_chans": in_chans,
        "networks": [{"model": name, "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}}
                     for name, net in networks],
        "modules": {key: {k: v.detach().cpu() for k, v in module.state_dict().items()}
                    for key, module in (modules or {}).items()},
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        readable_as_umask_allows(fd)
        # into an open file, not a path: torch names the archive's folder after a path it is given (here the
        # random temporary name), so the same networks would give files that differ byte for byte
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return file_sha256(path)


def _state_dicts(payload, path: Path, models: tuple[str, ...]) -> list[tuple[str, dict]]:
    """(model name, state dict) pairs from our weights format or a plain single-network checkpoint."""
    if isinstance(payload, dict) and "networks" in payload:
        return [(n["model"], n["state_dict"]) for n in payload["networks"]]
    if isinstance(payload, dict):
        for key in ("state_dict", "model", "net"):  # RepDistiller and torchvision-style files
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
        if payload and all(isinstance(v, torch.Tensor) for v in payload.values()) and len(models) == 1:
            return [(models[0], {k.removeprefix("module."): v for k, v in payload.items()})]
    raise StageError(f"{path}: not a network checkpoint (expected the harness's weights file, or one network's "
                     f"state_dict for {', '.join(models) or 'a named model'})")


def is_url(source: str | Path) -> bool:
    return str(source).startswith(("https://", "http://"))


def fetch(url: str, sha256: str | None) -> Path:
    """The file at ``url``, downloaded once into the cache (named by its SHA-256, which is required and checked: a
    download that does not match is one line and is not kept)."""
    if not sha256:
        raise StageError(f"{url}: a teacher from a URL needs its SHA-256 (teacher_sha256), so that a changed or "
                         "damaged file is never used")
    try:
        return download([url], cache_folder() / "teachers" / f"{sha256.lower()}.pt", sha256)
    except FetchError as e:
        raise StageError(f"teacher {url}: {e}") from None


HUB_PREFIXES = ("timm:", "hf-hub:")


def is_hub(source: str | Path) -> bool:
    """``timm:<model>.<pretrained tag>`` or ``hf-hub:<owner>/<repository>`` (a timm network on the Hugging Face hub)."""
    return str(source).startswith(HUB_PREFIXES)


def hub_networks(source: str, models: tuple[str, ...] = (), sha256: str | None = None,
                 num_classes: int | None = None, in_chans: int | None = None) -> tuple[list[nn.Module], dict]:
    """A pretrained network from timm or the Hugging Face hub (downloaded once into their caches), frozen, in eval
    mode, and its provenance (the name, the weights file and its SHA-256, the hub revision).  Refused in one line:
    another architecture than the group names, or another number of classes or channels than the dataset has
    (timm would silently drop the classifier or fold the first convolution)."""
    import timm

    import harness.models  # noqa: F401

    name = source.removeprefix("timm:")
    try:
        net = timm.create_model(name, pretrained=True)
    except Exception as e:  # unknown name, no network and no cached copy, a damaged file: all one line
        raise StageError(f"teacher {source}: cannot load it ({type(e).__name__}: {' '.join(str(e).split())[:300]}); "
                         "on a node without internet, run once where there is one (harness run fetches hub "
                         "teachers before its trials start), or point HF_HOME to a copy of the cache") from None
    cfg = dict(getattr(net, "pretrained_cfg", {}) or {})
    arch, classes, chans = cfg.get("architecture"), cfg.get("num_classes"), (cfg.get("input_size") or (3,))[0]
    if models and arch != models[0]:
        raise StageError(f"teacher {source}: is a {arch}, but the group names {models[0]} as the teacher; put {arch} "
                         "first in the group")
    for what, ours, theirs in (("classes", num_classes, classes), ("input channels", in_chans, chans)):
        if ours is not None and theirs is not None and ours != theirs:
            raise StageError(f"teacher {source}: was trained for {theirs} {what}, the cell's dataset has {ours}")
    path = _hub_file(cfg)
    digest = file_sha256(path) if path else None
    if sha256 and digest != sha256.lower():
        raise StageError(f"teacher {source}: its weights file's SHA-256 is {digest}, but the suite expects {sha256}")
    net.requires_grad_(False).eval()
    revision = Path(path).parent.name if path and "snapshots" in Path(path).parts else None
    return [net], {"hub": source, "file": path, "sha256": digest, "revision": revision, "cell_hash": None,
                   "modules": {}}


def hub_name_problem(source: str) -> str | None:
    """What is wrong with a hub name, as far as it shows without the network: a ``timm:`` name must be one of
    timm's pretrained tags (``timm.list_pretrained``)."""
    import timm

    if source.startswith("hf-hub:"):
        return None if "/" in source.removeprefix("hf-hub:") else (
            f"{source!r}: expected hf-hub:<owner>/<repository>, as timm spells a Hugging Face hub network")
    name = source.removeprefix("timm:")
    tags = timm.list_pretrained(name.split(".")[0] + ".*")
    if name in tags or ("." not in name and tags):  # a bare name: timm's default tag for it
        return None
    from harness.registry import did_you_mean

    return (f"{source!r} is not one of timm's pretrained networks{did_you_mean(name, tags)}; "
            f"{'its tags: ' + ', '.join(tags[:8]) if tags else 'see timm.list_pretrained()'}")


def _hub_file(cfg: dict) -> str | None:
    """The weights file timm loaded for a pretrained config: in the Hugging Face cache, or torch's hub folder."""
    if cfg.get("hf_hub_id"):
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg["hf_hub_id"].partition("@")
        for file in (cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo, file, revision=revision or None) if file else None
            if isinstance(found, str):
                return found
    if cfg.get("url"):
        path = Path(torch.hub.get_dir()) / "checkpoints" / cfg["url"].rsplit("/", 1)[-1]
        return str(path) if path.is_file() else None
    return None


def load_networks(path: str | Path, models: tuple[str, ...] = (), sha256: str | None = None,
                  num_classes: int | None = None, in_chans: int | None = None) -> tuple[list[nn.Module], dict]:
    """The networks saved in ``path`` (a file, an ``https://`` URL with its SHA-256, downloaded once into the
    cache, or a hub name: :func:`hub_networks`), created by name through timm and loaded, frozen, in eval mode; and
    their provenance (file or URL, SHA-256, the cell that trained them, the key layout of another codebase's file)."""
    import timm

    import harness.models  # noqa: F401

    source = str(path)
    if is_hub(source):
        return hub_networks(source, models, sha256, num_classes, in_chans)
    path = fetch(source, sha256) if is_url(source) else Path(path)
    if not path.is_file():
        raise StageError(f"{path}: stage weights not found; run the suite again to train the stage, or fix the "
                         "checkpoint path")
    digest = file_sha256(path)
    if sha256 and digest != sha256.lower():
        raise StageError(f"{path}: SHA-256 is {digest}, but the suite expects {sha256}; point to the right file "
                         "or update the expected hash")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file: both mean unusable
        raise StageError(f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                         "delete it to retrain the stage, or point to a valid file") from None
    entries = _state_dicts(payload, path, models)
    if models and tuple(name for name, _ in entries) != tuple(models):
        raise StageError(f"{path}: holds {[n for n, _ in entries]}, but the stage needs {list(models)}")
    meta = payload if isinstance(payload, dict) else {}
    classes = meta.get("num_classes", num_classes)
    chans = meta.get("in_chans", in_chans)
    if num_classes is not None and classes != num_classes:
        raise StageError(f"{path}: trained for {classes} classes, the cell's dataset has {num_classes}")
    networks, layouts = [], set()
    for name, state in entries:
        net = timm.create_model(name, num_classes=classes, in_chans=chans)
        fitted = fit_state(state, net)
        if fitted is None:
            raise StageError(f"{path}: weights do not fit {name} (num_classes {classes}, in_chans {chans}), under "
                             f"our names or those of {', '.join(KEY_LAYOUTS)}: {misfit(state, net)}")
        net.load_state_dict(fitted[0])
        layouts.add(fitted[1])
        net.requires_grad_(False).eval()
        networks.append(net)
    foreign = sorted(layouts - {"harness"})
    provenance = {"file": str(path), "sha256": digest, "cell_hash": meta.get("cell_hash"),
                  "modules": meta.get("modules", {}), **({"url": source} if is_url(source) else {}),
                  **({"key_layout": foreign[0]} if foreign else {})}
    return networks, provenance
