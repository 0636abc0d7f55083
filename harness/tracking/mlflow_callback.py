"""MLflow through Ray's ``MLflowLoggerCallback``: one run per cell in the suite's experiment, named after the cell,
its tags (and MLflow's ``mlflow.source.git.commit``), the cell flattened as parameters, per-epoch metrics at step =
epoch, then the record's final numbers, a ``status`` tag and MLflow's run status (FINISHED, FAILED, KILLED).  Each
call is one batch (Ray's callback logs a metric per request, slow on a database store)."""
from __future__ import annotations

import logging
import time

from mlflow.entities import Metric, Param, RunTag
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.utils import flatten_dict

from harness.tracking.cell_runs import CellRun, CellRuns

STATUS = {"ok": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
BATCH = 100  # MLflow takes at most 100 parameters or tags per batch (and 1,000 metrics)


class MlflowCellRuns(CellRuns, MLflowLoggerCallback):
    def __init__(self, tracker, cells_of, record_of):
        super().__init__(tracker, cells_of, record_of, tracking_uri=tracker.tracking_uri,
                         experiment_name=tracker.experiment)

    def setup(self, *args, **kwargs):
        for name in ("mlflow", "alembic"):  # a new SQLite store's "Creating initial MLflow database tables..."
            logging.getLogger(name).setLevel(logging.WARNING)
        super().setup(*args, **kwargs)

    @property
    def client(self):
        return self.mlflow_util._get_client()

    def start_run(self, run: CellRun) -> None:
        tags = dict(run.tags)
        if run.code.get("git_sha"):  # MLflow's own tag of the commit
            tags["mlflow.source.git.commit"] = run.code["git_sha"]
        created = self.mlflow_util.start_run(run_name=run.name, tags=tags)
        self._trial_runs[run] = created.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in flatten_dict(run.config, delimiter="/").items()]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(created.info.run_id, params=params[i:i + BATCH])

    def log_epoch(self, run: CellRun, metrics: dict) -> None:
        self._metrics(run, metrics, metrics["training_iteration"])

    def end_run(self, run: CellRun, final: dict) -> None:
        run_id = self._trial_runs.pop(run)
        self._metrics(run, final, run.logged_epoch, run_id)
        ending = {"status": run.status, **({"error": run.error} if run.error else {})}
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in ending.items()])
        self.mlflow_util.end_run(run_id=run_id, status=STATUS.get(run.status, "FINISHED"))

    def _metrics(self, run: CellRun, values: dict, step: int, run_id: str | None = None) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(step)) for k, v in values.items() if k != "training_iteration"]
        if metrics:
            self.client.log_batch(run_id or self._trial_runs[run], metrics=metrics)
