"""Per-epoch metrics of every trial, exported through Ray's metrics (``ray.util.metrics``).

Ray's dashboard graphs them in its Metrics view where Prometheus and Grafana are set up for the cluster (Ray's
"Collecting and monitoring metrics" guide), and any Prometheus scrapes them from each node's metrics port
(``ray_harness_top1{suite=…, cell=…, output=…}``).  Gauges hold the last epoch's values, tagged by suite, cell hash,
method label, group and seed, so one query selects a cell or a whole suite."""
from __future__ import annotations

from harness.config.cell import Cell

TAGS = ("suite", "cell", "method", "group", "seed")


class EpochMetrics:
    """The gauges of one trial; ``record`` sets them from the metrics a trial reports after an epoch."""

    def __init__(self, cell: Cell):
        from ray.util.metrics import Gauge

        self.tags = {"suite": cell.suite, "cell": cell.hash, "method": cell.label or cell.method,
                     "group": cell.row_name, "seed": str(cell.seed)}
        self.epoch = Gauge("harness_epoch", "epochs a trial has completed", tag_keys=TAGS)
        self.top1 = Gauge("harness_top1", "test top-1 accuracy (%) of an output at the last epoch",
                          tag_keys=(*TAGS, "output"))
        self.loss = Gauge("harness_loss", "mean training loss of a term over the last epoch", tag_keys=(*TAGS, "term"))
        self.speed = Gauge("harness_images_per_s", "training images per second over the last epoch", tag_keys=TAGS)

    def record(self, metrics: dict) -> None:
        self.epoch.set(metrics["epoch"], tags=self.tags)
        if "images_per_s" in metrics:
            self.speed.set(metrics["images_per_s"], tags=self.tags)
        for key, value in metrics.items():
            if not isinstance(value, (int, float)):
                continue
            if key.startswith("top1/"):
                self.top1.set(value, tags={**self.tags, "output": key[5:]})
            elif key.startswith("loss/"):
                self.loss.set(value, tags={**self.tags, "term": key[5:]})
