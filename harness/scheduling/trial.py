"""One Tune trial, typed: the cells it trains and how, encoded once by the runner into Tune's config (JSON values,
the cells grid-searched) and decoded once by the trainable (and by a data-parallel cell's Ray Train workers, which
get it from the trial as their loop's config)."""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

from harness.config.cell import Cell
from harness.training.engine import Runtime


@dataclass(frozen=True)
class Parallel:
    """How a cell spreads: data-parallel workers (each with ``cpu`` CPUs and ``gpu`` GPUs), accumulated passes,
    and the restarts Ray Train may make of a lost worker group."""

    workers: int = 1
    grad_accumulation: int = 1
    cpu: float = 1
    gpu: float = 0
    max_failures: int = 0


@dataclass(frozen=True)
class TrialConfig:
    """What one trial trains: its cell, or the seeds of a bundle (``resources.stack_seeds``, one grouped network),
    with the run's runtime, result store, code version, parallelism and command-line overrides; ``attempt`` names a
    data-parallel attempt's record."""

    cells: tuple[Cell, ...]
    runtime: Runtime
    results: str
    code: dict
    parallel: Parallel
    overrides: tuple[str, ...] = ()
    attempt: str = ""

    @property
    def cell(self) -> Cell:
        return self.cells[0]

    def only(self, cells: list[Cell]) -> "TrialConfig":
        """This trial for those of its cells still to train (a bundle's last seed left trains alone)."""
        return dataclasses.replace(self, cells=tuple(cells))

    def encode(self) -> dict:
        """Tune's (or Ray Train's) config: JSON values only."""
        first = self.cell
        return {"cell": first.to_dict(),
                "bundles": {first.hash: [c.seed for c in self.cells]} if len(self.cells) > 1 else {},
                "runtime": asdict(self.runtime), "results": self.results, "code": self.code,
                "parallel": asdict(self.parallel), "overrides": list(self.overrides),
                **({"attempt": self.attempt} if self.attempt else {})}

    @classmethod
    def decode(cls, config: dict) -> "TrialConfig":
        first = Cell.from_dict(config["cell"])
        seeds = (config.get("bundles") or {}).get(first.hash, [first.seed])
        return cls(cells=tuple(dataclasses.replace(first, seed=seed) for seed in seeds),
                   runtime=Runtime(**config.get("runtime", {})), results=config["results"],
                   code=config.get("code", {}), parallel=Parallel(**(config.get("parallel") or {})),
                   overrides=tuple(config.get("overrides") or ()), attempt=config.get("attempt", ""))

    @staticmethod
    def param_space(groups: list[list[Cell]], runtime: Runtime, results: str, code: dict, parallel: Parallel,
                    overrides) -> dict:
        """Tune's param space of a wave: one trial per group of cells (a cell, or the seeds of a bundle)."""
        from ray import tune

        return {
            "cell": tune.grid_search([g[0].to_dict() for g in groups]),
            "bundles": {g[0].hash: [c.seed for c in g] for g in groups if len(g) > 1},  # first cell -> its seeds
            "runtime": asdict(runtime), "results": results, "code": code, "parallel": asdict(parallel),
            "overrides": list(overrides),  # the command line's key=value, into every record
        }
