"""The Ray Tune function trainable: one cell, reported every epoch with a checkpoint, stored at the end.

It resumes from, in order: Tune's own checkpoint (a retried trial), else the newest readable checkpoint
that an earlier run of the same cell left in the result store's Tune folders.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import logging
import os
import re
import tempfile
import time
import traceback
import uuid
from pathlib import Path

import torch

import harness  # noqa: F401  (torchvision shim before timm)
from harness.config.cell import Cell
from harness.data.pipelines import loader_workers
from harness.results.provenance import hardware, package_versions
from harness.results.store import ResultStore
from harness.scheduling.metrics import EpochMetrics
from harness.scheduling.trial import TrialConfig
from harness.training.engine import NonFiniteLoss, Runtime, Trainer
from harness.training.memory import cap_gpu_memory
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


def resume_state(trainer: Trainer, store: ResultStore, log, session_checkpoint=None, lead: bool = True) -> None:
    """Load the session's own checkpoint (a retried trial, a restarted worker group), else the newest readable one
    an earlier run of the cell left in the store."""
    if session_checkpoint is not None:
        with session_checkpoint.as_directory() as folder:
            own = Path(folder) / CHECKPOINT_FILE
            candidates = [(str(own), lambda: own, None), *previous_checkpoints(store, trainer.cell.hash)]
            return _load_first(trainer, store, candidates, log, lead)
    _load_first(trainer, store, previous_checkpoints(store, trainer.cell.hash), log, lead)


def _load_first(trainer: Trainer, store: ResultStore, candidates: list[tuple], log, lead: bool = True) -> None:
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
def saved_state(trainer: Trainer):
    """A temporary folder holding the trainer's state as a checkpoint, for Tune or Train to take a copy of."""
    with tempfile.TemporaryDirectory() as folder:
        torch.save(trainer.state_dict(), os.path.join(folder, CHECKPOINT_FILE))
        yield folder


def train_cell(config: dict) -> None:
    """Tune entry point: ``config`` is a :class:`~harness.scheduling.trial.TrialConfig`, encoded; decoded here,
    once.  A cell on several workers runs as a Ray Train ``TorchTrainer`` launched from this trial (Ray's
    Train-inside-Tune pattern)."""
    trial = TrialConfig.decode(config)
    store = ResultStore(trial.results)
    if len(trial.cells) > 1:
        return _train_bundle_trial(trial, store)
    cell = trial.cell
    with store.cell_lock(cell.hash):
        if store.is_finished(cell) and store.has_weights(cell.hash):
            print(f"{cell.describe()} was finished by another run meanwhile; not trained again")
            return
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

    def report(trainer: Trainer, metrics: dict) -> None:
        with saved_state(trainer) as folder:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    _train(trial, Replicas(accumulation=trial.parallel.grad_accumulation), cpus, gpus,
           tune.get_context().get_trial_name(), tune.get_checkpoint(), report)


def _train(trial: TrialConfig, replicas: Replicas, cpus: int, gpus: float, name: str, session_checkpoint, report,
           device: str | None = None, placement: dict | None = None) -> None:
    """Train one cell (this process's share of it), report every epoch, store weights and record (rank 0);
    ``placement``: where the data-parallel workers ran, for the record."""
    cell = trial.cell
    store = ResultStore(trial.results)
    torch.set_num_threads(max(cpus, 1))
    started = time.time()
    record = _new_record(cell, trial, name, {"workers": replicas.world, "grad_accumulation": replicas.accumulation,
                                               "images_per_pass": cell.recipe["batch_size"] // replicas.parts,
                                               **(placement or {})})
    lead = replicas.rank == 0
    try:
        trainer = Trainer(cell, _runtime(trial.runtime, trial.results, cpus, gpus, device), replicas)
        cap_gpu_memory(trainer.device, gpus)
        record["data"] = trainer.data_fingerprint
        # of one GPU, for the index's rates: every worker's share
        record["hardware"] = {**hardware(str(trainer.device)), "gpu_share": gpus * replicas.world}
        resume_state(trainer, store, print if lead else (lambda line: None), session_checkpoint, lead)
        replicas.broadcast(trainer.method.modules)
        exported = EpochMetrics(cell) if lead else None

        def on_epoch(trainer: Trainer, metrics: dict) -> None:
            if exported is not None:
                exported.record(metrics)
            report(trainer, metrics)

        summary = trainer.run(on_epoch=on_epoch)
        # counted on every worker: the counted training forward runs SyncBatchNorm's all-gathers, which wait for
        # every rank (counted by rank 0 alone, it waited for ranks that had returned, until NCCL's timeout)
        costs = trainer.costs()
        if not lead:
            return
        relative, digest = store.save_weights(cell.hash, trainer.save_weights)
        record.update(status="ok", history=trainer.history, restarts=trainer.restarts, **summary,
                      params=trainer.method.parameter_counts(), costs=costs, stages=trainer.stage_provenance,
                      weights={"file": relative, "sha256": digest})
    except Exception as e:
        record.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        if replicas.distributed and not isinstance(e, NonFiniteLoss):
            raise  # Ray Train ends the worker group; the trial's driver finds the record
        # otherwise the trial ends normally: recorded, it is not retried (by Tune, or by Ray Train, which would
        # restart the whole worker group max_failures times), since it would fail again.  A non-finite loss is
        # raised by every rank at the same step (the losses are averaged across ranks before the check), so no
        # rank is left waiting in a collective when all of them return
    finally:
        if "status" in record and lead:
            store.put(_finish(record, started))


def _new_record(cell: Cell, trial: TrialConfig, name: str, parallel: dict) -> dict:
    """What a cell's record holds from the start: the cell, its code and packages, the trial and how it ran."""
    return {
        "hash": cell.hash, "cell": cell.to_dict(), "identity": cell.identity(), "seed": cell.seed,
        "code": trial.code, "packages": package_versions(),
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "trial": name,
        **({"attempt": trial.attempt} if trial.attempt else {}),
        **({"overrides": list(trial.overrides)} if trial.overrides else {}),
        "parallel": parallel,
    }


def _runtime(given: Runtime, results: str, cpus: int, gpus: float, device: str | None = None) -> Runtime:
    """How this trial (or data-parallel worker) trains: ``device`` is Ray Train's answer for a worker.  A trial that
    asked for no GPU trains on the CPU unless the run named a device: Ray 2.60 no longer hides the GPUs from an
    actor that asked for none, so ``auto`` (and Ray Train's ``get_device()``, cuda:0) would put it on GPU 0,
    beside the trials Ray placed there."""
    if not gpus and given.device == "auto":
        device = "cpu"
    return dataclasses.replace(given, results=results, **({"device": device} if device else {}),
                               workers=given.workers or loader_workers(cpus))


def _finish(record: dict, started: float) -> dict:
    record["wall_time_s"] = round(time.time() - started, 2)
    record["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return record


def _train_bundle_trial(trial: TrialConfig, store: ResultStore) -> None:
    """One trial for several seeds of a cell (``resources.stack_seeds``): each seed's lock held while they train;
    seeds another run finished meanwhile are left out, and a single seed left trains as a cell of its own."""
    from ray import tune

    cells = trial.cells
    with contextlib.ExitStack() as locks:
        for cell in sorted(cells, key=lambda c: c.hash):  # one order everywhere: two runs never deadlock
            locks.enter_context(store.cell_lock(cell.hash))
        todo = [c for c in cells if not (store.is_finished(c) and store.has_weights(c.hash))]
        for cell in cells:
            if cell not in todo:
                print(f"{cell.describe()} was finished by another run meanwhile; not trained again")
        if len(todo) == 1:
            return _train_in_process(trial.alone(todo[0]))
        if not todo:
            return
        required = tune.get_context().get_trial_resources().required_resources
        cpus, gpus = int(required.get("CPU", 1) or 1), float(required.get("GPU", 0) or 0)

        def report(bundle, metrics: dict) -> None:
            with saved_state(bundle) as folder:
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

        _train_bundle(trial, todo, cpus, gpus, tune.get_context().get_trial_name(), tune.get_checkpoint(), report)


def _train_bundle(trial: TrialConfig, cells: list[Cell], cpus: int, gpus: float, name: str, session_checkpoint,
                  report) -> None:
    """Train several seeds of a cell as one grouped network, report every epoch, store each seed's weights and
    record; a seed that fails (a NaN loss) is recorded failed while the others go on."""
    from harness.training.bundle import SeedBundle

    store = ResultStore(trial.results)
    torch.set_num_threads(max(cpus, 1))
    started = time.time()
    parallel = {"workers": 1, "grad_accumulation": 1, "images_per_pass": cells[0].recipe["batch_size"],
                "stacked_seeds": len(cells)}
    records = {c.hash: _new_record(c, trial, name, dict(parallel)) for c in cells}
    try:
        bundle = SeedBundle(cells, _runtime(trial.runtime, trial.results, cpus, gpus))
        cap_gpu_memory(bundle.device, gpus)
        for cell, trainer in zip(cells, bundle.trainers):
            # the device is shared by the seeds: each one's share, for the index's rates
            records[cell.hash].update(data=trainer.data_fingerprint,
                                      hardware={**hardware(str(bundle.device)), "gpu_share": gpus / len(cells)})
        resume_state(bundle, store, print, session_checkpoint)
        exported = [EpochMetrics(cell) for cell in cells]

        def on_epoch(bundle, metrics: dict) -> None:
            for gauges, trainer in zip(exported, bundle.trainers):
                if trainer.cell.hash not in bundle.failed and trainer.epoch == bundle.epoch:
                    gauges.record(trainer.history[-1])
            report(bundle, metrics)

        summaries = bundle.run(on_epoch=on_epoch)
        for s, (cell, trainer) in enumerate(zip(cells, bundle.trainers)):
            record = records[cell.hash]
            if cell.hash in bundle.failed:
                record.update(status="failed", error=bundle.failed[cell.hash], history=trainer.history)
                continue
            relative, digest = store.save_weights(cell.hash, trainer.save_weights)
            record.update(status="ok", history=trainer.history, restarts=bundle.restarts, **summaries[cell.hash],
                          params=bundle.parameter_counts[s], costs=bundle.costs[s], stages=trainer.stage_provenance,
                          weights={"file": relative, "sha256": digest})
    except Exception as e:
        for record in records.values():
            if "status" not in record:
                record.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    finally:
        for record in records.values():
            if "status" in record:
                store.put(_finish(record, started))


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
