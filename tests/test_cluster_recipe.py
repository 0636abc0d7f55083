"""The cluster recipe of docs/guides/clusters.md, run as written: its two blocks of commands, on two "machines" that
are two Ray nodes of this one, each with a home folder of its own (so the second has no token but the one it is
given).  Substituted, and only these: the head's address and port (HEAD:6379 → 127.0.0.1 and a free port), and
what keeps the nodes apart from the session's other Ray instances (a temporary folder, a CPU, no dashboard).  The
second node is refused without the head's token, joins with it, and a suite trains on the two nodes from a driver
on the head.  Every process started here is stopped by the folder in its command line."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from harness.training.launch import free_port
from tests.helpers import HARNESS, ROOT, TINY_DATA, TINY_RECIPE

pytestmark = pytest.mark.e2e
GUIDE = ROOT / "docs" / "guides" / "clusters.md"


def documented_blocks() -> dict[str, str]:
    """The guide's bash blocks by their first line (``# on the head node`` ...)."""
    blocks = re.findall(r"```bash\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)
    return {block.splitlines()[0]: block for block in blocks if block.startswith("# on ")}


def as_here(block: str, port: int, temp: Path) -> str:
    """The block with the head's address, and each `ray start` kept apart from the session's Ray instances."""
    block = block.replace("HEAD:6379", f"127.0.0.1:{port}").replace("--port 6379", f"--port {port}")
    isolation = f" --num-cpus 1 --temp-dir {temp} --dashboard-agent-listen-port {free_port()}"
    return re.sub(r"^(ray start .*)$", lambda m: m[1] + isolation + (" --include-dashboard false"
                  if "--head" in m[1] else ""), block, flags=re.M)


def run(script: str, home: Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    # the shell of a user whose environment is active: its `ray` and `harness` first on the PATH
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    return subprocess.run(["bash", "-c", "set -e\n" + script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def stop_processes_of(folder: Path) -> None:
    for _ in range(2):
        found = subprocess.run(["pgrep", "-f", str(folder)], capture_output=True, text=True).stdout.split()
        for pid in found:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        time.sleep(0.5)


def test_the_documented_cluster_recipe_joins_a_second_node_only_with_the_heads_token(tmp_path):
    blocks = documented_blocks()
    head_block = next(b for k, b in blocks.items() if "head node" in k)
    node_block = next(b for k, b in blocks.items() if "other node" in k)
    head_home, node_home = tmp_path / "head_home", tmp_path / "node_home"
    head_home.mkdir()
    node_home.mkdir()
    temp = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))  # short: Ray's socket paths live under it
    port = free_port()
    try:
        started = run(as_here(head_block, port, temp), head_home, tmp_path)
        assert started.returncode == 0, started.stderr[-2000:]
        token = head_home / ".ray" / "auth_token"
        assert token.is_file()
        # without the token the second node is refused (the failure the guide warns of) ...
        refused = run(as_here(node_block.split("\n", 1)[0] + "\nray start --address HEAD:6379\n", port, temp),
                      node_home, tmp_path, timeout=90)
        assert refused.returncode != 0 and "InvalidAuthToken" in refused.stdout + refused.stderr
        # ... and with the guide's commands, the head's token copied as head_token, it joins
        (tmp_path / "head_token").write_text(token.read_text())
        joined = run(as_here(node_block, port, temp), node_home, tmp_path)
        assert joined.returncode == 0, joined.stderr[-2000:]
        suite = {"name": "on_two_nodes", "dataset": TINY_DATA, "groups": [["cifar_resnet8", "cifar_resnet8"]],
                 "methods": ["ind", "dml"], "seeds": [0], "recipe": {**TINY_RECIPE, "epochs": 1},
                 "resources": {"cpu": 1}}
        (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
        driver = run(f"export RAY_AUTH_MODE=token\n{' '.join(HARNESS)} run suite.yaml --address 127.0.0.1:{port} "
                     f"--results results --reports reports", head_home, tmp_path, timeout=300)
        output = driver.stdout + driver.stderr
        assert driver.returncode == 0, output[-3000:]
        assert "cluster at 127.0.0.1" in output and "2 CPUs" in output
        records = [yaml.safe_load(p.read_text()) for p in (tmp_path / "results" / "cells").glob("*.json")]
        assert len(records) == 2 and {r["status"] for r in records} == {"ok"}
    finally:
        stop_processes_of(temp)
        assert subprocess.run(["pgrep", "-f", str(temp)], capture_output=True).returncode == 1  # none left
