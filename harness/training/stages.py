"""Stages: networks a cell needs trained before it starts (a teacher, an early-stopped teacher, an assistant).

A method names its stages from its hyper-parameters (:meth:`harness.training.method.Method.stages`): each is either
another cell, whose deployed networks are saved when it finishes (``results/weights/<hash>.pt``), or a
checkpoint file the user points to.  Because a stage is a cell, it is cached like any result: a teacher shared
by many students, suites or runs is trained once, and anything that changes the teacher (its recipe, seed,
network, dataset) changes its hash and so trains a new one.  The runner trains the stages in waves, first
what nothing depends on being unfinished, before the cells that need them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from harness.config.cell import Cell
from harness.results.weights import StageError  # also what a method raises about its stages


@dataclass(frozen=True)
class Stage:
    """A cell to train first, or a checkpoint file (with its expected SHA-256, if given) holding ``models``."""

    cell: Cell | None = None
    checkpoint: str | None = None
    sha256: str | None = None
    models: tuple[str, ...] = ()

    def describe(self) -> str:
        return self.cell.describe() if self.cell else f"checkpoint {self.checkpoint}"


def cell_plugins(cell: Cell) -> tuple[str, ...]:
    """The plug-ins (module or file, and its source's hash) the cell's method, networks and dataset come from."""
    from timm.models import is_model
    from timm.models._registry import model_entrypoint

    from harness.data.image_data import DATASETS
    from harness.registry import plugin_of
    from harness.training.method import load_methods

    entries = [load_methods().get(cell.method)] + [model_entrypoint(m) for m in cell.group if is_model(m)]
    if cell.dataset["name"] in DATASETS:
        entries.append(DATASETS.get(cell.dataset["name"]))
    return tuple(sorted({p for p in map(plugin_of, entries) if p}))


def stages_of(cell: Cell) -> dict[str, Stage]:
    """The named stages ``cell`` needs, as its method declares them; a stage cell of a plug-in's network (or
    method) carries that plug-in, as any cell does."""
    from harness.training.method import load_methods

    method_cls = load_methods().get(cell.method)
    stages = method_cls.stages(method_cls.HParams.model_validate(cell.hparams), cell)
    return {name: replace(s, cell=replace(s.cell, plugins=cell_plugins(s.cell))) if s.cell is not None else s
            for name, s in stages.items()}


def waves(cells: list[Cell], stages=None) -> list[list[Cell]]:
    """Every cell and, recursively, every stage cell, deduplicated by hash, in the order they must run:
    wave i holds the cells whose stages are all in earlier waves.  ``stages``: how a cell's stages are found
    (:func:`stages_of` by default; the run plan passes one that keeps what it found)."""
    stages = stages or stages_of
    depth: dict[str, int] = {}
    by_hash: dict[str, Cell] = {}

    def visit(cell: Cell, path: tuple[str, ...]) -> int:
        if cell.hash in path:
            raise StageError(f"cell {cell.describe()} depends on itself through its stages")
        if cell.hash not in depth:
            needs = [s.cell for s in stages(cell).values() if s.cell is not None]
            depth[cell.hash] = 1 + max((visit(c, path + (cell.hash,)) for c in needs), default=-1)
            by_hash[cell.hash] = cell
        return depth[cell.hash]

    for cell in cells:
        visit(cell, ())
    out: list[list[Cell]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for h, d in depth.items():
        out[d].append(by_hash[h])
    return out

