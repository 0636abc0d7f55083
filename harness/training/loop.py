"""The one training loop: epochs of steps, the fp32 sums of the loss terms, the time per epoch, the finite checks,
the evaluation, the history, the summary and the checkpoint's common state.

It trains *members*: the cells a loop holds (:class:`~harness.training.engine.Trainer`, one cell, is its own single
member; :class:`~harness.training.bundle.SeedBundle` holds several seeds of one cell as one grouped network).  A
subclass says only how its members take one step together (:meth:`Loop.step_members`), how its schedules move, how a
test batch reaches them and what its checkpoint holds beyond the common part; a member whose loss stops being
finite fails alone where the loop can go on without it (:meth:`Loop.fail`).  ``harness bench`` times the same
:meth:`Loop.step_members`.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from harness.data.batches import Batch
from harness.training.method import Step


class NonFiniteLoss(FloatingPointError):
    """A loss term became NaN or infinite; the message names the cell, the term and the epoch."""


class UnexercisedTerm(RuntimeError):
    """A smoke run ended with a loss term that was zero on every step; the message names the cell and the terms."""


class Loop:
    """What every way of training cells shares; subclasses set ``members``, ``device``, ``recipe``, ``runtime``,
    ``last_epoch``, ``epoch`` (completed) and ``restarts`` and implement the hooks below."""

    members: list  # the Trainers, one per cell
    failed: dict[str, str]  # cell hash -> its one-line error (members that failed alone)

    # --- hooks -------------------------------------------------------------------------------------------
    def start_members(self, epoch: int, alive: list[int]) -> None:
        """Every network of the live members in training mode, and each one's per-epoch hook."""
        raise NotImplementedError

    def step_members(self, batches: dict[int, Batch], step: Step) -> tuple[dict[int, dict[str, torch.Tensor]], int]:
        """One update of every live member (``batches``: its batch, by member index); returns each one's loss terms
        (detached) and the images trained (0 where a batch was too small to train on)."""
        raise NotImplementedError

    def step_schedules(self) -> None:
        """The learning-rate schedules, after a step."""
        raise NotImplementedError

    def test_members(self, alive: list[int], batch: Batch) -> None:
        """Before the members count a test batch's hits (a shared network runs once for all of them)."""

    def fail(self, index: int, error: Exception) -> None:
        """A member's loss was not finite (or a term never trained): by default the loop cannot go on without it."""
        raise error

    def progress(self, first: dict, alive: int) -> dict:
        """What ``on_epoch`` is told after an epoch: the first live member's metrics (``alive``: members trained)."""
        return first

    def member_parameters(self) -> list[dict]:
        """Each member's parameter counts, for its record."""
        raise NotImplementedError

    def member_costs(self) -> list[dict]:
        """What one training step of each member costs, for its record."""
        raise NotImplementedError

    def own_state(self) -> dict:
        raise NotImplementedError

    def load_own_state(self, state: dict) -> None:
        raise NotImplementedError

    # --- the loop ------------------------------------------------------------------------------------------
    @property
    def alive(self) -> list[int]:
        return [s for s, m in enumerate(self.members) if m.cell.hash not in self.failed]

    def batches_of(self, epoch: int, alive: list[int]):
        """The live members' batches of ``epoch``, step by step, as ``{member index: batch}``."""
        for batches in zip(*(self.members[s].train_batches.epoch(epoch) for s in alive)):
            yield dict(zip(alive, batches))

    def train_members(self) -> dict[int, dict]:
        """One epoch of every live member: each one's metrics by its index (a member whose loss was not finite
        is failed and left out)."""
        epoch, alive = self.epoch, self.alive
        self.start_members(epoch, alive)
        lead = self.members[alive[0]]
        lrs = lead.learning_rates()
        steps = len(lead.train_batches)
        sums: dict[int, dict[str, torch.Tensor]] = {s: {} for s in alive}
        images, start = 0, time.perf_counter()
        for i, batches in enumerate(self.batches_of(epoch, alive)):
            first = batches[alive[0]]
            terms, n = self.step_members(batches, Step(epoch, i, self.recipe.epochs, steps,
                                                       global_batch=first.global_size))
            for s, member_terms in terms.items():
                for name, value in member_terms.items():  # summed in fp32 whatever the term's dtype (a bf16 sum stalls)
                    sums[s][name] = sums[s].get(name, 0.0) + value.float()
            images += n
            self.step_schedules()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        out = {}
        for s in alive:
            member = self.members[s]
            replicas = member.replicas
            losses = {f"loss/{name}": float(total) / steps for name, total in replicas.mean(sums[s], self.device).items()}
            replicas.average_buffers(member.method.modules)
            try:
                member.check_finite(losses, epoch)
            except NonFiniteLoss as e:
                self.fail(s, e)
                continue
            out[s] = {**lrs, "images_per_s": images / seconds, "train_time_s": seconds, **losses,
                      **member.method.epoch_metrics()}
        return out

    @torch.inference_mode()
    def evaluate_members(self, alive: list[int]) -> dict[int, dict]:
        """Top-1/top-5 (%) of every output of every member in ``alive``, by its index; data-parallel workers each
        test their share of the test batches and add up their counts."""
        for s in alive:
            self.members[s].method.modules.eval()
        correct: dict[int, dict] = {s: {} for s in alive}
        n = 0
        for batch in self.members[alive[0]].inputs.test():
            n += len(batch)
            self.test_members(alive, batch)
            for s in alive:
                self.members[s].count_hits(batch, correct[s])
        out = {}
        for s in alive:
            member = self.members[s]
            counts, total = member.replicas.sum_counts(correct[s], n, self.device)
            out[s] = member.accuracies(counts, total)
        return out

    def run_members(self, on_epoch: Callable | None = None) -> dict[str, dict]:
        """Train the remaining epochs; ``on_epoch(loop, metrics)`` after each (report, checkpoint), with
        :meth:`progress`.  Returns each finished member's summary by cell hash
        (a member that failed alone: ``self.failed``)."""
        while self.epoch < self.last_epoch and self.alive:
            trained = self.train_members()
            if not trained:
                break
            tested = self.evaluate_members(list(trained))
            self.epoch += 1
            for s, metrics in trained.items():
                self.members[s].history.append({"epoch": self.epoch, **metrics, **tested[s]})
                self.members[s].epoch = self.epoch
            if on_epoch is not None:
                first = self.members[min(trained)].history[-1]
                on_epoch(self, self.progress(first, len(trained)))
        summaries = {}
        for s in self.alive:
            member = self.members[s]
            if self.runtime.require_every_term:
                try:
                    member.check_every_term()
                except UnexercisedTerm as e:
                    self.fail(s, e)
                    continue
            summaries[member.cell.hash] = summarize(member.history)
        return summaries

    # --- checkpoints -------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The subclass's own state, the epoch, torch's random streams and the restarts so far."""
        state = {**self.own_state(), "epoch": self.epoch, "torch_rng": torch.get_rng_state(),
                 "restarts": self.restarts}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.load_own_state(state)
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.epoch = state["epoch"]
        self.restarts = state.get("restarts", 0) + 1
        for member in self.members:
            member.restarts = self.restarts


def summarize(history: list[dict]) -> dict:
    """Last-epoch and best-epoch accuracy of every output; best is taken per output, as KD code bases do."""
    outputs = sorted({key.split("/", 1)[1] for key in history[-1] if key.startswith("top1/")})
    last = {o: {"top1": history[-1][f"top1/{o}"], "top5": history[-1][f"top5/{o}"]} for o in outputs}
    best = {}
    for o in outputs:
        row = max(history, key=lambda h: h[f"top1/{o}"])
        best[o] = {"top1": row[f"top1/{o}"], "top5": row[f"top5/{o}"], "epoch": row["epoch"]}
    return {"epochs": len(history), "last": last, "best": best}

