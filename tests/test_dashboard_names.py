"""A suite submitted as a Ray job to a real cluster with its dashboard (the session's ``ray_cluster``), and each of
its trials visible by name in the dashboard (issue 18): its actor's repr, which the dashboard's Actors view and
``ray list actors --detail`` show, names the suite, the cell and its hash; read back through Ray's state API.  That a
data-parallel cell is a named run of the Train view is tested in ``test_cluster.py``, on its run."""
import sys

import pytest
import yaml

from harness.suite.schema import load_suite
from tests.helpers import tiny_suite_dict

pytestmark = pytest.mark.cluster


def test_a_suite_runs_as_a_ray_job_and_its_trial_actors_are_named_after_their_cells(ray_cluster, tmp_path):
    """``ray job submit -- harness run SUITE`` (the README's command) through the Jobs API of a real cluster: the
    job joins the cluster through $RAY_ADDRESS, which Ray sets inside a job, finishes, and its records are in the
    store; the job's logs carry the suite's progress lines; the cluster's actors include one named after each cell."""
    import time

    import ray
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors

    from harness.results.store import ResultStore

    cluster_with_dashboard, _ = ray_cluster
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(tiny_suite_dict(name="job", seeds=[0], methods=["ind", "dml"])))
    url = "http://" + cluster_with_dashboard.head_node.address_info["webui_url"]
    entrypoint = (f"{sys.executable} -m harness.cli run {path} --results {tmp_path / 'r'} "
                  f"--reports {tmp_path / 'rep'}")
    deadline = time.monotonic() + 120
    while True:  # the head's job agent comes up a few seconds after the node
        try:
            client = JobSubmissionClient(url)
            job = client.submit_job(entrypoint=entrypoint)
            break
        except (RuntimeError, ConnectionError) as error:
            if time.monotonic() > deadline:
                raise AssertionError(f"no job agent on {url}: {error}") from error
            time.sleep(2)
    deadline = time.monotonic() + 400
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, client.get_job_logs(job)[-2000:]
        time.sleep(2)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "cluster at" in logs, logs[-2000:]  # it joined the job's cluster, it did not start its own
    cells = load_suite(path).cells
    records = ResultStore(tmp_path / "r").records(cells)
    assert {h: r["status"] for h, r in records.items()} == {c.hash: "ok" for c in cells}, records
    ray.init(address=cluster_with_dashboard.address)
    try:
        names = {a.repr_name for a in list_actors(detail=True, limit=1000)}
    finally:
        ray.shutdown()
    for cell in cells:
        assert f"job: {cell.describe()} [{cell.hash}]" in names, names
