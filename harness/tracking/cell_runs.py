"""A Tune trial's cells as a tracker's runs: one run per cell (a trial of stacked seeds holds several), tagged with
what the cell is, its epochs logged as the trial reports them (or from the cell's record at the trial's end, where a
report cannot be told to be its own), then the record's final numbers and status.  No Ray import: the built-in
callbacks put :class:`CellRuns` before Ray's own logger callback."""
from __future__ import annotations

import re
from pathlib import Path

from harness.config.cell import Cell

# what Tune adds to every report (and the stacked-seeds count): not a cell's metric
TUNE_KEYS = frozenset({
    "training_iteration", "time_total_s", "time_this_iter_s", "time_since_restore", "iterations_since_restore",
    "timesteps_total", "timesteps_since_restore", "episodes_total", "timestamp", "date", "pid", "hostname", "node_ip",
    "config", "checkpoint_dir_name", "should_checkpoint", "done", "trial_id", "experiment_tag", "stacked_seeds_alive",
})


def code_text(code: dict) -> str:
    """The code version as one tag: the commit (12 hex digits, ``-dirty`` with uncommitted changes), else the
    package's version."""
    sha = code.get("git_sha")
    if sha:
        return f"{sha[:12]}{'-dirty' if code.get('dirty') else ''}"
    return f"okd-harness {code.get('version', '?')}"


def run_tags(cell: Cell, suite: str, code: dict) -> dict[str, str]:
    """The tags of a cell's run, as strings: suite, cell hash, method (and its label), peer group, seed, dataset and
    code version."""
    return {"suite": suite, "cell_hash": cell.hash, "method": cell.method, "label": cell.label or cell.method,
            "group": cell.group_name, "seed": str(cell.seed), "dataset": str(cell.dataset.get("name", "")),
            "code_version": code_text(code)}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def epoch_metrics(row: dict) -> dict:
    """A report (or a record's history row) as the metrics of one epoch: its numbers, Tune's own keys left out, and
    ``training_iteration`` (the step Ray's callbacks log at) set to the epoch."""
    metrics = {k: v for k, v in row.items() if k not in TUNE_KEYS and _number(v)}
    return {**metrics, "training_iteration": row["epoch"]}


def final_numbers(record: dict) -> dict:
    """A record's key numbers: ``final/<top1|top5>/<output>`` at the last epoch, ``best/<top1|top5|epoch>/<output>``
    at each output's best epoch, and the trial's ``final/wall_time_s``, ``final/epochs`` and ``final/restarts``."""
    out = {}
    for part, prefix in (("last", "final"), ("best", "best")):
        for output, values in (record.get(part) or {}).items():
            out.update({f"{prefix}/{metric}/{output}": v for metric, v in values.items() if _number(v)})
    out.update({f"final/{k}": record[k] for k in ("wall_time_s", "epochs", "restarts") if _number(record.get(k))})
    return out


class CellRun:
    """One cell of a Tune trial as a tracker's run.  It answers what Ray's logger callbacks read of a trial (its id,
    name, config, local path), so that their per-trial code logs one cell."""

    checkpoint = None  # no checkpoint uploads: the store keeps them

    def __init__(self, trial, cell: Cell, tags: dict[str, str], code: dict | None = None):
        self.trial, self.cell, self.tags, self.code = trial, cell, tags, code or {}
        self.trial_id = f"{cell.hash}-{getattr(trial, 'trial_id', 'trial')}"  # unique per run of a cell
        self.local_path = getattr(trial, "local_path", None)  # a callback that keeps files of its own sets it
        self.logged_epoch = 0
        self.status, self.error = "running", None  # ok, failed or interrupted at the end; the error's first line

    def __str__(self) -> str:
        return self.cell.describe()

    @property
    def name(self) -> str:
        return self.cell.describe()

    @property
    def slug(self) -> str:
        """A folder name: ``<label>_<group>_s<seed>_<hash>``."""
        readable = re.sub(r"[^A-Za-z0-9_.+-]+", "_", f"{self.tags['label']}_{self.cell.group_name}_s{self.cell.seed}")
        return f"{readable[:100]}_{self.cell.hash}"

    @property
    def config(self) -> dict:
        """The tags with the whole cell (hyper-parameters, recipe, dataset)."""
        return {**self.tags, "seed": self.cell.seed, "cell": self.cell.to_dict()}

    @property
    def evaluated_params(self) -> dict:
        """Flat, for TensorBoard's hyper-parameters view: the tags, the status and the method's hyper-parameters."""
        return {**self.tags, "status": self.status, **{f"hparams/{k}": v for k, v in self.cell.hparams.items()}}

    @property
    def experiment_dir_name(self) -> str | None:
        return getattr(self.trial, "experiment_dir_name", None)

    def init_local_path(self) -> None:
        Path(self.local_path).mkdir(parents=True, exist_ok=True)


class CellRuns:
    """Put before a Ray Tune ``LoggerCallback`` (``class Mine(CellRuns, LoggerCallback)``): each Tune trial's cells
    become runs, passed to :meth:`start_run`, :meth:`log_epoch` and :meth:`end_run`, which by default are the Ray
    callback's ``log_trial_start``, ``log_trial_result`` and ``log_trial_end`` with the run in the trial's place.

    A trial of stacked seeds reports its first live seed's metrics: they go to the first cell's run while every seed
    is alive; every other epoch of every cell is logged from the cell's record when the trial ends, so each run has
    its own cell's every epoch, once (a restarted trial's repeated epoch is not logged again).  A tracker that fails
    (its server gone) says so in one line, once, and training goes on: the records keep every number."""

    def __init__(self, tracker, cells_of, record_of, **kwargs):
        super().__init__(**kwargs)
        self.tracker, self.cells_of, self.record_of = tracker, cells_of, record_of
        self._runs: dict = {}  # Tune trial -> the runs of its cells
        self.failures = 0

    # --- Tune's calls --------------------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self._open(trial)

    def on_trial_restore(self, iteration, trials, trial, **info):
        self._open(trial)

    def on_trial_save(self, iteration, trials, trial, **info):
        pass

    def on_trial_result(self, iteration, trials, trial, result, **info):
        runs = self._open(trial)
        if len(runs) == 1 or result.get("stacked_seeds_alive") == len(runs):
            self._log(runs[0], result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(trial, "interrupted")  # without a record: stopped before it ended (Ctrl-C)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, "failed")

    def on_experiment_end(self, trials, **info):
        for trial in list(self._runs):
            self._close(trial, "interrupted")
        super().on_experiment_end(trials, **info)

    # --- what a tracker does with a run (override; Ray's per-trial calls by default) ----------------------------
    def start_run(self, run: CellRun) -> None:
        self.log_trial_start(run)

    def log_epoch(self, run: CellRun, metrics: dict) -> None:
        """``metrics``: one epoch's numbers, with ``epoch`` and ``training_iteration`` (the same)."""
        self.log_trial_result(metrics["training_iteration"], run, metrics)

    def end_run(self, run: CellRun, final: dict) -> None:
        """``final``: :func:`final_numbers` of its record (empty without one); ``run.status`` and ``run.error`` say
        how it ended."""
        if final:
            self.log_trial_result(run.logged_epoch, run, {**final, "training_iteration": run.logged_epoch})
        self.log_trial_end(run, failed=run.status != "ok")

    # --- the bookkeeping ------------------------------------------------------------------------------------------
    def _open(self, trial) -> list[CellRun]:
        if trial not in self._runs:
            cells, code = self.cells_of(trial)
            self._runs[trial] = [CellRun(trial, cell, run_tags(cell, self.tracker.suite, code), code)
                                for cell in cells]
            for run in self._runs[trial]:
                self._safely(self.start_run, run)
        return self._runs[trial]

    def _log(self, run: CellRun, row: dict) -> None:
        epoch = row.get("epoch")
        if _number(epoch) and epoch > run.logged_epoch:
            self._safely(self.log_epoch, run, epoch_metrics(row))
            run.logged_epoch = int(epoch)

    def _close(self, trial, otherwise: str) -> None:
        for run in self._runs.pop(trial, []):
            record = self.record_of(run.cell.hash) or {}
            for row in record.get("history") or []:
                self._log(run, row)
            run.status = record.get("status") or otherwise
            if run.status == "failed":
                run.error = (str(record.get("error") or "the trial failed").splitlines() or [""])[0][:500]
            self._safely(self.end_run, run, final_numbers(record))

    def _safely(self, call, run: CellRun, *args) -> None:
        try:
            call(run, *args)
        except Exception as e:  # noqa: BLE001 — a tracker's failure must not end the training
            if not self.failures:
                what = (str(e).splitlines() or [""])[0][:200]
                print(f"{getattr(self.tracker, 'label', type(self).__name__)}: could not log {run.name} "
                      f"({type(e).__name__}: {what}); training goes on, the records keep every number", flush=True)
            self.failures += 1
