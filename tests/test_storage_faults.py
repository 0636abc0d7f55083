"""A results folder that cannot be written (read-only, full) is one line before Ray starts, and a store that
fills up during a run ends it without a traceback and without losing what was written (issue 17)."""
import errno
import json
import subprocess

import pytest
import yaml

from harness.cli import main
from harness.results.location import Location
from tests.helpers import harness_main, tiny_suite_dict


def suite_file(tmp_path, **overrides):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(tiny_suite_dict(**overrides)))
    return path


def test_a_store_that_refuses_writes_is_one_line_before_ray(tmp_path, monkeypatch, capsys):
    def full(self, relative, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Location, "write_bytes", full)
    assert main(["run", str(suite_file(tmp_path)), "--results", str(tmp_path / "r"), "--no-dashboard"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --results {tmp_path / 'r'}: cannot write there (No space left on device); fix its "
                   "permissions or free space, or give another --results")


@pytest.fixture
def small_filesystem(tmp_path):
    """A 1.5 MiB tmpfs (needs root and a kernel that lets us mount; skipped otherwise), unmounted after."""
    where = tmp_path / "small"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_read_only_results_folder_is_one_line(small_filesystem, tmp_path, capsys):
    subprocess.run(["mount", "-o", "remount,ro", str(small_filesystem)], check=True)
    assert main(["run", str(suite_file(tmp_path)), "--results", str(small_filesystem / "r"), "--no-dashboard"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot write there (Read-only file system)" in err


def test_a_store_that_fills_up_mid_run_stops_without_a_traceback(small_filesystem, tmp_path, ray_address, capfd):
    """Each finished cell writes ~0.3 MB of weights and Ray's checkpoints: 1.5 MiB fills within the run."""
    results = small_filesystem / "r"
    code, out = harness_main(capfd, "run", suite_file(tmp_path, seeds=[0, 1, 2]), "--results", results, "--reports",
                             tmp_path / "reports", address=ray_address)
    assert code == 2, out
    assert "Traceback" not in out, out
    # it stops at the first trial that fails (Tune would retry it, and the others, against a full store)
    assert "resumed" not in out and "FAILED" not in out, out
    # one line says why it stopped (a retried trial's own log line may still arrive after it)
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: --results {results}: stopped at the first write it "
                                                     "refused (No space left on device)"), out
    for path in (results / "cells").glob("*.json"):  # what was written is whole
        record = json.loads(path.read_text())
        assert record["status"] in ("ok", "failed")
