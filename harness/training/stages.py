"""Stages: networks a cell needs trained before it starts (a teacher, an early-stopped teacher, an assistant).

A method names its stages from its hyper-parameters (:meth:`harness.training.method.Method.stages`): each is either
another cell, whose deployed networks are saved when it finishes (``results/weights/<hash>.pt``), or a
checkpoint file the user points to.  Because a stage is a cell, it is cached like any result: a teacher shared
by many students, suites or runs is trained once, and anything that changes the teacher (its recipe, seed,
network, dataset) changes its hash and so trains a new one.  The runner trains the stages in waves, first
what nothing depends on being unfinished, before the cells that need them.
"""
from __future__ import annotations

from dataclasses import dataclass

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


def stages_of(cell: Cell) -> dict[str, Stage]:
    """The named stages ``cell`` needs, as its method declares them."""
    from harness.training.method import load_methods

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


def train_stages_in_process(cell: Cell, results) -> None:
    """Train, in this process and without Ray, every stage ``cell`` needs (its teachers, recursively) that the
    local result store ``results`` does not hold yet, and save their networks there as a run's trial does; a
    Trainer of ``cell`` with ``Runtime(results=...)`` then finds them (``harness doctor``, the tests)."""
    from harness.results.store import ResultStore
    from harness.training.engine import Runtime, Trainer

    store = ResultStore(results)
    runtime = Runtime(results=str(store.root))
    for wave in waves([cell])[:-1]:
        for stage_cell in wave:
            path = store.weights_path(stage_cell.hash)
            if not path.is_file():
                trainer = Trainer(stage_cell, runtime)
                trainer.run()
                trainer.save_weights(path)
