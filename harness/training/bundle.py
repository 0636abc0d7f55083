"""Several seeds of one cell trained as one grouped network (``resources: {stack_seeds: true}``).

The S seeds' K peers become one :class:`~harness.models.stacked.StackedPeers` of S × K networks; each seed keeps
its own :class:`~harness.training.engine.Trainer` (its initialisation, data order, method state, history and
record) and reaches its networks through a :class:`~harness.models.stacked.StackSlice`.  Every step runs the
shared network once for all seeds, each seed's method computes its own losses, and their sum takes one backward
pass and one optimizer step.  No parameter and no batch-norm channel is shared between seeds, and SGD is
element-wise, so each seed's update is the one it gets alone up to float rounding; a seed whose loss becomes NaN
fails alone, the others go on.  Two things are shared and say so in the records: torch's global random stream
(dropout, where a network has it) and the device (``hardware.gpu_share`` is the trial's share over S).
"""
from __future__ import annotations

import dataclasses

import torch

from harness.config.cell import Cell
from harness.data.batches import Batch
from harness.data.datasets import load_dataset
from harness.data.fingerprint import fingerprint
from harness.models.stacked import StackedPeers, StackingError, StackSlice
from harness.training.engine import Runtime, Trainer, build_method_optimizer
from harness.training.loop import Loop
from harness.training.method import OptimGroup, Step, load_methods
from harness.config.recipe import build_scheduler


def same_but_seed(cells: list[Cell]) -> bool:
    """The cells are one cell under several seeds."""
    def rest(cell: Cell) -> dict:
        return {k: v for k, v in cell.to_dict().items() if k != "seed"}

    return all(rest(c) == rest(cells[0]) for c in cells[1:]) and len({c.seed for c in cells}) == len(cells)


def bundle_error(cells: list[Cell]) -> str | None:
    """Why these cells cannot train as one bundle of seeds; None if they can."""
    if len(cells) < 2:
        return "a bundle of seeds needs two or more cells"
    if not same_but_seed(cells):
        return "the cells differ in more than their seed"
    first = cells[0]
    if first.recipe.get("precision") == "fp16":
        return "fp16's loss scaling is shared by every network it scales; use precision bf16 or fp32"
    cls = load_methods().get(first.method)
    return cls.seed_stack_error(cls.HParams.model_validate(first.hparams), tuple(first.group))


class SeedBundle(Loop):
    """The seeds of one cell, trained together by the one loop (:class:`~harness.training.loop.Loop`, each seed's
    Trainer a member); ``run`` trains them to the recipe's end.  The bundle is named after its first cell."""

    def __init__(self, cells: list[Cell], runtime: Runtime = Runtime()):
        problem = bundle_error(cells)
        if problem:
            raise StackingError(f"cells {', '.join(c.describe() for c in cells)}: cannot stack their seeds: {problem}")
        self.cells, self.cell, self.runtime = list(cells), cells[0], runtime
        data = load_dataset(self.cell.dataset, runtime.data_root)
        digest = fingerprint(data)
        separate = dataclasses.replace(runtime, stack_peers=False, compile=False,
                                       workers=max(runtime.workers // len(cells), 0))
        self.trainers = [Trainer(cell, separate, data=data, data_fingerprint=digest) for cell in cells]
        self.members = self.trainers
        first = self.trainers[0]
        self.device, self.recipe, self.k = first.device, first.recipe, len(self.cell.group)
        self.data_fingerprint = first.data_fingerprint
        # what the records say of each seed's networks, from its own separate modules
        self.parameter_counts = [t.method.parameter_counts() for t in self.trainers]
        self.costs = [t.costs() for t in self.trainers]

        groups = [t.method.optim_groups() for t in self.trainers]
        for cell, optim in zip(cells, groups):
            if set(optim) != {"peers"} or optim["peers"].optimizer is not None or not optim["peers"].follow_schedule:
                raise StackingError(f"cell {cell.describe()}: its method has optimizers of its own "
                                    f"({', '.join(optim)}); only methods with the recipe's one optimizer stack seeds")
        networks = [net.cpu() for t in self.trainers for net in t.method.peers]
        self.stack = StackedPeers(networks, name=f"{self.cell.group_name} x {len(cells)} seeds")
        memory_format = torch.channels_last if runtime.channels_last else torch.preserve_format
        self.stack.to(self.device, memory_format=memory_format)
        if runtime.compile:
            self.stack.net.compile()
        for s, trainer in enumerate(self.trainers):
            trainer.method.modules["peers"] = StackSlice(self.stack, s * self.k, self.k)
        extras = []
        for cell, optim in zip(cells, groups):
            for g in optim["peers"].params:
                if not g.get("model"):  # a seed's extra modules: its own group, named after its seed
                    extras.append({**g, "name": f"{g.get('name', 'extra')}/seed{cell.seed}"})
        peers = {"params": list(self.stack.parameters()), "model": self.cell.group[0]}
        self.optimizer = build_method_optimizer(self.recipe, OptimGroup([peers, *extras]))
        self.steps = len(first.train_batches)
        if any(len(t.train_batches) != self.steps for t in self.trainers):
            raise StackingError(f"cells of {self.cell.describe()}: their seeds have epochs of different lengths")
        self.scheduler = build_scheduler(self.recipe, self.optimizer, self.steps)
        for trainer in self.trainers:
            trainer.method.optimizers = {"peers": self.optimizer}
            trainer.schedulers = {"peers": self.scheduler}
        self.last_epoch = first.last_epoch
        self.epoch = 0
        self.restarts = 0
        self.failed: dict[str, str] = {}  # cell hash -> its one-line error

    def fail(self, s: int, error: Exception) -> None:
        """A seed whose loss was not finite fails alone; the others go on."""
        self.failed[self.cells[s].hash] = f"{type(error).__name__}: {error}"

    def train_step(self, batches: dict[int, Batch], step: Step) -> dict[int, dict[str, torch.Tensor]]:
        """One update of every live seed (``batches``: its batch, by seed index): one forward pass of the shared
        network, each seed's method's losses, one backward pass and one step of the shared optimizer and schedule.
        Returns each seed's loss terms (detached)."""
        k = self.k
        views = {s: self.trainers[s].method.training_views(b) for s, b in batches.items()}
        filler = [next(iter(views.values()))[0]] * k  # the slots of failed seeds: computed, never used
        with self.trainers[0].autocast():
            logits = self.stack([v for s in range(len(self.cells)) for v in views.get(s, filler)])
            terms = {}
            for s, batch in batches.items():
                method = self.trainers[s].method
                method.peers.prime(views[s], logits[s * k:(s + 1) * k])
                terms[s] = method.losses(batch, Step(step.epoch, step.step, step.epochs, step.steps_per_epoch,
                                                   global_batch=batch.global_size))
        total = torch.stack([torch.stack(list(t.values())).sum() for t in terms.values()]).sum()
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        return {s: {name: value.detach() for name, value in t.items()} for s, t in terms.items()}

    def start_members(self, epoch: int, alive: list[int]) -> None:
        """Every network in training mode, and each live seed's method's per-epoch hook."""
        self.stack.train()
        for s in alive:
            self.trainers[s].method.modules.train()
            self.trainers[s].method.on_epoch_start(epoch)

    def start_epoch(self, epoch: int) -> None:
        self.start_members(epoch, self.alive)

    def step_members(self, batches: dict[int, Batch], step: Step) -> tuple[dict[int, dict[str, torch.Tensor]], int]:
        return self.train_step(batches, step), len(next(iter(batches.values())))

    def step_schedules(self) -> None:
        self.scheduler.step()

    def evaluate_members(self, alive: list[int]) -> dict[int, dict]:
        """Every seed's test accuracies from one pass of the shared network per test batch (the test data is the
        same for every seed of a cell)."""
        self.stack.eval()
        return super().evaluate_members(alive)

    def test_members(self, alive: list[int], batch: Batch) -> None:
        with self.trainers[0].autocast():
            logits = self.stack([batch.x] * (self.k * len(self.cells)))
        for s in alive:
            self.trainers[s].method.peers.prime([batch.x] * self.k, logits[s * self.k:(s + 1) * self.k])

    def progress(self, first: dict, alive: int) -> dict:
        return {**first, "stacked_seeds_alive": alive}

    def run(self, on_epoch=None) -> dict[str, dict]:
        """Train the remaining epochs; ``on_epoch(bundle, metrics)`` after each, with the first live seed's metrics
        (the progress line).  Returns each finished seed's summary by cell hash (failed: ``self.failed``)."""
        return self.run_members(on_epoch)

    def member_parameters(self) -> list[dict]:
        return self.parameter_counts

    def member_costs(self) -> list[dict]:
        return self.costs

    # --- checkpoints -------------------------------------------------------------------------------------
    def own_state(self) -> dict:
        seeds = {}
        for trainer in self.trainers:
            own = {key: m.state_dict() for key, m in trainer.method.modules.items() if key != "peers"}
            seeds[trainer.cell.hash] = {"history": trainer.history, "method": trainer.method.extra_state(),
                                        "modules": own, "epoch": trainer.epoch}
        return {"bundle": [c.hash for c in self.cells], "stack": self.stack.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "seeds": seeds,
                "failed": dict(self.failed)}

    def load_own_state(self, state: dict) -> None:
        hashes = [c.hash for c in self.cells]
        if state.get("bundle") != hashes:
            said = (f"the stacked seeds {', '.join(state['bundle'])}" if "bundle" in state
                    else "one cell trained alone")
            raise ValueError(f"checkpoint of {said}, not of the stacked seeds {', '.join(hashes)} of "
                             f"{self.cell.describe()}; the bundle starts over")
        self.stack.load_state_dict(state["stack"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for trainer in self.trainers:
            seed = state["seeds"][trainer.cell.hash]
            for key, module_state in seed["modules"].items():
                trainer.method.modules[key].load_state_dict(module_state)
            trainer.method.load_extra_state(seed["method"])
            trainer.history, trainer.epoch = seed["history"], seed["epoch"]
        self.failed = dict(state["failed"])

def seed_bundles(cells: list[Cell]) -> list[list[Cell]]:
    """The cells grouped into bundles of one cell under several seeds (in the cells' order); a cell that cannot
    be bundled, or has no other seed here, is a bundle of one."""
    import json

    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        key = json.dumps({k: v for k, v in cell.to_dict().items() if k != "seed"}, sort_keys=True)
        groups.setdefault(key, []).append(cell)
    out = []
    for group in groups.values():
        out += [group] if len(group) > 1 and bundle_error(group) is None else [[c] for c in group]
    return out

