"""``harness compare`` (issue 18): one suite in two stores, matched seed by seed; Δ is the median of the per-seed
differences B − A, not a difference of medians; a seed only one side has is left out and the seeds are listed."""
import yaml

from harness.cli import main
from harness.results.store import ResultStore
from harness.suite.schema import load_suite
from tests.helpers import fake_record, tiny_suite_dict


def test_one_suite_in_two_stores_seed_by_seed(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_suite_dict(seeds=[0, 1, 2])))
    suite = load_suite(path)
    a, b = ResultStore(tmp_path / "a"), ResultStore(tmp_path / "b")
    shift = {0: 1.0, 1: 4.0, 2: -2.0}  # B − A per seed on net1: median +1.0 (the medians differ by another amount)
    for cell in suite.cells:
        net1 = 60.0 + 10 * cell.seed + (5 if cell.label == "dml" else 0)
        a.put(fake_record(cell, net1, 50.0))
        if not (cell.label == "dml" and cell.seed == 2):  # B lacks one trial
            b.put(fake_record(cell, net1 + shift[cell.seed], 50.0))
    assert main(["compare", str(path), "--results", str(tmp_path / "a"), "--other-results", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {tuple(line.split()[1:3]): line.split() for line in out if line.startswith("cifar_resnet8+")}
    ind, dml = rows[("ind", "net1")], rows[("dml", "net1")]
    assert ind[3:] == ["70.00", "74.00", "+1.00", "0,1,2"]  # medians 70 → 74, but the per-seed Δs are +1, +4, −2
    assert dml[3:] == ["70.00", "72.50", "+2.50", "0,1"]  # only the seeds both sides have: 0 and 1
    assert rows[("ind", "net2")][5] == "+0.00"


def test_the_same_suite_in_the_same_store_is_one_line(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_suite_dict()))
    assert main(["compare", str(path), "--results", str(tmp_path / "a")]) == 2
    assert "A and B are the same suite in the same store" in capsys.readouterr().err
