"""``harness run``: every unfinished cell of a suite becomes one Ray Tune trial with the suite's resources."""
from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass, replace
from typing import Callable

from harness.data.downloads import data_root
from harness.config.cell import Cell
from harness.results.provenance import code_version
from harness.results.location import StorageError
from harness.results.store import ResultStore
from harness.suite.schema import Suite
from harness.scheduling.trainable import trial_dirname
from harness.scheduling.trial import Parallel, TrialConfig
from harness.training.engine import Runtime

RAY_ENV = {
    "HF_HUB_OFFLINE": "1",
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0 the classic reporter prints nothing; our callback reports
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # a trial stopped while it was failing (the store refused a write) leaves an error nobody fetches; its line is ours
    "RAY_IGNORE_UNHANDLED_ERRORS": "1",
    # a data-parallel cell's Ray Train run, named after the cell, in the dashboard's Train view (off by default)
    "RAY_TRAIN_ENABLE_STATE_TRACKING": "1",
}
QUIET_LOGGERS = ("ray.train", "ray.train._internal.storage", "ray.train.v2._internal.execution.storage")
# On the driver: Tune logs every failed trial's traceback ("Trial task failed ...") and a summary of the trials that
# did not complete; our progress callback prints one line per failure, and the traceback is in the cell's record
# and, where the store cannot take a write, Ray's syncer and experiment state log a traceback per attempt; the run
# stops at the first such failure with one line of its own (StoreUnwritable)
DRIVER_QUIET_LOGGERS = ("ray.tune.execution.tune_controller", "ray.tune.tune", "ray.train._internal.syncer",
                        "ray.tune.execution.experiment_state", "ray.tune.analysis.experiment_analysis")


class StoreUnwritable:
    """Set by the progress callback when a trial failed and the store no longer takes a write; Tune's stopper."""

    reason: str | None = None


def setup_worker() -> None:
    """Ray's worker_process_setup_hook: the torchvision shim, and no log line per saved checkpoint."""
    from harness import _compat

    _compat.install()
    _quiet_shutdown_in_callbacks()
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Ray Train: a line per report (a logger named by its file's path), and, without a dashboard, a warning every
    # few seconds that the state API cannot be queried; our progress line says what matters
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def _quiet_shutdown_in_callbacks() -> None:
    """Ray stops an idle worker with SIGTERM, whose handler raises SystemExit; landing in a garbage-collector
    callback, that is printed as an "Exception ignored" traceback on the driver's console at the end of a run.  Only
    that case is silenced; any other unraisable exception is printed as before."""
    import sys

    default = sys.unraisablehook

    def hook(unraisable):
        if unraisable.exc_type is SystemExit:
            return
        default(unraisable)

    sys.unraisablehook = hook


@dataclass
class RunSummary:
    total: int
    skipped: int
    ran: int
    failed: list[str]  # cells whose trial raised: recorded with their error
    unfinished: list[str]  # cells with no record: the run was interrupted before they ended


def ray_env(address: str | None, dashboard: bool) -> dict[str, str]:
    """The environment of the run's Ray processes: ``RAY_ENV`` and PyTorch's allocator setting, less Ray Train's
    state tracking on a local instance
    without a dashboard (its state actor polls the dashboard, and printed a traceback every few seconds for as long
    as a data-parallel cell trained: about 1,200 lines in 8 minutes).  A cluster joined by address keeps it (its
    dashboard's Train view shows the cells)."""
    env = dict(RAY_ENV)
    # this run's download settings (--offline, --mirror) reach its trials wherever they run
    env.update({k: os.environ[k] for k in ("HARNESS_OFFLINE", "HARNESS_DATA_MIRROR") if os.environ.get(k)})
    if not address and not dashboard:
        env["RAY_TRAIN_ENABLE_STATE_TRACKING"] = "0"
    # PyTorch's caching allocator grows segments in place rather than keeping freed blocks of odd sizes: less
    # fragmentation, so trials packed on one GPU stay within their memory share; a user's own setting is kept
    env["PYTORCH_CUDA_ALLOC_CONF"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    return env


def init_ray(address: str | None, dashboard: bool, num_cpus: float | None, num_gpus: float | None, log) -> None:
    """Join the cluster at ``address`` (or $RAY_ADDRESS), else start a local Ray instance."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    env = ray_env(address, dashboard)
    for key, value in env.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return
    kwargs = dict(
        runtime_env={"worker_process_setup_hook": "harness.scheduling.runner.setup_worker", "env_vars": env},
        logging_level="WARNING",
        log_to_driver=True,
        configure_logging=True,
    )
    if address:
        context = ray.init(address=address, **kwargs)
    else:
        from harness.scheduling.orphans import record_local_instance, stop_orphans

        stop_orphans(log)  # what a killed earlier run left running on this machine, and only that
        # address "local": a new instance even where `ray start` left one on this machine (ray.init would join
        # it, and then refuse num_cpus); joining a cluster is --address's business
        context = ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=dashboard,
                           dashboard_host="127.0.0.1", **kwargs)
        record_local_instance()
    resources = ray.cluster_resources()
    where = f"cluster at {address}" if address else "local Ray instance"
    log(f"{where}: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs")
    if getattr(context, "dashboard_url", None):
        auth = ("" if os.environ.get("RAY_AUTH_MODE") == "disabled"
                else " (token authentication: the token is in ~/.ray/auth_token; RAY_AUTH_MODE=disabled turns it off)")
        log(f"Ray dashboard: http://{context.dashboard_url}{auth}")


_progress_log = print  # set by _fit; a module global, so that Tune can pickle the callback (Ray swaps builtins.print)


def _say(line: str) -> None:
    _progress_log(line)


def eta_text(trials) -> str:
    """``, ETA 12 min`` for this experiment's trials (one wave of cells): the epochs each unfinished trial has left,
    at its own measured time per epoch (a trial not started yet: the mean of those measured), divided by the trials
    running at once; empty until an epoch has been measured."""
    measured = {id(t): r["time_total_s"] / r["epoch"] for t in trials
                if (r := getattr(t, "last_result", None) or {}).get("epoch") and r.get("time_total_s")}
    if not measured:
        return ""
    mean = sum(measured.values()) / len(measured)
    left = 0.0
    for trial in trials:
        if trial.status in ("TERMINATED", "ERROR"):
            continue
        cell = trial.config["cell"]
        epochs = min(cell.get("stop_epoch") or cell["recipe"]["epochs"], cell["recipe"]["epochs"])
        done = (getattr(trial, "last_result", None) or {}).get("epoch", 0)
        left += max(epochs - done, 0) * measured.get(id(trial), mean)
    seconds = left / max(1, sum(t.status == "RUNNING" for t in trials))
    return f", ETA {_duration(seconds)}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _progress_callback(total: int, store: ResultStore):
    from ray import tune

    class Progress(tune.Callback):
        """One line per reported epoch and per finished or failed trial, with the overall counts.  A cell that
        fails by itself records why and ends its trial normally (so that Tune does not retry it): its record, not
        the trial's status, says it failed."""

        done = failed = 0

        @staticmethod
        def _cells(trial) -> list[Cell]:
            """The trial's cells: its own, or every seed it trains stacked (``resources.stack_seeds``)."""
            return list(TrialConfig.decode(trial.config).cells)

        def _counts(self, trials, ending=None) -> str:
            # cells, not trials (a trial trains several seeds where they are stacked); not the one ending now
            running = sum(len(self._cells(t)) for t in trials if t.status == "RUNNING" and t is not ending)
            return f"[{self.done}/{total} done, {running} running, {self.failed} failed{eta_text(trials)}]"

        def on_trial_result(self, iteration, trials, trial, result, **info):
            cells = self._cells(trial)
            cell = cells[0]
            peers = [k.split("/", 1)[1] for k in result if k.startswith("top1/") and k[5:8] == "net"]
            accs = " ".join(f"{p} {result[f'top1/{p}']:.2f}" for p in peers)
            others = (f" (and seeds {', '.join(str(c.seed) for c in cells[1:])}, stacked)" if len(cells) > 1
                      else "")
            _say(f"{self._counts(trials)} {cell.describe()}{others} epoch {result['epoch']}/{cell.recipe['epochs']}: "
                f"{accs} ens {result['top1/ens']:.2f} ({result['images_per_s']:.0f} img/s)")

        def on_trial_complete(self, iteration, trials, trial, **info):
            for cell in self._cells(trial):
                record = store.get(cell.hash) or {}
                if record.get("status") == "failed":
                    self.failed += 1
                    _say(f"{self._counts(trials, trial)} FAILED {cell.describe()}: "
                         f"{record.get('error', 'unknown error')}")
                    continue
                self.done += 1
                restarts = f" after {record['restarts']} restart(s)" if record.get("restarts") else ""
                _say(f"{self._counts(trials, trial)} finished {cell.describe()}{restarts}")

        def on_trial_recover(self, iteration, trials, trial, **info):
            """A trial failed and Tune is about to retry it: where the store takes no more writes, the retry and
            every other trial would fail the same way, so the run stops now rather than after every retry."""
            reason = store.unwritable()
            if reason:
                StoreUnwritable.reason = reason

        def on_trial_error(self, iteration, trials, trial, **info):
            for cell in self._cells(trial):
                self.failed += 1
                record = store.get(cell.hash)
                if record is None:  # the worker died before it could write its own failure record
                    where = getattr(trial, "error_file", None)
                    record = {"hash": cell.hash, "cell": cell.to_dict(), "identity": cell.identity(),
                              "seed": cell.seed, "status": "failed",
                              "error": f"trial {trial.trial_id} ended with an error before recording it"
                                       + (f" (Ray's account: {where})" if where else "")}
                    try:
                        store.put(record)
                    except (OSError, StorageError) as e:  # a full or read-only store: say so, then stop the run
                        record["error"] += f"; and it could not be recorded ({getattr(e, 'strerror', None) or e})"
                        StoreUnwritable.reason = str(getattr(e, "strerror", None) or e)
                _say(f"{self._counts(trials, trial)} FAILED {cell.describe()}: "
                     f"{record.get('error', 'unknown error')}")

    return Progress()


def _finished_test(plan, store: ResultStore):
    """Whether a cell of ``plan`` is finished: its record ok, and a stage's saved networks intact too."""
    stage_hashes = plan.stage_hashes

    def done(cell: Cell) -> bool:
        return store.is_finished(cell) and (cell.hash not in stage_hashes or store.weights_intact(cell.hash))

    return done


@dataclass
class Progress:
    """Where a suite's plan (``suite.plan``) stands in a store: which cells are finished, which are pending, and the
    run's first line."""

    done: Callable[[Cell], bool]
    pending: list[Cell]
    headline: str


def progress_of(suite: Suite, store: ResultStore) -> Progress:
    plan = suite.plan
    done = _finished_test(plan, store)
    everything = plan.everything
    pending = [c for c in everything if not done(c)]
    extra = len(everything) - len(plan.cells)
    headline = (f"{suite.name}: {len(plan.cells)} cells{f' + {extra} stage cells (teachers)' if extra else ''}, "
                f"{len(everything) - len(pending)} finished already, {len(pending)} to run (results in {store.uri})")
    return Progress(done, pending, headline)


def dry_run_lines(suite: Suite, store: ResultStore) -> list[str]:
    """What ``harness run`` would train, wave by wave (teachers first), and what it would skip; trains nothing."""
    progress = progress_of(suite, store)
    plan, done = suite.plan.waves, progress.done
    lines = [f"{progress.headline}; dry run: nothing trains"]
    for i, wave in enumerate(plan):
        todo = [c for c in wave if not done(c)]
        if not todo:
            continue
        if len(plan) > 1:
            lines.append(f"stage {i + 1} of {len(plan)}: {len(todo)} cell(s)")
        for cell in todo:
            needs = [f"{name}: {s.describe()}" for name, s in suite.plan.stages[cell.hash].items()]
            lines.append(f"  {cell.describe()} [{cell.hash}]" + (f" after {'; '.join(needs)}" if needs else ""))
        if suite.spec.resources.stack_seeds:
            bundles = suite.plan.seed_bundles(todo)
            lines.append(f"  stack_seeds: these {len(todo)} cell(s) train as {len(bundles)} trial(s) "
                         f"({sum(len(b) > 1 for b in bundles)} of them several seeds stacked)")
    return lines


def run_suite(suite: Suite, store: ResultStore, runtime: Runtime = Runtime(), address: str | None = None,
              dashboard: bool = True, num_cpus: float | None = None, num_gpus: float | None = None,
              max_failures: int = 0, log=print, trackers=()) -> RunSummary:
    """Run the suite's unfinished cells, after the stage cells (teachers) they need; finished cells (in
    ``store``) are skipped, failed ones retried.  Stages run in waves, one Ray Tune experiment each; every cell that
    trains is a run of each of ``trackers`` (:class:`harness.tracking.trackers.Tracker`, checked already)."""
    progress = progress_of(suite, store)
    plan, done, everything, pending = suite.plan.waves, progress.done, suite.plan.everything, progress.pending
    log(progress.headline)
    todo = {c.hash for c in pending}
    _prune(store, [c for c in everything if c.hash not in todo], log)  # finished by an earlier, killed run
    if not pending:
        return RunSummary(len(everything), len(everything), 0, [], [])

    init_ray(address, dashboard, num_cpus, num_gpus, log)
    for tracker in trackers:
        log(tracker.opening())
    spec = suite.spec.resources
    # the data root is resolved here, on the driver: a trial on another node (or on a Ray instance started before
    # this run) sees its raylet's environment, not this process's $HARNESS_DATA
    runtime = replace(runtime, stack_peers=spec.stack_peers, compile=spec.compile, deterministic=spec.deterministic,
                      data_root=str(data_root(runtime.data_root)))
    parallel = Parallel(workers=spec.workers, grad_accumulation=spec.grad_accumulation, cpu=spec.cpu, gpu=spec.gpu,
                        max_failures=max_failures)
    _check_resources(suite)
    # a data-parallel cell's trial is only its driver: Ray Train asks for the workers' CPUs and GPUs itself
    resources = {"cpu": spec.cpu, "gpu": spec.gpu} if spec.workers == 1 else {"cpu": DRIVER_CPU}
    blocked: list[Cell] = []
    for i, wave in enumerate(plan):
        todo = [c for c in wave if not done(c)]
        ready = [c for c in todo if all(done(s) for s in suite.plan.needs(c))]
        blocked += [c for c in todo if c not in ready]
        if not ready:
            continue
        if len(plan) > 1:
            log(f"stage {i + 1} of {len(plan)}: {len(ready)} cell(s)")
        groups = suite.plan.seed_bundles(ready) if spec.stack_seeds else [[c] for c in ready]
        _fit(f"{suite.name}-stage{i + 1}" if len(plan) > 1 else suite.name, groups, store, runtime, resources,
             parallel, max_failures, log, suite.overrides, trackers)
        if any(store.get(c.hash) is None for c in ready):
            break  # interrupted: nothing that depends on this wave may start
    for line in filter(None, (tracker.closing() for tracker in trackers)):
        log(line)
    records = {c.hash: store.get(c.hash) for c in pending}
    failed = [c.describe() for c in pending if records[c.hash] and records[c.hash].get("status") == "failed"]
    failed += [f"{c.describe()} (a stage it needs failed)" for c in blocked
               if records[c.hash] is None and _stage_failed(suite.plan, c, store)]
    unfinished = [c.describe() for c in pending if records[c.hash] is None and not _stage_failed(suite.plan, c, store)]
    return RunSummary(len(everything), len(everything) - len(pending), len(pending), failed, unfinished)


def _prune(store: ResultStore, cells: list[Cell], log) -> None:
    folders, freed = store.prune_checkpoints(c.hash for c in cells)
    if folders:
        log(f"removed {folders} checkpoint(s) of finished cells ({freed / 2**20:.0f} MiB); their records and weights "
            "are kept")


DRIVER_CPU = 0.01  # what the trial of a data-parallel cell holds while its Ray Train workers train


class ResourceError(RuntimeError):
    """The cluster cannot run one trial of the suite (it would wait forever); the message is one line."""


def _check_resources(suite: Suite) -> None:
    """Refuse, in one line, a trial the Ray cluster can never place: it would wait forever (Ray Train retries the
    worker group of a data-parallel cell every minute).  A data-parallel cell needs its workers and the trial that
    drives them (``DRIVER_CPU``) at once."""
    import ray

    spec = suite.spec.resources
    have = ray.cluster_resources()
    driver = DRIVER_CPU if spec.workers > 1 else 0
    needs = {"gpu": spec.gpu * spec.workers, "cpu": spec.cpu * spec.workers + driver}
    for key, name in (("gpu", "GPU"), ("cpu", "CPU")):
        if needs[key] > have.get(name, 0) + 1e-9:
            how = ""
            if spec.workers > 1:
                driving = f" and {driver:g} for the trial that drives them" if key == "cpu" else ""
                how = f" ({spec.workers} workers × {getattr(spec, key):g}{driving})"
            raise ResourceError(
                f"{suite.path}: resources.{key}: a trial needs {needs[key]:g} {name}(s){how} but the Ray cluster has "
                f"{have.get(name, 0):g}; run on a machine or cluster that has them, pass --num-{key}s, or use --smoke "
                f"(which trains on the CPU when there is no GPU)")


def _stage_failed(plan, cell: Cell, store: ResultStore) -> bool:
    for stage in plan.needs(cell):
        record = store.get(stage.hash)
        if (record is not None and record.get("status") == "failed") or _stage_failed(plan, stage, store):
            return True
    return False


def trial_cells(trial) -> tuple[list[Cell], dict]:
    """A Tune trial's cells (one, or the seeds of a bundle) and the code version it runs: what a tracker tags."""
    decoded = TrialConfig.decode(trial.config)
    return list(decoded.cells), decoded.code


def _fit(name: str, groups: list[list[Cell]], store: ResultStore, runtime: Runtime, resources: dict,
         parallel: Parallel, max_failures: int, log, overrides: list[str] = (), trackers=()) -> None:
    """One Ray Tune experiment: a trial per group of cells (a cell, or a bundle of seeds where they are stacked);
    returns when all ended or after Ctrl-C.  The trackers' callbacks come after the progress callback, which records
    a trial that died before its cell could."""
    from ray import tune

    from harness.scheduling.trainable import cell_trainable

    global _progress_log
    _progress_log = log
    for logger in DRIVER_QUIET_LOGGERS:
        logging.getLogger(logger).setLevel(logging.CRITICAL)

    class StopWhenUnwritable(tune.Stopper):
        """Ends the experiment once the store takes no more writes: every further trial would fail the same way."""

        def __call__(self, trial_id, result):
            return False

        def stop_all(self):
            return StoreUnwritable.reason is not None

    StoreUnwritable.reason = None
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    cells = [c for g in groups for c in g]
    bundles = [g for g in groups if len(g) > 1]
    if bundles:
        log(f"stack_seeds: {sum(len(b) for b in bundles)} cells train as {len(bundles)} bundle(s) of "
            f"seeds, one trial each")
    tuner = tune.Tuner(
        tune.with_resources(cell_trainable(), resources),
        param_space=TrialConfig.param_space(groups, runtime, store.uri, code_version(), parallel, overrides),
        tune_config=tune.TuneConfig(
            trial_dirname_creator=lambda trial: trial_dirname(Cell.from_dict(trial.config["cell"])),
        ),
        run_config=tune.RunConfig(
            name=f"{name}-{stamp}",
            **store.location.ray_storage("ray"),
            verbose=0,
            stop=StopWhenUnwritable(),
            callbacks=[_progress_callback(len(cells), store),
                       *(tracker.callback(trial_cells, store.get) for tracker in trackers)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=max_failures),
        ),
    )
    try:
        tuner.fit()  # Ctrl-C: Tune stops the trials and returns; a second Ctrl-C raises
    except KeyboardInterrupt:
        pass
    except Exception:
        if StoreUnwritable.reason is None:
            raise
    finally:
        _prune(store, cells, log)  # on every way out, as before the store could refuse writes
    if StoreUnwritable.reason is not None:
        finished = sum(1 for c in cells if store.is_finished(c))
        raise StorageError(f"--results {store.uri}: stopped at the first write it refused ({StoreUnwritable.reason}); "
                           f"{finished} cell(s) of this wave finished and are kept: free space or fix the store, "
                           "then run the same command again")
