"""``harness bench`` (issue 19) trains a suite's first cells for a few steps in each mode and prints images/s,
memory and the suite's projection; the measurement is kept in the store, and a GPU machine's measurement is the
rate ``harness index`` and ``validate`` estimate with where the store has no finished GPU trial."""
import json

import pytest
import yaml

from harness.costs.rates import bench_rate, measured_rate
from harness.results.store import ResultStore
from tests.helpers import cli, tiny_suite_dict


@pytest.mark.slow
def test_bench_prints_each_mode_and_keeps_its_rates(tmp_path, capfd):
    suite = tmp_path / "bench.yaml"
    suite.write_text(yaml.safe_dump(tiny_suite_dict(
        name="bench", dataset={"name": "synthetic_cifar100", "train_per_class": 1, "test_per_class": 1},
        methods=["ind", {"name": "dml", "update": "sequential"}], seeds=[0])))
    code, out, err = cli(capfd, "bench", suite, "--cells", 2, "--steps", 1, "--warmup", 1, "--packed", 2, "--seeds", 2,
                         "--min-seconds", 0, "--device", "cpu", "--results", tmp_path / "r")
    assert code == 0, err[-3000:]
    # the ind cell in all four modes; the sequential DML cell is not stacked (peers or seeds), and says why
    assert err.count("method dml updates its peers one after another") == 2
    rows = [line for line in out.splitlines() if line.startswith("| ") and "img/s" not in line]
    modes = [r.split("|")[1].strip() for r in rows]
    assert modes.count("separate") == 2 + 1 and modes.count("stacked") == 1 + 1 and modes.count("packed ×2") == 2 + 1
    assert modes.count("seeds ×2") == 1 + 1
    assert "suite device-hours" in out and "× separate" in out
    assert out.strip().splitlines()[-1].startswith("kept in ")
    [kept] = (tmp_path / "r" / "bench").glob("*.json")
    record = json.loads(kept.read_text())
    assert set(record["macs_per_s"]) == {"separate", "stacked", "packed ×2", "seeds ×2"}
    assert all(v > 0 for v in record["macs_per_s"].values())
    per_cell = {(m["mode"], m["cells"]): m for m in record["measures"] if m["cell"].startswith("ind")}
    assert per_cell[("packed", 2)]["aggregate"] == 2 * per_cell[("packed", 2)]["images_per_s"]
    assert per_cell[("seeds", 2)]["aggregate"] == 2 * per_cell[("seeds", 2)]["images_per_s"] > 0
    # a CPU bench is no GPU rate: the index keeps its assumed rate
    store = ResultStore(tmp_path / "r")
    assert measured_rate(store) is None
    # the same measurement from a GPU machine is the rate the index uses
    record["hardware"]["gpu"] = "NVIDIA H200"
    (tmp_path / "r" / "bench" / "gpu-host.json").write_text(json.dumps(record))
    rate = bench_rate(store)
    assert rate["macs_per_s"] == record["macs_per_s"]["separate"] and rate["gpus"] == ["NVIDIA H200"]
    assert "harness bench" in rate["source"]


def test_bench_refuses_a_mistyped_mode_in_one_line(capfd):
    code, _, err = cli(capfd, "bench", "benchmarks/resnet32_pair.yaml", "--modes", "seperate")
    assert code == 2 and "Traceback" not in err
    assert err.strip() == ("bench: --modes takes separate, stacked, packed, seeds; --packed whole numbers "
                           "(4,8); --seeds whole numbers from 2 (4,8); --cells and --steps at least 1; --warmup and "
                           "--min-seconds at least 0")
