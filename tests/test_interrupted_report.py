"""A run resumed after interruptions ends with a complete report (issue 17): Ctrl-C (SIGINT to the driver's process
group, as a terminal sends it) twice mid-run, then the same command; each interrupted run says how to resume and
exits 130, the last one fills every cell of the table with the median of the records' own accuracies."""
import os
import signal
import statistics
import time

import pytest
import yaml

from harness.suite.schema import load_suite
from tests.helpers import harness_run, records, tiny_suite_dict


def _interrupt_when(results, at_least: int, proc) -> str:
    deadline = time.time() + 300
    while sum(r.get("status") == "ok" for r in records(results).values()) < at_least if (results / "cells").exists() \
            else True:
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no cell finished in 5 minutes"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=200)
    return out


@pytest.mark.e2e  # its own Ray instance: Ctrl-C reaches the driver's process group, the Ray it started included
def test_a_run_resumed_after_two_ctrl_c_ends_with_a_complete_report(tmp_path):
    suite = tiny_suite_dict(seeds=[0, 1, 2], dataset={"name": "fashion_mnist_mini", "train_per_class": 20,
                                                       "test_per_class": 10})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(suite))
    results, reports = tmp_path / "results", tmp_path / "reports"
    cells = load_suite(path).cells

    for at_least in (1, 3):
        proc = harness_run(path, results, reports, start_new_session=True)
        out = _interrupt_when(results, at_least, proc)
        finished = sum(r["status"] == "ok" for r in records(results).values())
        if finished == len(cells):
            break  # the last trials beat the signal: nothing left to resume
        assert proc.returncode == 130, out
        assert "run the same command again to resume" in out and "Traceback" not in out, out

    proc = harness_run(path, results, reports)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out
    final = records(results)
    assert len(final) == len(cells) and all(r["status"] == "ok" for r in final.values())
    assert all(len(r["history"]) == r["epochs"] == 2 for r in final.values())

    md = (reports / "tiny.md").read_text()
    (row,) = [line for line in md.splitlines() if line.startswith("| cifar_resnet8+cifar_resnet8")]
    shown = [c.strip().strip("*") for c in row.strip("|").split("|")][1:]
    assert "—" not in shown and len(shown) == 8 and "Cells: 6 of 6 finished" in md, md
    # the table's numbers are the records' own: Ind's net1 is the median of its three seeds' last net1
    ind = [final[c.hash] for c in cells if c.method == "ind"]
    assert abs(float(shown[0]) - statistics.median(r["last"]["net1"]["top1"] for r in ind)) < 0.01, (shown, row)
