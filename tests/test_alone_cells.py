"""``alone: true``: each network of a group trained as a cell of its own, so that every table printing the same
network under the same recipe (AMLN's vanilla rows: Tables 2, 3 and 6 print the same numbers) reads the very same
cell; a row's Net1/Net2 come from its networks' cells and its Avg is their mean."""
import statistics

import pytest

from harness.reporting.report import build_table
from harness.results.store import ResultStore
from harness.suite.schema import SuiteError, load_suite
from tests.helpers import fake_record, tiny_suite_dict

GROUPS = [["cifar_resnet8", "cifar_resnet14"], ["cifar_resnet14", "cifar_resnet14"]]


def test_only_methods_whose_networks_learn_alone_may_be_trained_alone(write_suite, tmp_path):
    with pytest.raises(SuiteError) as refused:
        load_suite(write_suite(tiny_suite_dict(methods=[{"name": "dml", "alone": True}]), "bad.yaml"))
    (line,) = refused.value.lines
    assert line.startswith(f"{tmp_path / 'bad.yaml'}: methods[0].alone: True; 'alone: true' trains each network")
    assert "(ind)" in line
    with pytest.raises(SuiteError, match=r"methods\[0\].alone: 'yes' is not true or false"):
        load_suite(write_suite(tiny_suite_dict(methods=[{"name": "ind", "alone": "yes"}])))


def test_one_cell_per_network_shared_by_every_row_that_has_it(write_suite):
    suite = load_suite(write_suite(tiny_suite_dict(groups=GROUPS, seeds=[0, 1],
                                                   methods=[{"name": "ind", "alone": True}, "dml"])))
    alone = [c for c in suite.cells if c.method == "ind"]
    assert all(len(c.group) == 1 for c in alone) and len(alone) == 8  # 2 rows × 2 positions × 2 seeds
    assert len({c.hash for c in alone}) == 4  # resnet8 and resnet14, 2 seeds: the second row's two are one cell
    first = {(c.row, c.position): c.hash for c in alone if c.seed == 0}
    assert first[(tuple(GROUPS[0]), 1)] == first[(tuple(GROUPS[1]), 0)] == first[(tuple(GROUPS[1]), 1)]
    assert len([c for c in suite.cells if c.method == "dml"]) == 4


def test_a_row_reads_its_networks_cells_and_averages_them(write_suite, tmp_path):
    suite = load_suite(write_suite(tiny_suite_dict(
        groups=GROUPS, seeds=[0, 1, 2], methods=[{"name": "ind", "label": "vanilla", "alone": True}, "dml"],
        table={"rows": ["group"], "columns": ["method", "value"], "values": ["net1", "net2", "avg", "ens", "gain"],
               "gains": {"gain": {"reference": "vanilla", "of": ["avg"]}}})))
    store = ResultStore(tmp_path / "results")
    acc = {("cifar_resnet8", 0): 50.0, ("cifar_resnet8", 1): 54.0, ("cifar_resnet8", 2): 52.0,
           ("cifar_resnet14", 0): 60.0, ("cifar_resnet14", 1): 58.0, ("cifar_resnet14", 2): 65.0}
    for cell in suite.cells:
        if cell.method == "ind":  # a one-network record: its net1 (avg and ens are the same network)
            store.put(fake_record(cell, acc[(cell.group[0], cell.seed)], acc[(cell.group[0], cell.seed)]))
        else:
            store.put(fake_record(cell, 70.0 + cell.seed, 72.0))
    table = build_table(suite, store)
    mixed, same = ("cifar_resnet8+cifar_resnet14",), ("cifar_resnet14+cifar_resnet14",)
    assert table.entries[(mixed, ("vanilla", "net1"))].ours == 52.0  # median of ResNet-8's 50, 54, 52
    assert table.entries[(mixed, ("vanilla", "net2"))].ours == 60.0  # median of ResNet-14's 60, 58, 65
    avg = statistics.median([(50 + 60) / 2, (54 + 58) / 2, (52 + 65) / 2])
    assert table.entries[(mixed, ("vanilla", "avg"))].ours == avg
    assert table.entries[(same, ("vanilla", "net1"))].ours == table.entries[(same, ("vanilla", "net2"))].ours == 60.0
    assert table.entries[(same, ("vanilla", "avg"))].ours == 60.0  # the same cell twice
    assert table.entries[(mixed, ("vanilla", "ens"))].text(False) == "n/a"  # never evaluated together
    dml_avg = statistics.median([(70 + s + 72) / 2 for s in range(3)])
    assert table.entries[(mixed, ("dml", "gain"))].ours == pytest.approx(dml_avg - avg)


def test_amln_tables_printing_the_same_vanilla_share_its_cells():
    def cells(name, label):
        return {c.hash: c for c in load_suite(f"suites/{name}.yaml").cells if c.label == label}

    cifar100 = cells("amln_table2b", "vanilla")
    assert len(cifar100) == 12 and all(c.recipe["epochs"] == 300 for c in cifar100.values())  # FFL's recipe
    assert set(cells("amln_table3b", "vanilla")) == set(cifar100)
    assert set(cells("amln_table6_cifar100", "A")) < set(cifar100)  # the ResNet-32 cells
    cifar10 = cells("amln_table2a", "vanilla")
    assert len(cifar10) == 12 and all(c.recipe["epochs"] == 600 for c in cifar10.values())  # AMLN's (assumed)
    assert set(cells("amln_table3a", "vanilla")) == set(cifar10)
    assert set(cells("amln_table6_cifar10", "A")) < set(cifar10)
