"""A real two-node Ray cluster on this machine (the session's ``ray_cluster``: a head and a second node, each a raylet
with its own CPUs, from Ray's own ``ray.cluster_utils.Cluster``): a cell on 2 workers × 1 CPU trains through Ray
Train (DDP over gloo), equals the same cell accumulating two passes in one process, appears as a named run in the
dashboard's Train view, and survives the loss of the second node mid-run (Ray Train restarts its workers on what is
left, from the last checkpoint) without losing a finished cell.

A Ray Train run costs about a minute of fixed time here, so the data-parallel cell trains once per session
(``dp_run``) and the tests that read it share it."""
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.suite.schema import load_suite
from tests.helpers import HARNESS, TINY_RECIPE, harness_main

pytestmark = pytest.mark.cluster

EPOCHS = 4  # the node is killed after epoch 2: two epochs left to resume into


def suite(seeds, **resources) -> dict:
    return {
        "name": "cluster", "dataset": {"name": "fashion_mnist_mini", "train_per_class": 12, "test_per_class": 10},
        "groups": [["cifar_resnet8", "cifar_resnet8"]], "methods": ["dml"], "seeds": seeds,
        "recipe": dict(TINY_RECIPE, epochs=EPOCHS), "resources": resources,
    }


def run(cluster, path, results, *extra, **popen):
    command = HARNESS + ["run", str(path), "--results", str(results), "--reports", str(results / "reports"),
                         "--address", cluster.address, "--no-dashboard", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def records(results) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "cells").glob("*.json"))]


@pytest.fixture(scope="module")
def dp_run(ray_instances, tmp_path_factory):
    """The data-parallel cell (seed 0) trained on the cluster by ``harness run``: ``(folder, record)``."""
    cluster, _ = ray_instances.two_nodes()
    folder = tmp_path_factory.mktemp("cluster")
    (folder / "dp.yaml").write_text(yaml.safe_dump(suite([0], workers=2, cpu_per_worker=1)))
    done = run(cluster, folder / "dp.yaml", folder / "dp")
    out, _ = done.communicate(timeout=600)
    assert done.returncode == 0, out
    (record,) = records(folder / "dp")
    return folder, record


def test_two_workers_on_two_nodes_equal_one_process_and_survive_losing_a_node(ray_cluster, dp_run, tmp_path, capfd):
    cluster, second = ray_cluster
    folder, dp = dp_run
    # 1. the data-parallel cell on the cluster, and the same cell accumulating its two parts in one process
    (tmp_path / "acc.yaml").write_text(yaml.safe_dump(suite([0], cpu=1, grad_accumulation=2)))
    code, out = harness_main(capfd, "run", tmp_path / "acc.yaml", "--results", tmp_path / "acc", "--reports",
                             tmp_path / "acc" / "reports", address=cluster.address)
    assert code == 0, out
    (acc,) = records(tmp_path / "acc")
    assert dp["hash"] == acc["hash"] and dp["parallel"]["workers"] == 2 and acc["parallel"]["grad_accumulation"] == 2
    # placed PACK: both workers on the head, which holds them (SPREAD put one on each node, all-reducing over the
    # network)
    assert dp["parallel"]["workers_on_first_node"] == 2
    for a, b in zip(dp["history"], acc["history"]):
        for key in (k for k in b if k.startswith(("top1/", "loss/"))):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (a["epoch"], key)

    # 2. a second cell on the same store; the second node dies while it trains.  A CPU of the head is held by
    # another job meanwhile, so the cell's workers must span both nodes (PACK keeps them on one where it can);
    # the job ends with the node, and Ray Train restarts the workers on the head
    (folder / "dp.yaml").write_text(yaml.safe_dump(suite([0, 1], workers=2, cpu_per_worker=1)))
    finished_before = (folder / "dp" / "cells" / f"{dp['hash']}.json").stat().st_mtime_ns
    other_job = hold_a_cpu_of_the_head(cluster)
    try:
        job = run(cluster, folder / "dp.yaml", folder / "dp", "--max-failures", "2")
        lines, killed = [], False
        for line in job.stdout:
            lines.append(line)
            if not killed and f"epoch 2/{EPOCHS}" in line:
                cluster.remove_node(second, allow_graceful=False)  # its raylet and workers, killed
                other_job.kill()
                killed = True
        job.wait(timeout=600)
    finally:
        other_job.kill()
        other_job.wait()
    out = "".join(lines)
    assert killed and job.returncode == 0, out
    assert "1 finished already, 1 to run" in out
    assert (folder / "dp" / "cells" / f"{dp['hash']}.json").stat().st_mtime_ns == finished_before
    new = next(r for r in records(folder / "dp") if r["hash"] != dp["hash"])
    assert new["status"] == "ok" and [h["epoch"] for h in new["history"]] == list(range(1, EPOCHS + 1))
    resumed = re.findall(r"resumed .* from epoch (\d+)", out)  # Ray Train restarted the workers, from a checkpoint
    assert resumed and int(resumed[-1]) >= 1, out


def hold_a_cpu_of_the_head(cluster) -> subprocess.Popen:
    """Another Ray job on the cluster that holds one CPU of the head node until killed (and then ends, freeing
    it); returns once the CPU is held."""
    script = (
        "import sys, time, ray\n"
        f"ray.init(address={cluster.address!r}, logging_level='ERROR')\n"
        "from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy\n"
        "@ray.remote(num_cpus=1)\n"
        "class Holder:\n"
        "    def ready(self): return True\n"
        f"head = NodeAffinitySchedulingStrategy({cluster.head_node.node_id!r}, soft=False)\n"
        "holder = Holder.options(scheduling_strategy=head).remote()\n"
        "ray.get(holder.ready.remote()); print('held', flush=True)\n"
        "time.sleep(3600)\n")
    job = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert job.stdout.readline().strip() == "held"
    return job


def test_a_data_parallel_cell_is_a_named_run_in_the_train_view(ray_cluster, dp_run):
    """A cell on 2 Ray Train workers appears in the dashboard's Train view (the dashboard's own
    ``/api/train/v2/runs/v1``, which its Train page reads) as a run named after the cell, finished."""
    import urllib.request

    from harness.scheduling.trainable import trial_dirname

    cluster, _ = ray_cluster
    folder, _ = dp_run
    (cell,) = load_suite(folder / "dp.yaml", ["seeds=[0]"]).cells
    url = f"http://{cluster.head_node.address_info['webui_url']}/api/train/v2/runs/v1"
    deadline = time.monotonic() + 60
    while True:  # the state actor's last update may land a moment after the run ends
        with urllib.request.urlopen(url, timeout=30) as response:
            runs = json.loads(response.read())["train_runs"]
        named = [r for r in runs if r["name"] == trial_dirname(cell)]
        if (named and named[0]["status"] == "FINISHED") or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert [r["status"] for r in named] == ["FINISHED"], [(r["name"], r["status"]) for r in runs]


def test_a_data_parallel_cell_that_fails_by_itself_is_recorded_once_per_run(ray_cluster, tmp_path, capfd):
    """A diverging cell on 2 workers: its rank 0 records the failure with the attempt's id, the trial ends without
    Tune's retries (one FAILED line, exit 1); the next run tries it again, and its record names the new attempt, so
    a failure left by an earlier run is never taken for this one's (a lost worker is retried)."""
    cluster, _ = ray_cluster
    spec = suite([0], workers=2, cpu_per_worker=1)
    spec["recipe"] = dict(spec["recipe"], epochs=2, optimizer={"name": "sgd", "lr": 1.0e12})
    (tmp_path / "nan.yaml").write_text(yaml.safe_dump(spec))
    attempts = []
    train_logs = Path(cluster.head_node.get_session_dir_path()) / "logs" / "train"

    def workers_started() -> int:  # Ray Train writes a log per worker it starts, on the head
        return len(list(train_logs.glob("ray-train-app-worker-*.log")))

    for _ in range(2):
        before = workers_started()
        code, out = harness_main(capfd, "run", tmp_path / "nan.yaml", "--results", tmp_path / "nan", "--reports",
                                 tmp_path / "nan" / "reports", address=cluster.address)
        assert code == 1 and out.count("FAILED dml") == 1 and "Traceback" not in out, out
        # one worker group of 2, not retried by Ray Train (max_failures 2 would start it 3 times): it would diverge
        # again, and a group of 8 GPU workers takes minutes to start
        assert workers_started() - before == 2
        (record,) = records(tmp_path / "nan")
        assert record["status"] == "failed" and record["error"].startswith("NonFiniteLoss"), record.get("error")
        attempts.append(record["attempt"])
    assert attempts[0] != attempts[1] and all(len(a) == 32 for a in attempts)
