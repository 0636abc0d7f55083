"""Real Ray, real training, on CPU: a tiny suite is run, killed with SIGKILL mid-way, resumed, and reported.  The
tests of a killed driver or trial (and the orphans it leaves) start their own Ray instance, since a run's own Ray
start and stop is their subject; the others join the session's shared instance."""
import json
import os
import re
import signal
import time

import pytest
import yaml

from tests.helpers import harness_run, records, tiny_suite_dict

pytestmark = pytest.mark.e2e

def test_run_kill_resume_report(tmp_path):
    suite = tiny_suite_dict(seeds=[0, 1, 2], dataset={"name": "fashion_mnist_mini", "train_per_class": 30,
                                                       "test_per_class": 10})
    suite["recipe"] = {**suite["recipe"], "epochs": 3}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(suite))
    results, reports = tmp_path / "results", tmp_path / "reports"

    first = harness_run(path, results, reports, start_new_session=True)
    deadline = time.time() + 300
    while not any(r.get("status") == "ok" for r in records(results).values()) if (results / "cells").exists() else True:
        assert first.poll() is None, first.stdout.read()
        assert time.time() < deadline, "no cell finished in 5 minutes"
        time.sleep(0.2)
    os.kill(first.pid, signal.SIGKILL)  # the driver only: its Ray workers are left to die on their own
    first.wait()
    done_at_kill = {h: r for h, r in records(results).items() if r["status"] == "ok"}
    assert 0 < len(done_at_kill) < 6, "the kill must land in the middle of the run"
    mtimes = {h: (results / "cells" / f"{h}.json").stat().st_mtime_ns for h in done_at_kill}

    second = harness_run(path, results, reports)
    out, _ = second.communicate(timeout=400)
    assert second.returncode == 0, out
    # A trial already in flight may still finish after its driver died: it is kept, not rerun, too.
    skipped, to_run = map(int, re.search(r"6 cells, (\d+) finished already, (\d+) to run", out).groups())
    assert skipped >= len(done_at_kill) and to_run >= 1 and skipped + to_run == 6
    final = records(results)
    assert len(final) == 6 and all(r["status"] == "ok" for r in final.values())
    # Checkpoints exist to resume unfinished cells: none is left once every cell is finished (the killed run's too)
    assert "checkpoint(s) of finished cells" in out
    assert not list((results / "ray").glob("*/*/checkpoint_*")) and list((results / "ray").glob("*/*/progress.csv"))
    for h, record in done_at_kill.items():  # finished cells were not trained again
        assert (results / "cells" / f"{h}.json").stat().st_mtime_ns == mtimes[h]
        assert final[h]["finished"] == record["finished"]
    for record in final.values():
        assert record["epochs"] == 3 and len(record["history"]) == 3
        assert record["code"]["git_sha"] and record["packages"]["torch"].startswith("2.13")
        assert record["hardware"]["device"] == "cpu"
        assert record["params"]["deployed"] == record["params"]["peers"] > 0 and record["params"]["added_total"] == 0

    md = (reports / "tiny.md").read_text()
    table_rows = [line for line in md.splitlines() if line.startswith("| cifar_resnet8+cifar_resnet8")]
    assert len(table_rows) == 1 and "—" not in table_rows[0]
    cells = [c.strip() for c in table_rows[0].strip("|").split("|")][1:]
    assert len(cells) == 8 and all(0.0 <= float(c.strip("*")) <= 100.0 for c in cells)
    assert "n = 3 seeds" in md
    assert (reports / "tiny.tex").read_text().count(r"\midrule") == 1

    third = harness_run(path, results, reports)  # everything finished: nothing runs, the report is rewritten
    out, _ = third.communicate(timeout=120)
    assert third.returncode == 0 and "6 finished already, 0 to run" in out


def test_failing_cell_is_recorded_and_retried(tmp_path, ray_address):
    """A cell whose loss diverges fails in its trial; the failure is stored with its error and run again."""
    suite = tiny_suite_dict(seeds=[0], methods=["ind"])
    suite["recipe"] = {**suite["recipe"], "optimizer": {"name": "sgd", "lr": 1.0e12}}
    path = tmp_path / "fail.yaml"
    path.write_text(yaml.safe_dump(suite))
    results, reports = tmp_path / "results", tmp_path / "reports"
    for attempt in range(2):
        proc = harness_run(path, results, reports, address=ray_address)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 1, out
        assert "1 cells, 0 finished already, 1 to run" in out  # a failed cell is tried again
        (record,) = records(results).values()
        assert record["status"] == "failed" and record["error"].startswith("NonFiniteLoss: cell ")
        assert "in epoch 1" in record["error"] and "traceback" in record
        assert "1 cell(s) failed (recorded with their error, retried on the next run)" in out
        # one line on the console: the traceback is in the record, not printed by Tune
        assert "Traceback" not in out and out.count("FAILED ind") == 1, out
    md = (reports / "tiny.md").read_text()
    (row,) = [line for line in md.splitlines() if line.startswith("| cifar_resnet8+cifar_resnet8")]
    assert [c.strip() for c in row.strip("|").split("|")][1:] == ["—"] * 4
    assert "0 of 1 finished" in md


def test_two_runs_of_one_suite_on_one_store_train_each_cell_once(tmp_path, ray_address):
    """Started together on one results folder: every cell trained by one of them (a lock per cell), the other
    waits and finds it finished; both end well, every record whole."""
    from harness.suite.schema import load_suite

    suite = tiny_suite_dict(seeds=[0, 1])
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump(suite))
    cells = load_suite(path).cells
    results = tmp_path / "results"
    runs = [harness_run(path, results, tmp_path / f"reports{i}", address=ray_address) for i in range(2)]
    outs = [run.communicate(timeout=400)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outs
    final = records(results)
    assert len(final) == 4 and all(r["status"] == "ok" for r in final.values())
    for cell in cells:  # the epoch lines of a cell appear in the run that trained it, and only there
        trained = [out.count(f"] {cell.describe()} epoch 1/2") for out in outs]
        assert sorted(trained) == [0, 1], (cell.describe(), trained)
    assert any("by another run" in out for out in outs), outs  # they did meet on a cell


def test_the_ray_processes_a_killed_driver_left_are_stopped_by_the_next_run(tmp_path, monkeypatch):
    from harness.scheduling.orphans import _alive, _workers_of

    monkeypatch.setenv("HARNESS_STATE_DIR", str(tmp_path / "state"))
    suite = tiny_suite_dict(seeds=[0, 1], methods=["ind"])
    suite["recipe"] = {**suite["recipe"], "epochs": 6}
    path = tmp_path / "orphans.yaml"
    path.write_text(yaml.safe_dump(suite))
    results, reports = tmp_path / "results", tmp_path / "reports"
    first = harness_run(path, results, reports)
    for line in first.stdout:  # training has started: Ray and its workers are up
        if " epoch 1/6" in line:
            break
    state = tmp_path / "state" / "ray-local" / f"{first.pid}.json"
    recorded = json.loads(state.read_text())["processes"]
    assert len(recorded) >= 3  # gcs_server, raylet, ... of the local instance this driver started
    os.kill(first.pid, signal.SIGKILL)  # the driver only
    first.wait()
    time.sleep(2)
    raylet = next((pid, started) for pid, started, kind in recorded if kind == "raylet")
    workers = _workers_of(*raylet)  # the trials that outlive their raylet
    left = [(pid, started) for pid, started, _ in recorded if _alive(pid, started)] + workers
    second = harness_run(path, results, reports)
    out, _ = second.communicate(timeout=400)
    assert second.returncode == 0, out
    # none survives the second run's start (those still alive then were stopped by it; some die by themselves
    # meanwhile, so whether it had any to stop varies from run to run)
    assert not any(_alive(pid, started) for pid, started, _ in recorded) and not _workers_of(*raylet), out
    print(f"{len(left)} Ray processes (of {len(recorded)} recorded and {len(workers)} workers) outlived their driver")
    assert not state.exists()
    assert all(r["status"] == "ok" for r in records(results).values()) and len(records(results)) == 2


def test_a_killed_trial_worker_resumes_from_its_checkpoint_by_default(tmp_path, monkeypatch):
    from harness.scheduling.orphans import PROC, _workers_of

    monkeypatch.setenv("HARNESS_STATE_DIR", str(tmp_path / "state"))
    suite = tiny_suite_dict(seeds=[0], methods=["ind"])
    suite["recipe"] = {**suite["recipe"], "epochs": 6}
    path = tmp_path / "restart.yaml"
    path.write_text(yaml.safe_dump(suite))
    results = tmp_path / "results"
    run = harness_run(path, results, tmp_path / "reports")  # no --max-failures: the default
    seen = []
    for line in run.stdout:
        seen.append(line)
        if " epoch 2/6" in line:
            break
    recorded = json.loads((tmp_path / "state" / "ray-local" / f"{run.pid}.json").read_text())["processes"]
    raylet = next((pid, started) for pid, started, kind in recorded if kind == "raylet")
    # the trial's actor: its process title is ray::CellTrial, or ray::ResourceTrainable.<method> (the class Tune's
    # with_resources makes of it) while a method runs
    titles = {pid: (PROC / str(pid) / "cmdline").read_bytes() for pid in _workers_of(*raylet)}
    trial = [pid for pid, title in titles.items() if b"CellTrial" in title or b"ResourceTrainable" in title]
    assert len(trial) == 1, (seen, titles)
    os.kill(trial[0], signal.SIGKILL)
    out = "".join(seen) + run.communicate(timeout=400)[0]
    assert run.returncode == 0, out
    (record,) = records(results).values()
    assert record["status"] == "ok" and record["restarts"] == 1, out
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3, 4, 5, 6]
    assert "finished ind cifar_resnet8+cifar_resnet8 seed 0 after 1 restart(s)" in out
