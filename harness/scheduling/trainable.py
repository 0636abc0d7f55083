"""The Ray Tune function trainable: one cell, reported every epoch with a checkpoint, stored at the end.

It resumes from, in order: Tune's own checkpoint (a retried trial), else the newest readable checkpoint
that an earlier run of the same cell left in the result store's Tune folders.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import re
import tempfile
import uuid
from pathlib import Path

import torch

import harness  # noqa: F401  (torchvision shim before timm)
from harness.config.cell import Cell
from harness.data.pipelines import loader_workers
from harness.registry import load_cell_plugins
from harness.results.store import ResultStore
from harness.scheduling.metrics import EpochMetrics
from harness.scheduling.record import CellRecord, recorded
from harness.scheduling.trial import TrialConfig
from harness.training.engine import NonFiniteLoss, Runtime, Trainer
from harness.training.engine import cap_gpu_memory
from harness.training.parallel import Replicas

CHECKPOINT_FILE = "state.pt"


def trial_dirname(cell: Cell) -> str:
    """Readable and unique: the hash (used to find the cell's checkpoints again) plus what it is."""
    readable = re.sub(r"[^A-Za-z0-9_.+-]+", "_", f"{cell.label or cell.method}_{cell.group_name}_s{cell.seed}")
    return f"{cell.hash}_{readable}"[:120]


class CorruptCheckpoint(RuntimeError):
    pass


def load_checkpoint(source: Path | bytes, name: str | None = None) -> dict:
    """A trainer state from a local file or from the bytes of one read from the store."""
    try:
        return torch.load(io.BytesIO(source) if isinstance(source, bytes) else source, map_location="cpu",
                          weights_only=True)
    except Exception as e:  # truncated, not a torch file, wrong format: all mean "unusable"
        raise CorruptCheckpoint(f"{name or source}: unreadable checkpoint ({type(e).__name__}: {e})") from None


def previous_checkpoints(store: ResultStore, cell_hash: str) -> list[tuple[str, object]]:
    """(name, loader) of this cell's checkpoints from earlier runs, newest first."""
    return [(f"{store.uri}/{e.path}", lambda e=e: store.location.read_bytes(e.path), e.path)
            for e in store.checkpoints(cell_hash, CHECKPOINT_FILE)]


def resume_state(trainer, store: ResultStore, log, session_checkpoint=None, lead: bool = True) -> None:
    """Load the session's own checkpoint (a retried trial, a restarted worker group), else the newest readable one
    an earlier run of the cell left in the store."""
    if session_checkpoint is not None:
        with session_checkpoint.as_directory() as folder:
            own = Path(folder) / CHECKPOINT_FILE
            candidates = [(str(own), lambda: own, None), *previous_checkpoints(store, trainer.cell.hash)]
            return _load_first(trainer, store, candidates, log, lead)
    _load_first(trainer, store, previous_checkpoints(store, trainer.cell.hash), log, lead)


def _load_first(trainer, store: ResultStore, candidates: list[tuple], log, lead: bool = True) -> None:
    """Resume from the first readable candidate; an unreadable one in the store is moved aside (kept)."""
    for name, read, relative in candidates:
        try:
            source = read()
            if source is None:
                continue  # removed since it was listed (a finished run's pruning)
            trainer.load_state_dict(load_checkpoint(source, name))
            log(f"resumed {trainer.cell.describe()} from epoch {trainer.epoch} ({name})")
            return
        except (CorruptCheckpoint, ValueError, KeyError) as e:
            damaged = isinstance(e, CorruptCheckpoint) and relative and lead  # one worker moves it
            aside = f"; moved to {store.location.move_aside(relative)}" if damaged else ""
            log(f"skipping checkpoint: {str(e)[:300]}{aside}")


@contextlib.contextmanager
def saved_state(trainer):
    """A temporary folder holding the trainer's state as a checkpoint, for Tune or Train to take a copy of."""
    with tempfile.TemporaryDirectory() as folder:
        torch.save(trainer.state_dict(), os.path.join(folder, CHECKPOINT_FILE))
        yield folder


def train_cell(config: dict) -> None:
    """Tune entry point: ``config`` is a :class:`~harness.scheduling.trial.TrialConfig`, encoded; decoded here,
    once.  Each cell's lock is held while it trains; a cell another run finished meanwhile is left out (a bundle's
    last seed left trains alone).  A cell on several workers runs as a Ray Train ``TorchTrainer`` launched from this
    trial (Ray's Train-inside-Tune pattern)."""
    trial = TrialConfig.decode(config)
    load_cell_plugins(trial.cells)  # a plug-in's method, networks or dataset
    store = ResultStore(trial.results)
    with contextlib.ExitStack() as locks:
        for cell in sorted(trial.cells, key=lambda c: c.hash):  # one order everywhere: two runs never deadlock
            locks.enter_context(store.cell_lock(cell.hash))
        todo = [c for c in trial.cells if not (store.is_finished(c) and store.has_weights(c.hash))]
        for cell in trial.cells:
            if cell not in todo:
                print(f"{cell.describe()} was finished by another run meanwhile; not trained again")
        if not todo:
            return
        trial = trial.only(todo)
        if trial.parallel.workers > 1:
            return _train_data_parallel(trial, store)
        _train_in_process(trial)


def cell_trainable():
    """Tune's trainable of ``train_cell`` whose trial actors are named after their cell: the Ray dashboard's
    Actors view (and ``ray list actors --detail``) shows an actor's ``repr``, which for a function trainable is
    otherwise the function's name, the same for every trial."""
    from ray.tune.trainable.function_trainable import wrap_function

    class CellTrial(wrap_function(train_cell)):
        def setup(self, config):
            cell = Cell.from_dict(config["cell"])
            self._name = f"{cell.suite}: {cell.describe()} [{cell.hash}]"
            super().setup(config)

    return CellTrial


def _train_in_process(trial: TrialConfig) -> None:
    from ray import tune

    required = tune.get_context().get_trial_resources().required_resources
    cpus, gpus = int(required.get("CPU", 1) or 1), float(required.get("GPU", 0) or 0)

    def report(loop, metrics: dict) -> None:
        with saved_state(loop) as folder:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    _train(trial, Replicas(accumulation=trial.parallel.grad_accumulation), cpus, gpus,
           tune.get_context().get_trial_name(), tune.get_checkpoint(), report)


def _train(trial: TrialConfig, replicas: Replicas, cpus: int, gpus: float, name: str, session_checkpoint, report,
           device: str | None = None, placement: dict | None = None) -> None:
    """Train the trial's cells (one cell, this process's share of it, or several seeds as one grouped network),
    report every epoch, store each cell's weights and record (rank 0); a stacked seed that fails (a NaN loss) is
    recorded failed while the others go on.  ``placement``: where the data-parallel workers ran, for the record."""
    from harness.training.bundle import SeedBundle

    cells = list(trial.cells)
    store = ResultStore(trial.results)
    torch.set_num_threads(max(cpus, 1))
    parallel = {"workers": replicas.world, "grad_accumulation": replicas.accumulation,
                "images_per_pass": cells[0].recipe["batch_size"] // replicas.parts, **(placement or {}),
                **({"stacked_seeds": len(cells)} if len(cells) > 1 else {})}
    records = [CellRecord(cell, trial, name, dict(parallel)) for cell in cells]
    lead = replicas.rank == 0
    # a data-parallel worker's failure ends the worker group (the trial's driver finds the record), except a
    # non-finite loss: every rank raises it at the same step (the losses are averaged across ranks before the check),
    # so no rank is left waiting in a collective when all of them return
    with recorded(store, records, write=lead,
                  raises=lambda e: replicas.distributed and not isinstance(e, NonFiniteLoss)):
        runtime = _runtime(trial.runtime, trial.results, cpus, gpus, device)
        loop = Trainer(cells[0], runtime, replicas) if len(cells) == 1 else SeedBundle(cells, runtime)
        cap_gpu_memory(loop.device, gpus)
        for record, member in zip(records, loop.members):
            # of one GPU, for the index's rates: every worker's share, a stacked seed's part of the trial's
            record.ran_on(member.data_fingerprint, str(loop.device), gpus * replicas.world / len(cells))
        resume_state(loop, store, print if lead else (lambda line: None), session_checkpoint, lead)
        replicas.broadcast(loop.members[0].method.modules)
        exported = [EpochMetrics(cell) for cell in cells] if lead else []

        def on_epoch(loop, metrics: dict) -> None:
            for gauges, member in zip(exported, loop.members):
                if member.cell.hash not in loop.failed and member.epoch == loop.epoch:
                    gauges.record(member.history[-1])
            report(loop, metrics)

        summaries = loop.run_members(on_epoch=on_epoch)
        # counted on every worker: the counted training forward runs SyncBatchNorm's all-gathers, which wait for
        # every rank (counted by rank 0 alone, it waited for ranks that had returned, until NCCL's timeout)
        costs = loop.member_costs()
        if not lead:
            return
        for record, member, params, cost in zip(records, loop.members, loop.member_parameters(), costs):
            if member.cell.hash in loop.failed:
                record.fail(loop.failed[member.cell.hash], history=member.history)
            else:
                record.finish(store, member, summaries[member.cell.hash], loop.restarts, params, cost)


def _runtime(given: Runtime, results: str, cpus: int, gpus: float, device: str | None = None) -> Runtime:
    """How this trial (or data-parallel worker) trains: ``device`` is Ray Train's answer for a worker.  A trial that
    asked for no GPU trains on the CPU unless the run named a device: Ray 2.60 no longer hides the GPUs from an
    actor that asked for none, so ``auto`` (and Ray Train's ``get_device()``, cuda:0) would put it on GPU 0,
    beside the trials Ray placed there."""
    if not gpus and given.device == "auto":
        device = "cpu"
    return dataclasses.replace(given, results=results, **({"device": device} if device else {}),
                               workers=given.workers or loader_workers(cpus))


def _train_data_parallel(trial: TrialConfig, store: ResultStore) -> None:
    """The trial's driver: a TorchTrainer with one worker per share of the cell, its checkpoints under the result
    store's ``ray/train/<trial folder>`` (a re-run of the cell resumes there), metrics passed on to Tune."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    cell, parallel = trial.cell, trial.parallel
    resources = {"CPU": parallel.cpu, **({"GPU": parallel.gpu} if parallel.gpu else {})}
    attempt = uuid.uuid4().hex  # names this attempt's record: an earlier run's failed record is not this failure
    # PACK (Ray's default): a cell's workers on as few nodes as will hold them, so that its all-reduce runs over
    # NVLink or shared memory; SPREAD put them on different nodes, over the network
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config=dataclasses.replace(trial, attempt=attempt).encode(),
        scaling_config=ray.train.ScalingConfig(num_workers=parallel.workers, use_gpu=bool(parallel.gpu),
                                               resources_per_worker=resources, placement_strategy="PACK"),
        run_config=ray.train.RunConfig(
            name=trial_dirname(cell), **store.location.ray_storage("ray/train"),
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=parallel.max_failures),
            # our progress line reports each epoch; Train's own INFO/WARNING lines (resource requests, each
            # checkpoint and report) would bury it
            logging_config=ray.train.LoggingConfig(log_level="ERROR"),
        ),
    )
    try:
        trainer.fit()
    except Exception:
        record = store.get(cell.hash)
        if record is None or record.get("status") != "failed" or record.get("attempt") != attempt:
            raise  # a worker lost, not a failure of the cell's own: Tune may restart the trial
        # the cell failed by itself (rank 0 recorded why): not retried


def _worker_loop(config: dict) -> None:
    """One Ray Train worker: its rank's share of every batch; rank 0 checkpoints and writes the record."""
    import ray.train
    import ray.train.torch

    # Ray Train logs a worker's exception with its traceback on the driver's console; the cell's own failure is
    # already one FAILED line there, with the traceback in its record
    logging.getLogger("ray.train.v2._internal.util").setLevel(logging.CRITICAL)
    context = ray.train.get_context()
    trial = TrialConfig.decode(config)
    load_cell_plugins(trial.cells)
    replicas = Replicas(rank=context.get_world_rank(), world=context.get_world_size(),
                        accumulation=trial.parallel.grad_accumulation)

    def report(trainer: Trainer, metrics: dict) -> None:
        if replicas.rank != 0:
            ray.train.report(metrics)
            return
        with saved_state(trainer) as folder:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))

    device = ray.train.torch.get_device()
    _train(trial, replicas, int(trial.parallel.cpu), float(trial.parallel.gpu),
           f"{context.get_experiment_name()} rank {replicas.rank}", ray.train.get_checkpoint(), report,
           device=str(device), placement={"workers_on_first_node": context.get_local_world_size()})
