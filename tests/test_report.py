"""Aggregation over seeds against medians computed by hand; missing cells; the paper's numbers; rendering."""
import statistics

import pytest
import torch

from harness.reporting.report import build_table, notes, write_report
from harness.results.store import ResultStore
from harness.suite.schema import load_suite
from tests.helpers import TINY_RECIPE as TINY_RECIPE_FOR_GAINS, fake_record, tiny_suite_dict

# (method, seed) -> net1, net2 last-epoch top-1
ACCS = {("ind", 0): (60.0, 62.0), ("ind", 1): (64.0, 61.0), ("ind", 2): (70.0, 50.0),
        ("dml", 0): (66.0, 65.0), ("dml", 1): (63.0, 69.0)}  # dml seed 2 has no record: missing


@pytest.fixture
def filled(tmp_path, write_suite):
    suite = load_suite(write_suite(tiny_suite_dict(seeds=[0, 1, 2])))
    store = ResultStore(tmp_path / "results")
    for cell in suite.cells:
        if (cell.label, cell.seed) in ACCS:
            store.put(fake_record(cell, *ACCS[(cell.label, cell.seed)]))
    return suite, store


def test_medians_by_hand(filled):
    suite, store = filled
    table = build_table(suite, store)
    row = ("cifar_resnet8+cifar_resnet8",)
    assert table.entries[(row, ("ind", "net1"))].ours == 64.0  # median of 60, 64, 70
    assert table.entries[(row, ("ind", "net2"))].ours == 61.0  # median of 62, 61, 50
    assert table.entries[(row, ("ind", "avg"))].ours == statistics.median([61.0, 62.5, 60.0])
    assert table.entries[(row, ("dml", "net1"))].ours == 64.5  # median of two seeds: 66, 63
    assert table.entries[(row, ("dml", "net1"))].n == 2
    assert table.entries[(row, ("ind", "net1"))].n == 3


def test_other_aggregates_and_best_epoch(filled, write_suite, tmp_path):
    suite, store = filled
    for how, expected in (("mean", (60 + 64 + 70) / 3), ("max", 70.0), ("min", 60.0), ("n", 3.0),
                          ("std", statistics.stdev([60.0, 64.0, 70.0]))):
        suite.spec.evaluation.aggregate = how
        assert build_table(suite, store).entries[(("cifar_resnet8+cifar_resnet8",), ("ind", "net1"))].ours == pytest.approx(expected)
    suite.spec.evaluation.aggregate, suite.spec.evaluation.epoch = "median", "best"
    assert build_table(suite, store).entries[(("cifar_resnet8+cifar_resnet8",), ("ind", "net1"))].ours == 64.5


def test_failed_and_absent_cells_are_missing_not_zero(tmp_path, write_suite):
    suite = load_suite(write_suite(tiny_suite_dict(seeds=[0])))
    store = ResultStore(tmp_path / "results")
    ind, dml = suite.cells
    store.put(fake_record(ind, 50.0, 52.0))
    store.put({**fake_record(dml, 0.0, 0.0, status="failed"), "error": "boom"})
    table = build_table(suite, store)
    entry = table.entries[(("cifar_resnet8+cifar_resnet8",), ("dml", "net1"))]
    assert entry.ours is None and entry.n == 0 and entry.text(False) == "—"
    assert table.body()[0] == ["cifar_resnet8+cifar_resnet8", "50.00", "52.00", "51.00", "53.00", "—", "—", "—", "—"]


def test_output_a_method_lacks_is_not_applicable_not_missing(tmp_path, write_suite):
    raw = tiny_suite_dict(seeds=[0])
    raw["table"] = {"rows": ["group"], "columns": ["method", "value"], "values": ["net1", "teacher"]}
    suite = load_suite(write_suite(raw))
    store = ResultStore(tmp_path / "results")
    ind, dml = suite.cells
    record = fake_record(ind, 50.0, 52.0)
    record["last"]["teacher"] = {"top1": 55.0, "top5": 99.0}
    store.put(record)  # ind finished with a teacher output; dml has no record at all
    table = build_table(suite, store)
    assert table.body()[0] == ["cifar_resnet8+cifar_resnet8", "50.00", "55.00", "—", "—"]
    store.put(fake_record(dml, 60.0, 61.0))  # dml finished, without a teacher: n/a, not missing
    table = build_table(suite, store)
    assert table.body()[0] == ["cifar_resnet8+cifar_resnet8", "50.00", "55.00", "60.00", "n/a"]
    assert table.has_not_applicable() and not table.has_missing()
    md = write_report(suite, store, tmp_path / "reports", log=lambda *_: None)["md"].read_text()
    assert "n/a = the method has no such output" in md and "not run yet" not in md


def test_paper_numbers_beside_ours(tmp_path, write_suite):
    raw = tiny_suite_dict(groups=[["cifar_resnet32", "cifar_resnet32"]], seeds=[0],
                          paper_table={"name": "tsb_table1_cifar100"})
    suite = load_suite(write_suite(raw))
    store = ResultStore(tmp_path / "results")
    for cell in suite.cells:
        store.put(fake_record(cell, 70.0, 72.0))
    table = build_table(suite, store)
    row = ("cifar_resnet32+cifar_resnet32",)
    dml = table.entries[(row, ("dml", "net1"))]
    assert dml.paper == 71.20 and dml.delta == pytest.approx(70.0 - 71.20)
    assert dml.text(True) == "70.00 (71.20, -1.20)"
    assert table.entries[(row, ("ind", "net2"))].paper == 68.99  # the Ind row trains one ResNet-32 alone
    assert table.entries[(row, ("dml", "avg"))].paper is None  # TSB Table 1 prints no average


def test_rendered_files(filled, tmp_path):
    suite, store = filled
    paths = write_report(suite, store, tmp_path / "reports", log=lambda *_: None)
    md, tex, csv = (paths[k].read_text() for k in ("md", "tex", "csv"))
    assert "| cifar_resnet8+cifar_resnet8 |" in md and "64.00" in md and "n = 2–3 seeds" in md
    assert "abc123" in md and "Test CPU" in md
    assert r"\toprule" in tex and r"\multicolumn{4}{c}{ind}" in tex and "ResNet-8 + ResNet-8" in tex
    assert tex.count(r"\\") >= 3
    assert len(csv.strip().splitlines()) == 1 + 5 * 4  # header + 5 finished cells × 4 values


def test_offline_table_shows_teacher_and_student_rows_beside_the_papers(tmp_path, write_suite):
    """ACKD Table 2's layout: Ind's two networks (the paper's Teacher and Student rows), then each method's
    student; the paper's number is looked up by the role our value plays."""
    raw = tiny_suite_dict(groups=[["cifar_resnet110", "cifar_resnet20"]], seeds=[0], methods=["ind", "kd"],
                          table={"rows": ["method", "value"], "columns": ["group"], "values": ["net1", "net2"],
                                 "method_values": {"ind": ["net1", "net2"], "*": ["net1"]}},
                          paper_table={"name": "ackd_table2",
                                       "eval": {"ind": {"net1": "teacher", "net2": "student"},
                                                "*": {"net1": "student"}}})
    suite = load_suite(write_suite(raw))
    store = ResultStore(tmp_path / "results")
    for cell in suite.cells:
        store.put(fake_record(cell, 71.0, 69.0))
    table = build_table(suite, store)
    assert table.rows == [("ind", "net1"), ("ind", "net2"), ("kd", "net1")]  # no kd / net2 row
    column = ("cifar_resnet110+cifar_resnet20",)
    assert table.entries[(("ind", "net1"), column)].paper == 74.00  # the teacher alone
    assert table.entries[(("ind", "net2"), column)].paper == 69.20  # the student alone
    assert table.entries[(("kd", "net1"), column)].paper == 70.73
    assert table.entries[(("kd", "net1"), column)].text(True) == "71.00 (70.73, +0.27)"


def test_the_teacher_row_is_the_stage_teacher_the_students_learnt_from(tmp_path, write_suite):
    """``stage_values: {ind/net1: teacher}``: the Teacher row reads the stage cell's own record (not Ind's pair
    cell), with the stage's seed count and hash in the CSV; Ind's student and the methods' rows are unchanged."""
    from harness.training.stages import stages_of

    raw = tiny_suite_dict(groups=[["cifar_resnet20", "cifar_resnet8"]], seeds=[0, 1], methods=["ind", "kd"],
                          table={"rows": ["method", "value"], "columns": ["group"], "values": ["net1", "net2"],
                                 "method_values": {"ind": ["net1", "net2"], "*": ["net1"]},
                                 "stage_values": {"ind/net1": "teacher"}})
    suite = load_suite(write_suite(raw))
    store = ResultStore(tmp_path / "results")
    for cell in suite.cells:
        store.put(fake_record(cell, 50.0 + cell.seed, 40.0))  # Ind's pair: its own teacher network at 50, 51
    teacher = stages_of(next(c for c in suite.cells if c.method == "kd"))["teacher"].cell
    column = ("cifar_resnet20+cifar_resnet8",)
    assert build_table(suite, store).entries[(("ind", "net1"), column)].ours is None  # the stage has not finished
    store.put({**fake_record(teacher, 73.0, 0.0), "last": {"net1": {"top1": 73.0, "top5": 99.0}}})
    table = build_table(suite, store)
    assert (table.entries[(("ind", "net1"), column)].ours, table.entries[(("ind", "net1"), column)].n) == (73.0, 1)
    assert table.entries[(("ind", "net2"), column)].ours == 40.0 and table.entries[(("kd", "net1"), column)].ours == 50.5
    paths = write_report(suite, store, tmp_path / "reports")
    csv = paths["csv"].read_text()
    assert "ind,net1,0,73.0" in csv.replace('"', "") and teacher.hash in csv
    raw["table"]["stage_values"] = {"ind/ens": "teacher"}
    with pytest.raises(Exception, match=r"table.stage_values.ind/ens: 'ind/ens' is not 'method label/value'"):
        load_suite(write_suite(raw))


def test_a_teacher_from_elsewhere_is_shown_once_in_the_teacher_row(tmp_path, write_suite):
    """A teacher file (here a local one; a URL or hub name alike) has no cell: the Teacher row shows its accuracy
    once per group, as its first student (by seed) measured it on the test set, keyed by the file's SHA-256; Ind's
    own teacher network is not shown in its place, and the row is named "Teacher"."""
    from harness.reporting.report import row_names
    from harness.results.weights import file_sha256

    teacher_file = tmp_path / "teacher.pth"
    torch.save({"model": {}}, teacher_file)
    digest = file_sha256(teacher_file)
    raw = tiny_suite_dict(groups=[["cifar_resnet20", "cifar_resnet8"]], seeds=[0, 1],
                          methods=["ind", {"name": "kd", "teacher_checkpoint": str(teacher_file)}],
                          table={"rows": ["method", "value"], "columns": ["group"], "values": ["net1", "net2"],
                                 "method_values": {"ind": ["net1", "net2"], "*": ["net1"]},
                                 "stage_values": {"ind/net1": "teacher"}})
    suite = load_suite(write_suite(raw))
    store = ResultStore(tmp_path / "results")
    for cell in suite.cells:
        record = fake_record(cell, 50.0 + cell.seed, 40.0)
        if cell.method == "kd":  # the student's record: its output and the frozen teacher's, measured each epoch
            record["last"] = {"net1": {"top1": 60.0 + cell.seed}, "teacher": {"top1": 74.0 + cell.seed / 100}}
            record["stages"] = {"teacher": {"file": str(teacher_file), "sha256": digest, "cell_hash": None}}
        store.put(record)
    column = ("cifar_resnet20+cifar_resnet8",)
    table = build_table(suite, store)
    teacher = table.entries[(("ind", "net1"), column)]
    assert (teacher.ours, teacher.n) == (74.0, 1)  # seed 0's measurement, once; not Ind's 50.5
    assert table.entries[(("kd", "net1"), column)].ours == 60.5 and table.entries[(("ind", "net2"), column)].ours == 40
    assert row_names(suite, table.rows)[("ind", "net1")] == "Teacher"
    csv = write_report(suite, store, tmp_path / "reports")["csv"].read_text()
    assert digest[:16] in csv


def test_method_values_must_name_labels_and_values(write_suite):
    from harness.suite.schema import SuiteError

    raw = tiny_suite_dict(table={"rows": ["method", "value"], "columns": ["group"], "values": ["net1", "net2"],
                                 "method_values": {"dm": ["net1"], "ind": ["ens"]}})
    with pytest.raises(SuiteError) as info:
        load_suite(write_suite(raw))
    text = "\n".join(info.value.lines)
    assert "table.method_values.dm: not a method label of this suite (did you mean 'dml'?)" in text
    assert "table.method_values.ind: 'ens' is not in table.values (net1, net2)" in text


def test_paper_rows_told_apart_by_extra_keys_and_renamed_values():
    """KDCL Table 7 has a row with and without ICL per target; KDCL's KD rows print the student as net2; tables
    that keep numbers under the metric's name (top1) are read through value_keys."""
    from harness.papers.tables import load_paper_table, paper_value

    table = load_paper_table("kdcl_table7")
    group = ("cifar_resnet32", "cifar_wrn_16_2")
    plain = paper_value(table, group, "naive", "net1", methods={"naive": "kdcl_naive"},
                        match={"naive": {"icl": False}})
    icl = paper_value(table, group, "naive icl", "net1", methods={"naive icl": "kdcl_naive"},
                      match={"naive icl": {"icl": True}})
    assert (plain, icl) == (73.7, 73.8)
    synthetic = {"rows": [{"nets": ["resnet18"], "method": "ind", "top1": 71.2, "top5": 90.0},
                          {"nets": ["resnet32", "wrn_16_2"], "method": "kd", "net2": 74.0}]}
    assert paper_value(synthetic, ("resnet18",), "ind", "net1", value_keys={"*": {"net1": "top5"}}) == 90.0
    assert paper_value(synthetic, group, "kd", "net1", value_keys={"kd": {"net1": "net2"}}) == 74.0
    assert paper_value(synthetic, group, "kd", "net1") is None


def test_gain_columns_by_hand(filled, tmp_path, write_suite):
    """AMLN's ↑ (avg − vanilla's avg) and KDCL's gain (Σ over the two networks of ours − Ind's), from medians."""
    raw = tiny_suite_dict(seeds=[0, 1, 2], table={"rows": ["group"], "columns": ["method", "value"],
                                                  "values": ["avg", "up", "gain"],
                                                  "gains": {"up": {"reference": "ind", "of": ["avg"]},
                                                            "gain": {"reference": "ind", "of": ["net1", "net2"]}}})
    suite = load_suite(write_suite(raw, "gains.yaml"))
    store = ResultStore(tmp_path / "results")
    for cell in suite.cells:
        if (cell.label, cell.seed) in ACCS:
            store.put(fake_record(cell, *ACCS[(cell.label, cell.seed)]))
    table = build_table(suite, store)
    row = ("cifar_resnet8+cifar_resnet8",)
    med = lambda m, i: statistics.median(v[i] for (mm, _), v in ACCS.items() if mm == m)
    avg = lambda m: statistics.median((v[0] + v[1]) / 2 for (mm, _), v in ACCS.items() if mm == m)
    assert table.entries[(row, ("dml", "up"))].ours == pytest.approx(avg("dml") - avg("ind"))
    assert table.entries[(row, ("dml", "gain"))].ours == pytest.approx(
        med("dml", 0) - med("ind", 0) + med("dml", 1) - med("ind", 1))
    assert table.entries[(row, ("ind", "gain"))].text(False) == "n/a"  # the reference has no gain over itself


def test_a_single_network_row_through_value_keys():
    from harness.papers.tables import paper_value

    table = {"rows": [{"nets": ["resnet34"], "method": "ind", "top1": 73.31, "top5": 91.42, "flops_g": 3.67}]}
    assert paper_value(table, ("resnet34", "resnet34"), "ind", "net1", value_keys={"*": {"net1": "top1"}}) == 73.31
    assert paper_value(table, ("resnet34", "resnet34"), "ind", "net1") is None
    # a value of the whole group reads a one-network row only where the suite names the key (AMLN Table 4's FLOPs)
    assert paper_value(table, ("resnet34", "resnet34"), "ind", "peer_gmacs",
                       value_keys={"*": {"peer_gmacs": "flops_g"}}) == 3.67
    assert paper_value(table, ("resnet34", "resnet34"), "ind", "flops_g") is None


def test_paper_rows_in_another_order_are_renumbered_to_ours():
    """KDCL Table 7's "2 distill 1" lists [ResNet-32 (student), WRN-16-2 (teacher)]; our offline cell is
    [WRN-16-2, ResNet-32]: its net1/net2 swap, and ``{net1}`` in ``match`` is our teacher's name."""
    from harness.papers.tables import load_paper_table, paper_value

    table = load_paper_table("kdcl_table7")
    keys = {"kd": {"teacher": "net1", "net1": "net2"}}
    match = {"kd": {"teacher": "{net1}"}}
    two_distill_one = ("cifar_wrn_16_2", "cifar_resnet32")
    assert paper_value(table, two_distill_one, "kd", "teacher", value_keys=keys, match=match) == 72.2
    assert paper_value(table, two_distill_one, "kd", "net1", value_keys=keys, match=match) == 73.3
    one_distill_two = ("cifar_resnet32", "cifar_wrn_16_2")
    assert paper_value(table, one_distill_two, "kd", "teacher", value_keys=keys, match=match) == 69.9
    assert paper_value(table, one_distill_two, "kd", "net1", value_keys=keys, match=match) == 74.5
    # a row in our order wins over the same row listed the other way round
    rows = {"rows": [{"nets": ["b", "a"], "method": "m", "net1": 1.0}, {"nets": ["a", "b"], "method": "m", "net1": 2.0}]}
    assert paper_value(rows, ("a", "b"), "m", "net1") == 2.0
    assert paper_value({"rows": rows["rows"][:1]}, ("a", "b"), "m", "net2") == 1.0


def test_a_row_about_one_network_gives_its_numbers_to_that_network_only():
    """KDCL Table 3: rows say which network their top-1 is (``eval: resnet18``) whatever the pair's order, and a
    vanilla ResNet-18 row stands for the ResNet-18 trained alone inside a mixed Ind pair; a number of the whole
    cell (params_m) still belongs to the cell."""
    from harness.papers.tables import load_paper_table, paper_value

    table = load_paper_table("kdcl_table3")
    keys = {"*": {"net1": "top1", "net2": "top1"}}
    small, large = ("resnet18", "imagenet_mobilenetv2_120"), ("resnet50", "resnet18")
    nets = {"imagenet_mobilenetv2_120": "mobilenetv2_x1_2"}
    look = lambda group, method, value: paper_value(table, group, method, value, nets, value_keys=keys)
    assert (look(small, "kdcl", "net1"), look(small, "kdcl", "net2")) == (72.9, None)
    assert (look(large, "kdcl", "net1"), look(large, "kdcl", "net2")) == (None, 73.1)
    assert (look(small, "kdcl", "params_m"), look(large, "kdcl", "params_m")) == (16.4, 37.2)
    assert (look(small, "ind", "net1"), look(small, "ind", "net2")) == (71.2, None)
    assert (look(large, "ind", "net1"), look(large, "ind", "net2")) == (None, 71.2)
    assert look(large, "ind", "params_m") is None  # the vanilla row's 11.7M is one network's, not our pair's
    assert look(large, "kdcl", "net3") is None  # a pair has no third network


def test_a_label_may_read_several_paper_methods_in_order():
    """KDCL Table 1: our Ind pair's teacher network is the KD rows' teacher, its ResNet-18 the hard-label row."""
    from harness.papers.tables import load_paper_table, paper_value

    table = load_paper_table("kdcl_table1")
    kwargs = {"methods": {"ind": ["kd", "ind"]}, "value_keys": {"ind": {"net1": "teacher_top1"}}}
    assert paper_value(table, ("resnet50", "resnet18"), "ind", "net1", **kwargs) == 76.5
    assert paper_value(table, ("resnet50", "resnet18"), "ind", "net2", **kwargs) == 70.1
    assert paper_value(table, ("resnet50", "resnet18"), "ind", "ens", **kwargs) is None


def test_costs_of_a_trial_sit_beside_its_accuracies(tmp_path, write_suite):
    """params_m = (peers + added modules) / 1e6, train_gmacs = the recorded forward multiply-adds per image / 1e9,
    peer_gmacs = that over the group's size; never bold (a cost is not a method's accuracy)."""
    from harness.reporting.report import render

    raw = tiny_suite_dict(seeds=[0], table={"rows": ["group"], "columns": ["method", "value"],
                                            "values": ["net1", "params_m", "train_gmacs", "peer_gmacs"]})
    suite = load_suite(write_suite(raw, "costs.yaml"))
    store = ResultStore(tmp_path / "results")
    for i, cell in enumerate(suite.cells):
        record = fake_record(cell, 60.0 + i, 61.0)
        record["params"] = {"peers": 1_500_000 * (i + 1), "added_total": 250_000, "deployed": 750_000}
        record["costs"] = {"train_forward_macs_per_image": 3.0e9 * (i + 1)}
        store.put(record)
    table = build_table(suite, store)
    row = ("cifar_resnet8+cifar_resnet8",)
    for i, label in enumerate(suite.labels()):
        assert table.entries[(row, (label, "params_m"))].ours == pytest.approx((1.5 * (i + 1) + 0.25))
        assert table.entries[(row, (label, "train_gmacs"))].ours == pytest.approx(3.0 * (i + 1))
        assert table.entries[(row, (label, "peer_gmacs"))].ours == pytest.approx(1.5 * (i + 1))
    assert {c[1] for _, c in table.best} == {"net1"}  # the largest params_m is not "best"
    assert "params_m = training-time parameters in millions" in render(table, suite, store)["md"]
    assert set(table.trials["value"]) == {"net1", "net2", "avg", "ens", "params_m", "train_gmacs", "peer_gmacs"}


def test_a_scaled_down_paper_suite_says_so_in_its_title(tmp_path, write_suite):
    """Another dataset than the paper table's, a subset, fewer epochs than the named preset (the suite's or a
    method's own): the report's title starts with what was scaled down; the paper's own setting says nothing."""
    paper = {"name": "tsb_table1_cifar100"}
    full = load_suite(write_suite({"name": "full", "dataset": {"name": "cifar100"}, "groups": [["cifar_resnet8"] * 2],
                                   "methods": ["dml"], "seeds": [0], "recipe": "tsb_cifar", "paper_table": paper},
                                  "full.yaml"))
    assert full.scaled_down == []
    small = load_suite(write_suite({
        "name": "small", "title": "TSB Table 1", "dataset": {"name": "fashion_mnist_mini", "train_per_class": 20},
        "groups": [["cifar_resnet8"] * 2], "methods": ["ind", {"name": "dml", "recipe": {"base": "kdcl_cifar",
                                                                                         "epochs": 5}}],
        "seeds": [0], "recipe": {"base": "tsb_cifar", "epochs": 3}, "paper_table": paper}, "small.yaml"))
    assert small.scaled_down == ["fashion_mnist_mini in place of cifar100", "20 train images per class",
                                 "3 of tsb_cifar's 240 epochs", "5 of kdcl_cifar's 200 epochs"]
    title = build_table(small, ResultStore(tmp_path / "results")).title
    assert title == ("SCALED DOWN (fashion_mnist_mini in place of cifar100, 20 train images per class, 3 of "
                     "tsb_cifar's 240 epochs, 5 of kdcl_cifar's 200 epochs), not a reproduction — TSB Table 1 — last "
                     "epoch (see the notes)")
    no_paper = load_suite(write_suite({**tiny_suite_dict(), "name": "np"}, "np.yaml"))
    assert no_paper.scaled_down == []  # claims no table, so nothing to mistake for a reproduction


def test_the_epoch_shown_is_the_papers_and_both_when_asked(tmp_path, write_suite):
    """evaluation.epoch "paper" (the default): the best test epoch under a preset whose paper's code reports it
    (one_cifar: ONE's official code), the last, marked as assumed, under a paper that does not say (kdcl_cifar); [best, last]: one table of each, both in
    the CSV; the title says which."""
    base = {"dataset": {"name": "fashion_mnist_mini"}, "groups": [["cifar_resnet8"] * 2], "methods": ["dml"],
            "seeds": [0, 1]}
    tsb = load_suite(write_suite({**base, "name": "tsb", "recipe": "one_cifar"}, "tsb.yaml"))  # ONE's code: best
    kdcl = load_suite(write_suite({**base, "name": "kdcl", "recipe": "kdcl_cifar"}, "kdcl.yaml"))
    assert {c.hash for c in tsb.cells} != {c.hash for c in kdcl.cells}
    store = ResultStore(tmp_path / "results")
    for cell in tsb.cells + kdcl.cells:
        store.put(fake_record(cell, 60.0 + cell.seed, 50.0))  # best = last + 0.5 (fake_record)
    row = ("cifar_resnet8+cifar_resnet8",)
    table = build_table(tsb, store)
    assert table.entries[(row, ("dml", "net1"))].ours == 61.0  # best: median of 60.5, 61.5
    assert table.title.endswith("best test epoch (see the notes)")
    assert any(n.startswith("best epoch: ONE's official code") for n in notes(tsb)["assumed"])
    table = build_table(kdcl, store)
    assert table.entries[(row, ("dml", "net1"))].ours == 60.5  # last: median of 60, 61
    assert table.title.endswith("last epoch (the paper does not say which; assumed)")
    both = load_suite(write_suite({**base, "name": "both", "recipe": "kdcl_cifar",
                                   "evaluation": {"epoch": ["best", "last"]}}, "both.yaml"))
    paths = write_report(both, store, tmp_path / "reports", log=lambda *a: None)
    md = paths["md"].read_text()
    assert md.count("# both — ") == 2 and "— best test epoch" in md and "— last epoch" in md
    assert "61.00" in md and "60.50" in md
    csv = paths["csv"].read_text()
    assert ",best," in csv and ",last," in csv
    with pytest.raises(Exception, match="best and/or last once each"):
        load_suite(write_suite({**base, "name": "bad", "recipe": "kdcl_cifar",
                                "evaluation": {"epoch": ["best", "best"]}}, "bad.yaml"))


def test_copied_numbers_are_marked_and_assumptions_listed(tmp_path):
    """AMLN Table 2(a) prints ONE's and FFL's numbers from the FFL paper (``copied_from``): they carry † and a
    footnote, in Markdown and LaTeX; the notes list what the recipe assumed (AMLN's 600 epochs) and the suite file's
    own header, where its choices are written."""
    from pathlib import Path

    suite = load_suite(Path(__file__).parents[1] / "suites" / "amln_table2a.yaml")
    store = ResultStore(tmp_path / "results")
    for cell in suite.cells:
        store.put(fake_record(cell, 93.0, 92.0))
    table = build_table(suite, store)
    marked = {key[1][0] for key, entry in table.entries.items() if entry.paper_mark == "†"}
    assert marked == {"ONE", "FFL"}, marked
    assert all(not e.paper_mark for key, e in table.entries.items() if key[1][0] not in ("ONE", "FFL"))
    assert table.footnotes == {"†": ["copied by the paper from FFL paper [22] (Avg*)"]}
    paths = write_report(suite, store, tmp_path / "reports", log=lambda *a: None)
    md, tex = paths["md"].read_text(), paths["tex"].read_text()
    assert "† The paper's number is copied by the paper from FFL paper [22] (Avg*)." in md
    assert "\\textsuperscript{\\dag}" in tex and "the paper's number is copied by the paper from FFL paper" in tex
    notes = md.split("### Notes: what the paper does not state", 1)[1].split("<details>", 1)[0]
    assert "600 assumed" in notes
    assert "\n> " + Path(suite.path).read_text().splitlines()[0][2:] + "\n" in notes  # the header, line by line


def test_a_gain_is_taken_against_a_reference_trained_the_same_way(tmp_path, write_suite):
    """A method under its own recipe (AMLN's ONE, FFL: FFL's) needs a reference under that recipe: validate refuses
    a gain across recipes in one line, and ``references`` subtracts the matching one."""
    from harness.suite.schema import SuiteError

    other = {**TINY_RECIPE_FOR_GAINS, "epochs": 3}
    raw = tiny_suite_dict(seeds=[0], methods=["ind", {"name": "dml", "label": "late", "recipe": other},
                                             {"name": "dml", "label": "dml"}],
                          table={"rows": ["group"], "columns": ["method", "value"], "values": ["avg", "up"],
                                 "gains": {"up": {"reference": "ind", "of": ["avg"]}}})
    with pytest.raises(SuiteError) as refused:
        load_suite(write_suite(raw, "across.yaml"))
    assert refused.value.lines == [f"{tmp_path / 'across.yaml'}: table.gains.up: late trains under another recipe than "
                                   "its reference ind; add a method entry trained like late and name it in "
                                   "table.gains.up.references.late"]
    raw["methods"].insert(1, {"name": "ind", "label": "ind3", "recipe": other})
    raw["table"]["gains"]["up"]["references"] = {"late": "ind3"}
    suite = load_suite(write_suite(raw, "matched.yaml"))
    store = ResultStore(tmp_path / "results")
    accs = {"ind": (60.0, 62.0), "ind3": (50.0, 52.0), "late": (55.0, 57.0), "dml": (66.0, 64.0)}
    for cell in suite.cells:
        store.put(fake_record(cell, *accs[cell.label]))
    table = build_table(suite, store)
    row = ("cifar_resnet8+cifar_resnet8",)
    assert table.entries[(row, ("late", "up"))].ours == pytest.approx(56.0 - 51.0)  # against ind3, not ind
    assert table.entries[(row, ("dml", "up"))].ours == pytest.approx(65.0 - 61.0)
    assert table.entries[(row, ("ind3", "up"))].text(False) == "n/a"


def test_a_row_of_another_group_of_the_paper_table(tmp_path):
    """ACKD Table 5's ONE row (ResNet-18 branches) sits in its ResNet-34 -> ResNet-18 table: ``paper_table.group``
    names the networks of the paper's row, so our ONE cell gets the paper's 29.45 top-1 error beside it."""
    from pathlib import Path

    suite = load_suite(Path(__file__).parents[1] / "suites" / "ackd_table5_one.yaml")
    store = ResultStore(tmp_path / "results")
    for cell in suite.cells:
        store.put(fake_record(cell, 70.0, 69.0))
    entry = build_table(suite, store).entries[(("one",), ("net1",))]
    assert (entry.paper, entry.ours) == (29.45, pytest.approx(100 - 70.0))  # last epoch (ackd_imagenet): 70.0


def test_amln_table4_in_the_papers_layout(tmp_path):
    """Methods as rows; top-1 and top-5 (``top5:avg``: an output at another metric) and #FLOPs as columns, the
    paper's number beside each of ours."""
    from pathlib import Path

    suite = load_suite(Path(__file__).parents[1] / "suites" / "amln_table4.yaml")
    store = ResultStore(tmp_path / "results")
    for cell in suite.cells:
        record = fake_record(cell, 74.0, 72.0)
        record["last"]["avg"]["top5"] = 91.0 + cell.seed
        store.put(record)
    table = build_table(suite, store)
    assert table.rows == [("vanilla",), ("ONE",), ("FFL",), ("AMLN",)]
    assert [c[0] for c in table.columns] == ["avg", "top5:avg", "train_gmacs", "peer_gmacs"]
    amln = {c[0]: table.entries[(("AMLN",), c)] for c in table.columns}
    assert (amln["avg"].ours, amln["avg"].paper) == (73.0, 75.48)
    assert (amln["top5:avg"].ours, amln["top5:avg"].paper) == (92.0, 92.54)  # median of 91, 92, 93
    with pytest.raises(Exception, match="'top7:avg' is not an output name"):
        suite.spec.table.model_validate({**suite.spec.table.model_dump(), "values": ["top7:avg"]})


def test_ackd_table1_run_report_prints_the_papers_accuracies(tmp_path):
    """The run report (not only harness analyze) shows ACKD Table 1's Acc(T) beside the teacher row and Acc(P) beside
    each proxy, whose rows name [teacher, proxy, student] (paper_table.group per label); a stage teacher not finished
    yet is missing ("—"), not "n/a"."""
    from pathlib import Path

    suite = load_suite(Path(__file__).parents[1] / "suites" / "ackd_table1.yaml")
    store = ResultStore(tmp_path / "results")
    for cell in suite.cells:
        record = fake_record(cell, 74.0, 72.0)
        record["best"]["teacher"] = {"top1": 77.0, "top5": 99.0, "epoch": 1}
        store.put(record)
    table = build_table(suite, store)
    column = ("cifar_wrn_28_4+cifar_resnet56",)
    assert table.entries[(("ind", "net1"), column)].paper == 78.91
    assert table.entries[(("ind", "net1"), column)].text(True) == "— (78.91)"
    assert table.entries[(("eskd", "teacher"), column)].paper == 76.30
    assert table.entries[(("takd", "teacher"), column)].paper == 76.78


@pytest.mark.parametrize("kind, paper", [("one", (72.2, 90.6, 29.5)), ("clnn", (72.4, 90.7, 40.5))])
def test_kdcl_table3_shows_one_and_clnn_with_top5_and_parameters(tmp_path, kind, paper):
    """KDCL Table 3's ONE and CLNN rows: top-1, top-5 and training-time parameters beside the paper's, from the very
    cells of kdcl_table2_{one,clnn} (same hashes: trained once for both tables)."""
    from pathlib import Path

    root = Path(__file__).parents[1] / "suites"
    suite = load_suite(root / f"kdcl_table3_{kind}.yaml")
    assert [c.hash for c in suite.cells] == [c.hash for c in load_suite(root / f"kdcl_table2_{kind}.yaml").cells]
    store = ResultStore(tmp_path / "results")
    for cell in suite.cells:
        record = fake_record(cell, 72.0, 71.0)
        record["params"] = {"peers": 30_000_000, "added_total": 500_000}
        store.put(record)
    table = build_table(suite, store)
    assert tuple(table.entries[((kind,), (v,))].paper for v in ("net1", "top5:net1", "params_m")) == paper
    assert table.entries[((kind,), ("params_m",))].ours == pytest.approx(30.5)


def test_bold_only_where_the_best_stands_out_from_the_seeds(tmp_path, write_suite):
    """Issue 18: Ind's 76.20 was bold over DML's 75.50 with a spread of 1.33.  A best within the larger standard
    deviation over seeds of it and the runner-up is not bold (the notes say how many such comparisons); one that
    beats it by more is."""
    import statistics

    from harness.reporting.report import render

    suite = load_suite(write_suite(tiny_suite_dict(seeds=[0, 1, 2], table={"rows": ["group"],
                                                   "columns": ["method", "value"], "values": ["net1", "net2"]})))
    net1 = {"ind": [74.0, 76.2, 77.0], "dml": [75.5, 75.0, 76.0]}  # medians 76.2 / 75.5, sd 1.55 / 0.5
    net2 = {"ind": [60.0, 60.5, 61.0], "dml": [65.0, 65.5, 66.0]}  # 60.5 / 65.5, sd 0.5 each: 5 points apart
    store = ResultStore(tmp_path / "results")
    for cell in suite.cells:
        store.put(fake_record(cell, net1[cell.label][cell.seed], net2[cell.label][cell.seed]))
    table = build_table(suite, store)
    row = ("cifar_resnet8+cifar_resnet8",)
    assert table.best == {(row, ("dml", "net2"))}
    assert table.entries[(row, ("ind", "net1"))].spread == pytest.approx(statistics.stdev(net1["ind"]))
    assert table.within_spread == {(row, ("dml", "net1"))}
    md = render(table, suite, store)["md"]
    assert "1 comparison(s) have no bold: the best is within the seeds' standard deviation of the next" in md
    assert "**65.50**" in md and "**76.20**" not in md


def test_spread_and_n_beside_each_number_when_asked(tmp_path, write_suite):
    """``evaluation: {spread: true}``: each number ± its standard deviation over seeds; n per cell where the cells'
    n differ (a seed missing); a single seed has no spread."""
    import statistics

    from harness.reporting.report import render

    raw = tiny_suite_dict(seeds=[0, 1, 2], evaluation={"spread": True},
                          table={"rows": ["group"], "columns": ["method", "value"], "values": ["net1"]})
    suite = load_suite(write_suite(raw))
    net1 = {("ind", 0): 70.0, ("ind", 1): 72.0, ("ind", 2): 71.0, ("dml", 0): 73.0}
    store = ResultStore(tmp_path / "results")
    for cell in suite.cells:
        if (cell.label, cell.seed) in net1:
            store.put(fake_record(cell, net1[(cell.label, cell.seed)], 50.0))
    table = build_table(suite, store)
    row = table.body("plain")[0]
    assert row[1] == f"71.00 ± {statistics.stdev([70.0, 72.0, 71.0]):.2f} (n=3)" and row[2] == "73.00 (n=1)"
    assert "71.00 $\\pm$ 1.00" in render(table, suite, store)["tex"]


def test_the_paper_delta_can_be_left_out_for_a_shorter_cell():
    from harness.reporting.report import Entry

    entry = Entry(70.0, 2, paper=71.25)
    assert entry.text(True) == "70.00 (71.25, -1.25)" and entry.text(True, delta=False) == "70.00 (71.25)"
    from harness.suite.spec import Layout

    assert Layout.model_validate({"paper_delta": False}).paper_delta is False and Layout().paper_delta is True


def test_a_report_with_no_finished_cell_says_so_not_zero_seeds(tmp_path, write_suite):
    suite = load_suite(write_suite(tiny_suite_dict()))
    paths = write_report(suite, ResultStore(tmp_path / "results"), tmp_path / "reports", log=lambda *a: None)
    for kind in ("md", "tex"):
        text = paths[kind].read_text()
        assert "no cell finished yet" in text and "0 seeds" not in text, kind


def test_a_report_states_where_its_cells_differ_from_the_papers_text(write_suite, tmp_path):
    """From one place each: timm's zero-initialised residual batch norm (the ImageNet ResNets), AMLN's joint update;
    neither for CIFAR networks or a sequential AMLN."""
    import timm

    from tests.helpers import shipped_suite

    said = notes(shipped_suite("amln_table4.yaml"))["deviations"]
    assert any("ResNet-34 is timm's ResNet" in n and "γ = 0" in n for n in said)
    assert any("Algorithm 1 updates S1, then S2" in n for n in said)
    net = timm.create_model("resnet34")
    assert float(net.layer1[0].bn2.weight.abs().sum()) == 0.0  # what the note says timm does
    cifar = load_suite(write_suite(tiny_suite_dict(methods=[{"name": "amln", "update": "sequential"}])))
    assert notes(cifar)["deviations"] == []
    md = write_report(shipped_suite("amln_table4.yaml"), ResultStore(tmp_path / "r"), tmp_path / "rep",
                      log=lambda *a: None)["md"].read_text()
    assert "Differs from the paper's text: ResNet-34 is timm's ResNet" in md


def test_rows_of_methods_read_as_the_papers_print_them(tmp_path):
    """ACKD Table 2: the stage teacher's row is "Teacher", the network trained alone "Student", every other method
    its card's display name (SemCKD, not SEMCKD); a method showing several outputs keeps "method / output"."""
    from harness.training.method import load_methods
    from tests.helpers import shipped_suite

    table = build_table(shipped_suite("ackd_table2.yaml"), ResultStore(tmp_path / "empty"))
    names = [row[0] for row in table.body("md")][::3 if table.paper_layout == "rows" else 1]
    assert names[:4] == ["Teacher", "Student", "AT", "SP"] and "SemCKD" in names and "ACKD" in names
    methods = load_methods()
    assert methods.get("at_kd").display_name() == "AT+KD" and methods.get("dml_fitnet").display_name() == "DML+FitNet"
    kdcl = build_table(shipped_suite("kdcl_table2.yaml"), ResultStore(tmp_path / "empty"))
    assert [row[0] for row in kdcl.body("md")][0] == "ind / net1"
