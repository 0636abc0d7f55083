"""A real two-node Ray cluster on this machine (a head and a second node, each a raylet with its own CPUs, from
Ray's own ``ray.cluster_utils.Cluster``): a cell on 2 workers × 1 CPU trains through Ray Train (DDP over gloo),
equals the same cell accumulating two passes in one process, and survives the loss of the second node mid-run
(Ray Train restarts its workers on what is left, from the last checkpoint) without losing a finished cell."""
import json
import re
import subprocess
import time

import pytest
import yaml

from conftest import TINY_RECIPE
from tests.test_end_to_end import HARNESS

EPOCHS = 6


def suite(seeds, **resources) -> dict:
    return {
        "name": "cluster", "dataset": {"name": "fashion_mnist_mini", "train_per_class": 12, "test_per_class": 10},
        "groups": [["cifar_resnet8", "cifar_resnet8"]], "methods": ["dml"], "seeds": seeds,
        "recipe": dict(TINY_RECIPE, epochs=EPOCHS), "resources": resources,
    }


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "include_dashboard": False})
    second = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster, second
    cluster.shutdown()


def run(cluster, path, results, *extra, **popen):
    command = HARNESS + ["run", str(path), "--results", str(results), "--reports", str(results / "reports"),
                         "--address", cluster.address, "--no-dashboard", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def records(results) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "cells").glob("*.json"))]


def test_two_workers_on_two_nodes_equal_one_process_and_survive_losing_a_node(cluster, tmp_path):
    cluster, second = cluster
    # 1. the data-parallel cell on the cluster, and the same cell accumulating its two parts in one process
    (tmp_path / "dp.yaml").write_text(yaml.safe_dump(suite([0], workers=2, cpu_per_worker=1)))
    (tmp_path / "acc.yaml").write_text(yaml.safe_dump(suite([0], cpu=1, grad_accumulation=2)))
    for name in ("dp", "acc"):
        done = run(cluster, tmp_path / f"{name}.yaml", tmp_path / name)
        out, _ = done.communicate(timeout=600)
        assert done.returncode == 0, out
    (dp,), (acc,) = records(tmp_path / "dp"), records(tmp_path / "acc")
    assert dp["hash"] == acc["hash"] and dp["parallel"]["workers"] == 2 and acc["parallel"]["grad_accumulation"] == 2
    for a, b in zip(dp["history"], acc["history"]):
        for key in (k for k in b if k.startswith(("top1/", "loss/"))):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (a["epoch"], key)

    # 2. a second cell on the same store; the second node dies while it trains
    (tmp_path / "dp.yaml").write_text(yaml.safe_dump(suite([0, 1], workers=2, cpu_per_worker=1)))
    finished_before = (tmp_path / "dp" / "cells" / f"{dp['hash']}.json").stat().st_mtime_ns
    job = run(cluster, tmp_path / "dp.yaml", tmp_path / "dp", "--max-failures", "2")
    lines, killed = [], False
    for line in job.stdout:
        lines.append(line)
        if not killed and f"epoch 2/{EPOCHS}" in line:
            cluster.remove_node(second, allow_graceful=False)  # its raylet and workers, killed
            killed = True
    job.wait(timeout=600)
    out = "".join(lines)
    assert killed and job.returncode == 0, out
    assert "1 finished already, 1 to run" in out
    assert (tmp_path / "dp" / "cells" / f"{dp['hash']}.json").stat().st_mtime_ns == finished_before
    new = next(r for r in records(tmp_path / "dp") if r["hash"] != dp["hash"])
    assert new["status"] == "ok" and [h["epoch"] for h in new["history"]] == list(range(1, EPOCHS + 1))
    resumed = re.findall(r"resumed .* from epoch (\d+)", out)  # Ray Train restarted the workers, from a checkpoint
    assert resumed and int(resumed[-1]) >= 1, out


def test_a_data_parallel_cell_that_fails_by_itself_is_recorded_once_per_run(cluster, tmp_path):
    """A diverging cell on 2 workers: its rank 0 records the failure with the attempt's id, the trial ends without
    Tune's retries (one FAILED line, exit 1); the next run tries it again, and its record names the new attempt, so
    a failure left by an earlier run is never taken for this one's (a lost worker is retried)."""
    cluster, _ = cluster
    spec = suite([0], workers=2, cpu_per_worker=1)
    spec["recipe"] = dict(spec["recipe"], epochs=2, optimizer={"name": "sgd", "lr": 1.0e12})
    (tmp_path / "nan.yaml").write_text(yaml.safe_dump(spec))
    attempts = []
    for _ in range(2):
        proc = run(cluster, tmp_path / "nan.yaml", tmp_path / "nan")
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 1 and out.count("FAILED dml") == 1 and "Traceback" not in out, out
        (record,) = records(tmp_path / "nan")
        assert record["status"] == "failed" and record["error"].startswith("NonFiniteLoss"), record.get("error")
        attempts.append(record["attempt"])
    assert attempts[0] != attempts[1] and all(len(a) == 32 for a in attempts)
