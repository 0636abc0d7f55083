"""Per-epoch metrics reach Ray's metrics export (issue 18: the dashboard's Metrics view, Prometheus): a trial's
gauges, set from the metrics it reports, appear on the node's metrics port tagged by suite, cell and output."""
import time
import urllib.request

import pytest

from harness.config.cell import Cell


pytestmark = pytest.mark.cluster


@pytest.fixture
def metrics_ports(ray_cluster):
    """This process joined to the session's cluster; the metrics ports of its nodes (the gauges are read where the
    task runs, on either node)."""
    import ray

    cluster, second = ray_cluster
    ray.init(address=cluster.address, logging_level="ERROR")
    yield [node.metrics_export_port for node in (cluster.head_node, second)]
    ray.shutdown()


def test_a_trials_epoch_metrics_are_scraped_from_the_nodes_metrics_port(metrics_ports):
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
        text = "\n".join(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                         for port in metrics_ports)
        # this trial's lines: the session's cluster may still export the gauges of other tests' trials
        lines = [line for line in text.splitlines()
                 if line.startswith("ray_harness_top1{") and f'cell="{cell.hash}"' in line]
        time.sleep(1)
    ray.cancel(running, force=True)
    assert lines, "no harness gauge exported within 60 s"
    text = "\n".join(line for line in text.splitlines()
                     if line.startswith("ray_harness_") and f'cell="{cell.hash}"' in line)
    net1 = next(line for line in lines if 'output="net1"' in line)
    for tag in ('suite="quickstart"', f'cell="{cell.hash}"', 'method="DML"', 'seed="3"',
                'group="cifar_resnet8+cifar_resnet8"'):
        assert tag in net1, (tag, net1)
    assert net1.endswith(" 61.5") and any(line.endswith(" 63.25") for line in lines)
    assert 'term="kl/net1"' in text and "ray_harness_images_per_s{" in text and "ray_harness_epoch{" in text
