"""The harness from Python (a notebook, a script): the same steps as the ``harness`` command, without argv.

    from harness import load_suite, run_suite, results_frame
    suite = load_suite("suites/quickstart.yaml", "seeds=[0]", "recipe.epochs=3")
    summary = run_suite(suite, results="results", reports="reports", num_cpus=2)
    frame = results_frame(suite, results="results")   # one row per (finished cell, output), with its hash and seed

Errors are the command's one-line ones: :class:`harness.suite.spec.SuiteError` (its ``lines``),
``DatasetError``, ``StorageError`` and so on, raised instead of printed."""
from __future__ import annotations

from pathlib import Path


def load_suite(path: str | Path, *overrides: str, smoke: bool = False, data_root: str | None = None,
               plugins: list[str] | tuple = ()):
    """A validated suite with ``key=value`` overrides applied (``--smoke``'s scale-down if asked); ``plugins``:
    modules or .py files registering methods, models or datasets, besides the suite's ``plugins:``."""
    from harness.suite.schema import load_suite as load
    from harness.suite.smoke import smoke_suite

    suite = load(path, list(overrides), plugins)
    return smoke_suite(suite, data_root) if smoke else suite


def suite_problems(suite) -> list[str]:
    """What refuses a suite before any data is read (one line each; :mod:`harness.suite.checks`)."""
    from harness.suite.checks import suite_problems as problems

    return problems(suite)


def prepare_run(suite, results: str = "results", data_root: str | None = None, log=print):
    """Every check a run makes before Ray starts (the data and networks fit, the resources, each cell's first
    batch, the data bound to its records); returns (the suite bound to the data here, its store)."""
    from harness.costs.rates import bench_memory
    from harness.results.store import ResultStore
    from harness.suite.binding import bind_data, dataset_loader
    from harness.costs.packing import repack
    from harness.suite.preflight import fetch_teachers, input_errors
    from harness.suite.schema import SuiteError

    problems = suite_problems(suite)
    if problems:  # refused before Ray starts: such a trial would queue, allocate and die
        raise SuiteError(problems)
    store = ResultStore(results)
    repack(suite, lambda: bench_memory(store))  # gpu: auto by what `harness bench` measured, where it did
    data_of = dataset_loader(data_root)  # a missing dataset fails here, in one line, not in every trial
    suite = bind_data(suite, store, data_of, log)
    problems = input_errors(suite, data_of) + fetch_teachers(suite, data_of, log)
    if problems:
        raise SuiteError(problems)
    return suite, store


def trackers(suite, results: str = "results", to: list[str] | None = None, offline: bool = False) -> list:
    """The experiment trackers a run of ``suite`` logs to, checked (their packages, a W&B key): the suite's ``log:``
    key, or ``to`` (``--log``: names, ``["none"]`` for none), all offline where ``offline``.  Their local files go
    under the ``results`` folder (the current folder for a results URI).  Raises ``TrackerError`` (one line)."""
    from harness.results.location import is_uri
    from harness.tracking.trackers import chosen_trackers

    local = str(results).removeprefix("file://")
    folder = Path.cwd() if is_uri(local) else Path(local).expanduser()
    chosen = chosen_trackers(suite.spec.log, to, offline, suite.name, folder)
    for tracker in chosen:
        tracker.check()
    return chosen


def run_suite(suite, results: str = "results", reports: str | None = "reports", data_root: str | None = None,
              device: str = "auto", address: str | None = None, dashboard: bool = False,
              num_cpus: float | None = None, num_gpus: float | None = None, max_failures: int = 2,
              smoke_checks: bool = False, log=print, log_to: list[str] | None = None, log_offline: bool = False):
    """Train the suite's unfinished cells on Ray (a local instance unless ``address``), write its report into
    ``reports`` (None: no report) and return the run's summary (``finished``, ``failed``, ``unfinished``).  Each cell
    is a run of the experiment trackers of :func:`trackers` (``log_to``, ``log_offline``: ``--log``,
    ``--log-offline``)."""
    from harness.reporting.report import write_report
    from harness.scheduling.runner import run_suite as run
    from harness.training.engine import Runtime

    chosen = trackers(suite, results, log_to, log_offline)  # a missing package: one line before anything starts
    suite, store = prepare_run(suite, results, data_root, log)
    store.check_writable()
    runtime = Runtime(device=device, data_root=data_root, require_every_term=smoke_checks)
    summary = run(suite, store, runtime, address=address, dashboard=dashboard, num_cpus=num_cpus,
                  num_gpus=num_gpus, max_failures=max_failures, log=log, trackers=chosen)
    if reports is not None:
        write_report(suite, store, reports, log=log)
    return summary


def results_frame(suite, results: str = "results", data_root: str | None = None, epoch: str | None = None):
    """A pandas DataFrame of the suite's finished cells: one row per (cell, output) with its accuracy at ``epoch``
    (the suite's first ``evaluation.epoch`` by default), method, group, seed, hash, code version and hardware."""
    from harness.reporting.frames import trial_frame
    from harness.results.store import ResultStore
    from harness.suite.binding import bind_data, dataset_loader

    store = ResultStore(results)
    return trial_frame(bind_data(suite, store, dataset_loader(data_root), log=lambda line: None), store, epoch=epoch)
