"""Fixtures shared by every test module.  Shared constants and functions live in ``tests/helpers.py`` (imported as
``tests.helpers``); this file is pytest's, never imported by a test.

Ray is expensive to start on this 2-core machine (4-6 s for ``ray.init``, about 90 s of fixed cost for a Ray Train
run), so the tests share it:

- ``ray_address``: one local Ray instance (2 CPUs, no dashboard, like ``harness run --num-cpus 2``) that the ``e2e``
  tests' runs join: ``harness run`` subprocesses through ``$RAY_ADDRESS`` where the process is the subject (its
  console, two runs at once), else the CLI's own ``main`` in the test's process (``helpers.harness_main``: 5-6 s of
  imports and teardown less per run).  Tests whose subject is a run's own Ray start and stop (a driver killed with
  SIGKILL and its orphans, Ctrl-C and resume) start their own instead.
- ``ray_cluster``: one two-node cluster (a head of 3 CPUs with its dashboard, and a second node of 1 CPU), shared
  by the ``cluster`` tests: the multi-node, dashboard, Ray Jobs, metrics and Ray Train tests.  A test that kills its
  second node gets a new one before the next test.

Under pytest-xdist (``-n 2 --dist loadgroup``, the default in pyproject.toml) each worker would have its own instances:
the tests that share them are one group, run on one worker (``ray_group`` below), which stops its local instance when
it gets to the cluster (and starts it again if a later test asks for it).
"""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# No test reaches the internet, nor the user's own data or cache: datasets are never downloaded (a test that checks a
# download serves its own archive on 127.0.0.1 and turns this off), and the default data root is an empty temporary one
os.environ["HARNESS_OFFLINE"] = "1"
os.environ["HARNESS_CACHE"] = tempfile.mkdtemp(prefix="harness-tests-cache-")
atexit.register(shutil.rmtree, os.environ["HARNESS_CACHE"], True)
for _name in ("HARNESS_DATA", "HARNESS_DATA_ROOT", "HARNESS_DATA_MIRROR"):
    os.environ.pop(_name, None)

import harness  # noqa: E402,F401  (torchvision shim before anything imports timm)
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from tests.helpers import free_port  # noqa: E402

# The tests that start or join Ray, in two pytest-xdist groups that each run one test after the other on one worker:
# ``ray`` (the session's local instance, then its cluster) first in the order of collection, so that it starts at once
# and runs beside the tests that run in process on the other worker; ``ray-own`` (each run starts its own Ray) last,
# taken by the first worker that is free.  Measured here, two groups at once on two cores slowed each test of both
# about twofold, so only the short ``ray-own`` group ever overlaps the long one, and only at the end.
ORDER = {"ray": 0, None: 1, "ray-own": 2}


def ray_group(item) -> str | None:
    """``ray``: joins the session's local instance (``ray_address``) or its cluster (``ray_cluster``); ``ray-own``: an
    e2e test whose runs start (and lose) their own Ray instance; None: in process."""
    fixtures = getattr(item, "fixturenames", ())
    if "ray_cluster" in fixtures or "ray_address" in fixtures or item.get_closest_marker("cluster"):
        return "ray"
    return "ray-own" if item.get_closest_marker("e2e") else None


def pytest_configure(config):
    """Each of several pytest-xdist workers computes on one thread: two workers of torch's default two threads on two
    cores slowed the tests in process by about a third (threads waiting on each other); one test alone keeps two."""
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)  # before -m selects and before pytest-xdist groups
def pytest_collection_modifyitems(config, items):
    """A test that asks for a shared Ray instance is marked by it (``e2e`` or ``cluster``), so that ``-m "not e2e and
    not cluster"`` never starts one; each test that starts or joins Ray is put in its group, the cluster tests last of
    theirs (the local instance is stopped when the cluster starts)."""
    groups = {}
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "ray_cluster" in fixtures and not item.get_closest_marker("cluster"):
            item.add_marker(pytest.mark.cluster)
        elif "ray_address" in fixtures and not item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.e2e)
        group = groups[item] = ray_group(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: (ORDER[groups[item]], item.get_closest_marker("cluster") is not None))


def own_ports(dashboard: bool = False) -> dict:
    """Ports of a shared node's own, not Ray's fixed defaults: a node whose dashboard agent finds its default port
    (52365) held, by another test's Ray instance or one still stopping, starts without the agent's HTTP server, and
    the cluster then refuses Ray Jobs ("No available agent to submit job")."""
    return {"dashboard_agent_listen_port": free_port(), **({"dashboard_port": free_port()} if dashboard else {})}


class RayInstances:
    """The Ray instances the tests share, started on first use, at most one at a time, stopped at the end."""

    def __init__(self):
        self.local = self.cluster = self.second = None

    def local_address(self) -> str:
        from ray.cluster_utils import Cluster

        self._stop("cluster")
        if self.local is None:
            self.local = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False,
                                                                        **own_ports()})
            self.local.wait_for_nodes()
        return self.local.address

    def two_nodes(self):
        from ray.cluster_utils import Cluster

        self._stop("local")
        if self.cluster is None:
            self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "include_dashboard": True,
                                                                          **own_ports(dashboard=True)})
        if self.second is None or self.second not in self.cluster.worker_nodes:
            self.second = self.cluster.add_node(num_cpus=1, **own_ports())
        self.cluster.wait_for_nodes()
        return self.cluster, self.second

    def _stop(self, which: str) -> None:
        import ray

        instance = getattr(self, which)
        if instance is not None:
            if ray.is_initialized():  # a run in this process left its driver connected: Ray refuses to stop the node
                ray.shutdown()
            instance.shutdown()
            setattr(self, which, None)
            if which == "cluster":
                self.second = None

    def close(self):
        self._stop("cluster")
        self._stop("local")


@pytest.fixture(scope="session")
def ray_instances():
    instances = RayInstances()
    yield instances
    instances.close()


@pytest.fixture
def ray_address(ray_instances) -> str:
    """The address of the session's local Ray instance (2 CPUs); ``harness_run(..., address=ray_address)``."""
    return ray_instances.local_address()


@pytest.fixture
def ray_cluster(ray_instances):
    """``(cluster, second_node)``: the session's two-node cluster, its second node alive (added again if a test
    removed it)."""
    return ray_instances.two_nodes()


@pytest.fixture
def write_suite(tmp_path):
    """Write a suite mapping (or raw text) to a YAML file and return its path."""

    def write(content, name="suite.yaml"):
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks run fastest on one thread, above all on a CPU shared with other jobs (restored after); a
    module asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def http_folder(tmp_path):
    """A local HTTP server on 127.0.0.1 serving a folder (no internet in the tests): (folder, base URL); the paths it
    was asked for are in ``folder.requests``."""
    import http.server
    import threading

    class Served(tuple):
        requests: list[str]

    folder = tmp_path / "served"
    folder.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, format, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    served = Served((folder, f"http://127.0.0.1:{server.server_address[1]}"))
    served.requests = requests
    yield served
    server.shutdown()
    server.server_close()
