"""Stages: networks a cell needs trained before it starts (a teacher, an early-stopped teacher, an assistant).

A method names its stages from its hyper-parameters (:meth:`harness.method.Method.stages`): each is either
another cell, whose deployed networks are saved when it finishes (``results/weights/<hash>.pt``), or a
checkpoint file the user points to.  Because a stage is a cell, it is cached like any result: a teacher shared
by many students, suites or runs is trained once, and anything that changes the teacher (its recipe, seed,
network, dataset) changes its hash and so trains a new one.  The runner trains the stages in waves, first
what nothing depends on being unfinished, before the cells that need them.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from harness.cell import Cell

WEIGHTS_FORMAT = 1


class StageError(RuntimeError):
    """A stage's weights are missing, unreadable or not the ones expected; the message is one line."""


@dataclass(frozen=True)
class Stage:
    """A cell to train first, or a checkpoint file (with its expected SHA-256, if given) holding ``models``."""

    cell: Cell | None = None
    checkpoint: str | None = None
    sha256: str | None = None
    models: tuple[str, ...] = ()

    def describe(self) -> str:
        return self.cell.describe() if self.cell else f"checkpoint {self.checkpoint}"


def stages_of(cell: Cell) -> dict[str, Stage]:
    """The named stages ``cell`` needs, as its method declares them."""
    from harness.method import load_methods

    method_cls = load_methods().get(cell.method)
    return method_cls.stages(method_cls.HParams.model_validate(cell.hparams), cell)


def waves(cells: list[Cell]) -> list[list[Cell]]:
    """Every cell and, recursively, every stage cell, deduplicated by hash, in the order they must run:
    wave i holds the cells whose stages are all in earlier waves."""
    depth: dict[str, int] = {}
    by_hash: dict[str, Cell] = {}

    def visit(cell: Cell, path: tuple[str, ...]) -> int:
        if cell.hash in path:
            raise StageError(f"cell {cell.describe()} depends on itself through its stages")
        if cell.hash not in depth:
            needs = [s.cell for s in stages_of(cell).values() if s.cell is not None]
            depth[cell.hash] = 1 + max((visit(c, path + (cell.hash,)) for c in needs), default=-1)
            by_hash[cell.hash] = cell
        return depth[cell.hash]

    for cell in cells:
        visit(cell, ())
    out: list[list[Cell]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for h, d in depth.items():
        out[d].append(by_hash[h])
    return out


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    os.close(fd)
    try:
        torch.save(payload, tmp)
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


def load_networks(path: str | Path, models: tuple[str, ...] = (), sha256: str | None = None,
                  num_classes: int | None = None, in_chans: int | None = None) -> tuple[list[nn.Module], dict]:
    """The networks saved in ``path``, created by name through timm and loaded, frozen, in eval mode; and
    their provenance (file, SHA-256, the cell that trained them)."""
    import timm

    import harness.models  # noqa: F401

    path = Path(path)
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
    networks = []
    for name, state in entries:
        net = timm.create_model(name, num_classes=classes, in_chans=chans)
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise StageError(f"{path}: weights do not fit {name} ({str(e).splitlines()[0][:200]})") from None
        net.requires_grad_(False).eval()
        networks.append(net)
    provenance = {"file": str(path), "sha256": digest, "cell_hash": meta.get("cell_hash"),
                  "modules": meta.get("modules", {})}
    return networks, provenance
