"""The plan of a run, derived once per suite: its cells, the stage cells they need (teachers, recursively), the waves
they train in (teachers first) and the bundles of seeds that share a trial where seeds are stacked.

``Suite.plan`` derives it on first use and keeps it; every reader of a run's shape (``validate``'s checks,
``run --dry-run``, the data binding, the input pre-flight, the runner, ``status``, ``index``, ``gpu: auto``'s
packing and the cost estimates of :mod:`harness.costs`) reads that one object.  Binding the cells to the data found
here maps the plan cell by cell (:meth:`RunPlan.mapped`) rather than deriving it again.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from harness.config.cell import Cell
from harness.training.stages import Stage, stages_of, waves

_derived = 0  # plans derived in this process: one per suite (the tests count them)


def derivations() -> int:
    return _derived


@dataclass(frozen=True)
class RunPlan:
    cells: tuple[Cell, ...]  # the suite's own cells, distinct, in order
    waves: tuple[tuple[Cell, ...], ...]  # every cell and stage cell, each once; wave i needs only earlier waves
    stages: dict[str, dict[str, Stage]]  # cell hash -> its named stages (as its method declares them)
    bundles: dict[str, tuple[str, ...]]  # cell hash -> the cells (hashes) its seeds stack with, itself included

    @classmethod
    def of(cls, cells: list[Cell]) -> "RunPlan":
        """Derive the plan of ``cells`` (``Suite.plan`` calls this once per suite)."""
        from harness.training.bundle import seed_bundles

        global _derived
        _derived += 1
        distinct = tuple({c.hash: c for c in cells}.values())
        found: dict[str, dict[str, Stage]] = {}  # each cell's stages, asked of its method once

        def stages(cell: Cell) -> dict[str, Stage]:
            if cell.hash not in found:
                found[cell.hash] = stages_of(cell)
            return found[cell.hash]

        ordered = tuple(tuple(wave) for wave in waves(list(distinct), stages))
        bundles = {c.hash: tuple(b.hash for b in bundle) for bundle in seed_bundles(list(distinct)) for c in bundle}
        return cls(distinct, ordered, {c.hash: found[c.hash] for wave in ordered for c in wave}, bundles)

    @property
    def everything(self) -> list[Cell]:
        """Every cell and stage cell, each once, teachers first."""
        return [c for wave in self.waves for c in wave]

    @property
    def stage_hashes(self) -> set[str]:
        """The cells some other cell needs as a stage (their saved networks must stay intact)."""
        return {s.cell.hash for named in self.stages.values() for s in named.values() if s.cell is not None}

    def needs(self, cell: Cell) -> list[Cell]:
        """The stage cells ``cell`` needs directly."""
        return [s.cell for s in self.stages[cell.hash].values() if s.cell is not None]

    def stacked_seeds(self, cell: Cell) -> int:
        """The cells a trial of ``cell`` trains where seeds are stacked (1 for a cell trained by itself)."""
        return len(self.bundles.get(cell.hash, (cell.hash,)))

    def seed_bundles(self, cells: list[Cell]) -> list[list[Cell]]:
        """``cells`` (a wave's cells left to train) grouped into the plan's bundles of seeds, in their order; a cell
        whose bundle has no other seed among them is a bundle of one."""
        groups: dict[tuple, list[Cell]] = {}
        for cell in cells:
            groups.setdefault(self.bundles.get(cell.hash, (cell.hash,)), []).append(cell)
        return [group for group in groups.values()]

    def mapped(self, bind: Callable[[Cell], Cell]) -> "RunPlan":
        """The same plan with every cell replaced by ``bind(cell)`` (its dataset bound to the data here): the waves,
        stages and bundles keep their shape, under the new cells' hashes."""
        new = {c.hash: bind(c) for c in self.everything}

        def stage(s: Stage) -> Stage:
            return replace(s, cell=new[s.cell.hash]) if s.cell is not None else s

        return RunPlan(tuple(new[c.hash] for c in self.cells),
                       tuple(tuple(new[c.hash] for c in wave) for wave in self.waves),
                       {new[h].hash: {name: stage(s) for name, s in named.items()} for h, named in self.stages.items()},
                       {new[h].hash: tuple(new[o].hash for o in group) for h, group in self.bundles.items()})
