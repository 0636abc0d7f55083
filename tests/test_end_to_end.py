"""Real Ray, real training, on CPU: a tiny suite is run, stopped with Ctrl-C, run again and killed with SIGKILL, resumed
and reported.  The tests of an interrupted driver or a killed trial (and the orphans they leave) start their own Ray
instance, since a run's own Ray start and stop is their subject; the others join the session's shared instance."""
import json
import os
import re
import signal
import statistics
import time

import pytest
import yaml

from tests.helpers import harness_main, harness_run, records, tiny_suite_dict

pytestmark = pytest.mark.e2e

def _finished(results) -> dict[str, dict]:
    return {h: r for h, r in records(results).items() if r.get("status") == "ok"}


def _wait_until_finished(results, at_least: int, proc) -> None:
    """Until at least ``at_least`` cells finished (the run must still be going)."""
    deadline = time.time() + 300
    while len(_finished(results)) < at_least:
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, f"fewer than {at_least} cell(s) finished in 5 minutes"
        time.sleep(0.2)


def test_a_run_stopped_by_ctrl_c_then_killed_resumes_to_a_complete_report(tmp_path, monkeypatch):
    """The interruptions a user meets, one after the other on one results folder (issue 17), each run starting its
    own Ray instance as ``harness run`` does on a workstation: Ctrl-C (SIGINT to the driver's process group, as a
    terminal sends it) once a cell finished; the same command again, its driver killed with SIGKILL once one more
    finished, which leaves its Ray processes running; the same command again, which stops those, trains only what is
    left and reports every cell with the median of the records' own accuracies; once more, which trains nothing."""
    from harness.scheduling.orphans import _alive, _workers_of
    from harness.suite.schema import load_suite

    monkeypatch.setenv("HARNESS_STATE_DIR", str(tmp_path / "state"))
    suite = tiny_suite_dict(seeds=[0, 1, 2], dataset={"name": "fashion_mnist_mini", "train_per_class": 20,
                                                       "test_per_class": 10})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(suite))
    cells = load_suite(path).cells
    results, reports = tmp_path / "results", tmp_path / "reports"

    # 1. Ctrl-C once a cell finished: the run says how to resume and exits 130
    first = harness_run(path, results, reports, start_new_session=True)
    _wait_until_finished(results, 1, first)
    os.killpg(first.pid, signal.SIGINT)
    out, _ = first.communicate(timeout=200)
    after_ctrl_c = _finished(results)
    assert len(after_ctrl_c) < 6, "the Ctrl-C must land in the middle of the run"
    assert first.returncode == 130, out
    assert "run the same command again to resume" in out and "Traceback" not in out, out

    # 2. the same command, its driver killed with SIGKILL once one more cell finished: its Ray is left running
    second = harness_run(path, results, reports, start_new_session=True)
    _wait_until_finished(results, len(after_ctrl_c) + 1, second)
    state = tmp_path / "state" / "ray-local" / f"{second.pid}.json"
    recorded = json.loads(state.read_text())["processes"]
    assert len(recorded) >= 3  # gcs_server, raylet, ... of the local instance this driver started
    os.kill(second.pid, signal.SIGKILL)  # the driver only
    second.wait()
    done_at_kill = _finished(results)
    assert len(after_ctrl_c) < len(done_at_kill) < 6, "the kill must land in the middle of the run"
    mtimes = {h: (results / "cells" / f"{h}.json").stat().st_mtime_ns for h in done_at_kill}
    raylet = next((pid, started) for pid, started, kind in recorded if kind == "raylet")

    # 3. the same command: it stops what the killed driver left, trains what is left, reports every cell
    third = harness_run(path, results, reports)
    out, _ = third.communicate(timeout=400)
    assert third.returncode == 0, out
    # none survives the third run's start (those still alive then were stopped by it; some die by themselves
    # meanwhile, so whether it had any to stop varies from run to run)
    assert not any(_alive(pid, started) for pid, started, _ in recorded) and not _workers_of(*raylet), out
    assert not state.exists()
    # A trial already in flight may still finish after its driver died: it is kept, not rerun, too.
    skipped, to_run = map(int, re.search(r"6 cells, (\d+) finished already, (\d+) to run", out).groups())
    assert skipped >= len(done_at_kill) and to_run >= 1 and skipped + to_run == 6
    final = records(results)
    assert len(final) == len(cells) == 6 and all(r["status"] == "ok" for r in final.values())
    # Checkpoints exist to resume unfinished cells: none is left once every cell is finished (the killed run's too)
    assert "checkpoint(s) of finished cells" in out
    assert not list((results / "ray").glob("*/*/checkpoint_*")) and list((results / "ray").glob("*/*/progress.csv"))
    for h, record in done_at_kill.items():  # finished cells were not trained again
        assert (results / "cells" / f"{h}.json").stat().st_mtime_ns == mtimes[h]
        assert final[h]["finished"] == record["finished"]
    for record in final.values():
        assert record["epochs"] == 2 and len(record["history"]) == 2
        assert record["code"]["git_sha"] and record["packages"]["torch"].startswith("2.13")
        assert record["hardware"]["device"] == "cpu"
        assert record["params"]["deployed"] == record["params"]["peers"] > 0 and record["params"]["added_total"] == 0

    md = (reports / "tiny.md").read_text()
    (row,) = [line for line in md.splitlines() if line.startswith("| cifar_resnet8+cifar_resnet8")]
    shown = [c.strip().strip("*") for c in row.strip("|").split("|")][1:]
    assert "—" not in shown and len(shown) == 8 and all(0.0 <= float(c) <= 100.0 for c in shown)
    assert "n = 3 seeds" in md and "Cells: 6 of 6 finished" in md, md
    # the table's numbers are the records' own: Ind's net1 is the median of its three seeds' last net1
    ind = [final[c.hash] for c in cells if c.method == "ind"]
    assert abs(float(shown[0]) - statistics.median(r["last"]["net1"]["top1"] for r in ind)) < 0.01, (shown, row)
    assert (reports / "tiny.tex").read_text().count(r"\midrule") == 1

    fourth = harness_run(path, results, reports)  # everything finished: nothing runs, the report is rewritten
    out, _ = fourth.communicate(timeout=120)
    assert fourth.returncode == 0 and "6 finished already, 0 to run" in out


def test_failing_cell_is_recorded_and_retried(tmp_path, ray_address, capfd):
    """A cell whose loss diverges fails in its trial; the failure is stored with its error and run again."""
    suite = tiny_suite_dict(seeds=[0], methods=["ind"])
    suite["recipe"] = {**suite["recipe"], "optimizer": {"name": "sgd", "lr": 1.0e12}}
    path = tmp_path / "fail.yaml"
    path.write_text(yaml.safe_dump(suite))
    results, reports = tmp_path / "results", tmp_path / "reports"
    for attempt in range(2):
        code, out = harness_main(capfd, "run", path, "--results", results, "--reports", reports, address=ray_address)
        assert code == 1, out
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

    suite = tiny_suite_dict(seeds=[0])
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump(suite))
    cells = load_suite(path).cells
    results = tmp_path / "results"
    runs = [harness_run(path, results, tmp_path / f"reports{i}", address=ray_address) for i in range(2)]
    outs = [run.communicate(timeout=400)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outs
    final = records(results)
    assert len(final) == 2 and all(r["status"] == "ok" for r in final.values())
    for cell in cells:  # the epoch lines of a cell appear in the run that trained it, and only there
        trained = [out.count(f"] {cell.describe()} epoch 1/2") for out in outs]
        assert sorted(trained) == [0, 1], (cell.describe(), trained)
    assert any("by another run" in out for out in outs), outs  # they did meet on a cell


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
