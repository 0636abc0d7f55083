"""Each trial is visible by name in the Ray dashboard (issue 18): its actor's repr, which the dashboard's Actors
view and ``ray list actors --detail`` show, names the suite, the cell and its hash; read back through Ray's state
API from a real cluster with its dashboard, after a ``harness run --address`` of a tiny suite."""
import subprocess
import sys

import pytest
import yaml

from harness.suite.schema import load_suite
from tests.conftest import tiny_suite_dict


@pytest.fixture
def cluster_with_dashboard():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": True})
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def test_trial_actors_are_named_after_their_cells(cluster_with_dashboard, tmp_path):
    import ray
    from ray.util.state import list_actors

    path = tmp_path / "named.yaml"
    path.write_text(yaml.safe_dump(tiny_suite_dict(name="named", seeds=[0], methods=["ind", "dml"])))
    cells = load_suite(path).cells
    done = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(path), "--results", str(tmp_path / "r"),
                           "--reports", str(tmp_path / "rep"), "--address", cluster_with_dashboard.address],
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ray.init(address=cluster_with_dashboard.address)
    try:
        names = {a.repr_name for a in list_actors(detail=True, limit=1000)}
    finally:
        ray.shutdown()
    for cell in cells:
        assert f"named: {cell.describe()} [{cell.hash}]" in names, names
