"""W&B through Ray's ``WandbLoggerCallback``: one logging actor per cell's run (Ray's design: W&B logs a run per
process), its id ``<cell hash>-<trial id>``, its name the cell's, grouped by label and peer group so that W&B
aggregates a table entry's seeds, tagged, the cell and its tags as the run's config; per-epoch metrics at step =
epoch, then the record's final numbers and its status."""
from __future__ import annotations

import os

import ray
from ray.air.integrations.wandb import WandbLoggerCallback, _clean_log
from ray.air.util.node import _force_on_current_node

from harness.tracking.cell_runs import CellRun, CellRuns


class WandbCellRuns(CellRuns, WandbLoggerCallback):
    def __init__(self, tracker, cells_of, record_of):
        init = {"entity": tracker.entity, "dir": str(tracker.dir)} if tracker.entity else {"dir": str(tracker.dir)}
        if tracker.offline:
            init["mode"] = "offline"  # passed to wandb.init in the actor: a Ray worker does not see this $WANDB_MODE
        super().__init__(tracker, cells_of, record_of, project=tracker.project, **init)

    def setup(self, *args, **kwargs):
        """Not Ray's: its API key check (the tracker's check made it before Ray started; Ray's asks ``wandb.api``,
        deprecated, with a warning on the console) and its project and group (ours are set).  Ray's logging actor,
        less W&B's console lines (a banner and a summary per run, on the driver's console between the progress
        lines) and less its restarts (Ray warns on the console that a restart could fail: a run is not worth it, the
        cell's record keeps every number)."""
        # the driver's W&B variables (a key, a self-hosted server's WANDB_BASE_URL): a joined cluster's actor does
        # not inherit them
        env = {"WANDB_SILENT": "true", **{k: v for k, v in os.environ.items() if k.startswith("WANDB_")}}
        self._remote_logger_class = ray.remote(num_cpus=0, **_force_on_current_node(), runtime_env={"env_vars": env},
                                               max_restarts=0)(self._logger_actor_cls)

    def start_run(self, run: CellRun) -> None:
        os.makedirs(self.kwargs["dir"], exist_ok=True)
        run.local_path = self.kwargs["dir"]  # the actor's working folder
        tags = [run.tags[k] for k in ("suite", "label", "group")] + [f"seed={run.cell.seed}"]
        self._start_logging_actor(
            run, self._exclude_results + self.excludes + ["config"], id=run.trial_id, name=run.name,
            group=f"{run.tags['label']} {run.tags['group']}", job_type=run.tags["label"], tags=[t[:64] for t in tags],
            project=self.project, config=_clean_log(run.config), resume=False, allow_val_change=True, **self.kwargs)

    def end_run(self, run: CellRun, final: dict) -> None:
        # the record's numbers at the last epoch's step (W&B's summary: the last value of each), how it ended in the
        # run's config (Ray's actor updates the config from a result's "config")
        ending = {"status": run.status, **({"error": run.error} if run.error else {})}
        self.log_trial_result(run.logged_epoch, run, {**final, "training_iteration": run.logged_epoch,
                                                      "config": ending})
        self.log_trial_end(run, failed=run.status != "ok")
