"""TensorBoard through Ray's ``TBXLoggerCallback`` (tensorboardX's writer): one folder of event files per cell,
``<logdir>/<suite>/<label>_<group>_s<seed>_<hash>``, its per-epoch scalars under their own names (``top1/net1``,
``loss/ce``) at step = epoch, the tags as text, and at the end the record's final numbers as scalars and the tags,
status and hyper-parameters in TensorBoard's HParams view.  Being a TBXLoggerCallback, it takes the place of the one
Tune adds by default (the event files in each trial's folder under ``results/ray``)."""
from __future__ import annotations

from ray.tune.logger import TBXLoggerCallback

from harness.tracking.cell_runs import CellRun, CellRuns


class TensorboardCellRuns(CellRuns, TBXLoggerCallback):
    def start_run(self, run: CellRun) -> None:
        run.local_path = str(self.tracker.logdir / self.tracker.suite / run.slug)
        run.init_local_path()
        writer = self._trial_writer[run] = self._summary_writer_cls(run.local_path, flush_secs=30)
        self._trial_result[run] = {}
        writer.add_text("cell", "  \n".join(f"**{k}**: {v}" for k, v in run.tags.items()), global_step=0)

    def log_epoch(self, run: CellRun, metrics: dict) -> None:
        self._scalars(run, metrics, metrics["training_iteration"])

    def end_run(self, run: CellRun, final: dict) -> None:
        self._scalars(run, final, run.logged_epoch)
        if run.error:
            self._trial_writer[run].add_text("error", run.error, global_step=run.logged_epoch)
        self.log_trial_end(run, failed=run.status != "ok")  # Ray's: the HParams summary (evaluated_params), closed

    def _scalars(self, run: CellRun, values: dict, step: int) -> None:
        writer = self._trial_writer[run]
        for key, value in values.items():
            if key != "training_iteration":
                writer.add_scalar(key, value, global_step=step)
                self._trial_result[run][key] = value
        writer.flush()
