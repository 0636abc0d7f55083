"""Per-epoch metrics reach Ray's metrics export (issue 18: the dashboard's Metrics view, Prometheus): a trial's
gauges, set from the metrics it reports, appear on the node's metrics port tagged by suite, cell and output."""
import time
import urllib.request

import pytest

from harness.config.cell import Cell


@pytest.fixture
def local_ray():
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
    yield ray._private.worker.global_worker.node.metrics_export_port
    ray.shutdown()


def test_a_trials_epoch_metrics_are_scraped_from_the_nodes_metrics_port(local_ray):
    import ray

    cell = Cell(method="dml", hparams={}, group=("cifar_resnet8", "cifar_resnet8"), dataset={"name": "x"},
                recipe={"epochs": 2}, seed=3, label="DML", suite="quickstart")

    @ray.remote
    def trial():
        from harness.scheduling.metrics import EpochMetrics

        EpochMetrics(cell).record({"epoch": 1, "top1/net1": 61.5, "top1/ens": 63.25, "loss/kl/net1": 0.125,
                                   "images_per_s": 340.0, "lr/peers": 0.1})
        time.sleep(30)  # the metrics agent reads a live worker's gauges

    running = trial.remote()
    deadline, lines = time.time() + 60, []
    while time.time() < deadline and not lines:
        text = urllib.request.urlopen(f"http://127.0.0.1:{local_ray}/metrics", timeout=5).read().decode()
        lines = [line for line in text.splitlines() if line.startswith("ray_harness_top1{")]
        time.sleep(1)
    ray.cancel(running, force=True)
    assert lines, "no harness gauge exported within 60 s"
    text = "\n".join(line for line in text.splitlines() if line.startswith("ray_harness_"))
    net1 = next(line for line in lines if 'output="net1"' in line)
    for tag in ('suite="quickstart"', f'cell="{cell.hash}"', 'method="DML"', 'seed="3"',
                'group="cifar_resnet8+cifar_resnet8"'):
        assert tag in net1, (tag, net1)
    assert net1.endswith(" 61.5") and any(line.endswith(" 63.25") for line in lines)
    assert 'term="kl/net1"' in text and "ray_harness_images_per_s{" in text and "ray_harness_epoch{" in text
