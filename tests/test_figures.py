"""Report figures: curve data (median/min/max over seeds per epoch) against a hand computation, sweep data and
its x values, files written and linked from the Markdown, and no figure (and no error) without data."""
import pytest

from harness.reporting.figures import curve_frame, draw_sweep, history_frame, swept_points, sweep_frame
from harness.reporting.frames import trial_frame
from harness.reporting.report import write_report
from harness.results.store import ResultStore
from harness.suite.schema import load_suite
from tests.helpers import fake_record, tiny_suite_dict

# (method, seed) -> per epoch: (top1 of net1, loss terms); net2 is 5 points above net1, avg 2.5, ens 6: every
# output the table shows is a curve of its own
HISTORY = {
    ("ind", 0): [(10.0, {"ce/net1": 2.0, "ce/net2": 2.5}), (30.0, {"ce/net1": 1.5, "ce/net2": 1.0})],
    ("ind", 1): [(14.0, {"ce/net1": 2.2, "ce/net2": 2.1}), (20.0, {"ce/net1": 1.1, "ce/net2": 1.3})],
    ("ind", 2): [(12.0, {"ce/net1": 1.9, "ce/net2": 2.4}), (40.0, {"ce/net1": 0.9, "ce/net2": 1.2})],
    ("dml", 0): [(11.0, {"ce/net1": 2.0, "kl/net1": 0.5, "ce/net2": 2.0, "kl/net2": 0.25}),
                 (33.0, {"ce/net1": 1.0, "kl/net1": 0.2, "ce/net2": 1.0, "kl/net2": 0.2})],
    ("dml", 1): [(19.0, {"ce/net1": 2.5, "kl/net1": 0.5, "ce/net2": 2.5, "kl/net2": 0.5}),
                 (31.0, {"ce/net1": 1.5, "kl/net1": 0.1, "ce/net2": 1.5, "kl/net2": 0.1})],
    ("dml", 2): [(15.0, {"ce/net1": 1.0, "kl/net1": 0.5, "ce/net2": 1.0, "kl/net2": 0.5}),
                 (35.0, {"ce/net1": 0.5, "kl/net1": 0.5, "ce/net2": 0.5, "kl/net2": 0.5})],
}


def history_of(epochs):
    rows = []
    for epoch, (top1, losses) in enumerate(epochs, start=1):
        row = {"epoch": epoch, "images_per_s": 100.0, "lr/net1": 0.1, "lr/net2": 0.1}
        for output, value in (("net1", top1), ("net2", top1 + 5), ("avg", top1 + 2.5), ("ens", top1 + 6)):
            row[f"top1/{output}"], row[f"top5/{output}"] = value, 99.0
        row.update({f"loss/{name}": value for name, value in losses.items()})
        rows.append(row)
    return rows


@pytest.fixture
def with_history(tmp_path, write_suite):
    suite = load_suite(write_suite(tiny_suite_dict(seeds=[0, 1, 2])))
    store = ResultStore(tmp_path / "results")
    for cell in suite.cells:
        epochs = HISTORY[(cell.label, cell.seed)]
        store.put({**fake_record(cell, epochs[-1][0], epochs[-1][0] + 5), "history": history_of(epochs)})
    return suite, store


def test_curve_data_is_the_median_min_max_over_seeds(with_history):
    suite, store = with_history
    history = history_frame(suite, store.records(suite.cells))
    assert set(history["output"]) == {"net1", "net2", "avg", "ens", ""}
    # per cell and epoch: 4 outputs and the CE terms; DML also its other (KL) terms
    assert len(history) == 3 * 2 * (4 + 1) + 3 * 2 * (4 + 2)
    assert not ((history["method"] == "ind") & (history["quantity"] == "other")).any()  # Ind has no other term
    curves = curve_frame(history).set_index(["method", "output", "quantity", "epoch"])
    offsets = {"net1": 0.0, "net2": 5.0, "avg": 2.5, "ens": 6.0}
    for method in ("ind", "dml"):
        for epoch in (1, 2):
            terms = [HISTORY[(method, s)][epoch - 1][1] for s in range(3)]
            expected = {(o, "accuracy"): [HISTORY[(method, s)][epoch - 1][0] + d for s in range(3)]
                        for o, d in offsets.items()}
            expected[("", "ce")] = [sum(v for k, v in t.items() if k.startswith("ce/")) for t in terms]
            if method == "dml":
                expected[("", "other")] = [sum(v for k, v in t.items() if not k.startswith("ce/")) for t in terms]
            for (output, quantity), ys in expected.items():
                row = curves.loc[(method, output, quantity, epoch)]
                assert row["median"] == pytest.approx(sorted(ys)[1])
                assert (row["min"], row["max"], row["n"]) == (pytest.approx(min(ys)), pytest.approx(max(ys)), 3)
    # spelled out for one point: dml's epoch-1 CE 4.0, 5.0, 2.0 → median 4.0, band 2–5; its KL 0.75, 1.0, 1.0
    assert tuple(curves.loc[("dml", "", "ce", 1)][["median", "min", "max"]]) == pytest.approx((4.0, 2.0, 5.0))
    assert tuple(curves.loc[("dml", "", "other", 1)][["median", "min", "max"]]) == pytest.approx((1.0, 0.75, 1.0))
    assert curves.loc[("ind", "net1", "accuracy", 2)]["median"] == 30.0  # of 30, 20, 40


def test_error_metric_curves_are_100_minus_accuracy(with_history):
    suite, store = with_history
    suite.spec.evaluation.metric = "top1_error"
    curves = curve_frame(history_frame(suite, store.records(suite.cells))).set_index(
        ["method", "output", "quantity", "epoch"])
    assert curves.loc[("ind", "net1", "accuracy", 1)]["median"] == 100.0 - 12.0


def test_curve_files_written_linked_and_byte_identical(with_history, tmp_path):
    suite, store = with_history
    out = tmp_path / "reports"
    paths = write_report(suite, store, out, log=lambda *_: None)
    png, pdf = out / "tiny_curves.png", out / "tiny_curves.pdf"
    assert paths["curves.png"] == png and paths["curves.pdf"] == pdf
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and pdf.read_bytes().startswith(b"%PDF")
    md = paths["md"].read_text()
    assert "## Figures" in md and "![curves](tiny_curves.png)" in md and "(tiny_curves.pdf)" in md
    assert "the cross-entropy terms" in md and "every output (net1, net2, avg, ens" in md
    assert not list(out.glob("tiny_sweep_*"))  # no grid in this suite
    first = png.read_bytes(), pdf.read_bytes()
    write_report(suite, store, out, log=lambda *_: None)
    assert (png.read_bytes(), pdf.read_bytes()) == first  # no dates or software stamps in the files
    assert b"CreationDate" not in first[1]


def test_sweep_figure_has_the_swept_values(tmp_path, write_suite):
    raw = tiny_suite_dict(methods=["ind", {"name": "dml", "temperature": {"grid": [4, 1, 2.5]}}], seeds=[0, 1],
                          table={"rows": ["method"], "columns": ["value"], "values": ["net1", "ens"]})
    suite = load_suite(write_suite(raw))
    store = ResultStore(tmp_path / "results")
    net1 = {"ind": 50.0, "dml[temperature=4]": 60.0, "dml[temperature=1]": 55.0, "dml[temperature=2.5]": 58.0}
    for cell in suite.cells:  # seed 1 is 2 points above seed 0: median = seed 0 + 1
        store.put(fake_record(cell, net1[cell.label] + 2 * cell.seed, 40.0))
    points = swept_points(suite)
    assert points == {"dml[temperature=4]": ("dml", {"temperature": 4.0}),
                      "dml[temperature=1]": ("dml", {"temperature": 1.0}),
                      "dml[temperature=2.5]": ("dml", {"temperature": 2.5})}
    sweep = sweep_frame(trial_frame(suite, store), points, "top1", "median", ["net1", "ens"])
    assert set(sweep["value"]) == {"net1", "ens"} and set(sweep["param"]) == {"temperature"}
    line = sweep[sweep["value"] == "net1"].sort_values("x")
    assert list(line["x"]) == [1.0, 2.5, 4.0]
    assert list(line["y"]) == [56.0, 59.0, 61.0] and list(line["min"]) == [55.0, 58.0, 60.0]
    assert list(line["n"]) == [2, 2, 2]
    ens = sweep[sweep["value"] == "ens"].sort_values("x")  # fake_record's ens = max(net1, net2) + 1
    assert list(ens["y"]) == [57.0, 60.0, 62.0]
    figure = draw_sweep(sweep, "temperature", "top1", "median", "t")
    assert [list(l.get_xdata()) for l in figure.axes[0].lines] == [[1.0, 2.5, 4.0]] * 2
    assert [l.get_label() for l in figure.axes[0].lines] == ["net1", "ens"]

    out = tmp_path / "reports"
    paths = write_report(suite, store, out, log=lambda *_: None)
    png, pdf = out / "tiny_sweep_temperature.png", out / "tiny_sweep_temperature.pdf"
    assert png.read_bytes().startswith(b"\x89PNG") and pdf.read_bytes().startswith(b"%PDF")
    assert "![sweep_temperature](tiny_sweep_temperature.png)" in paths["md"].read_text()
    assert not (out / "tiny_curves.png").exists()  # the fake records have no history


def test_categorical_sweep_keeps_the_grid_order(tmp_path, write_suite):
    raw = tiny_suite_dict(methods=[{"name": "kdcl", "target": {"grid": ["naive", "linear"]}}], seeds=[0],
                          table={"rows": ["method"], "columns": ["value"], "values": ["net1"]})
    suite = load_suite(write_suite(raw))
    store = ResultStore(tmp_path / "results")
    for cell in suite.cells:
        store.put(fake_record(cell, 70.0 if "naive" in cell.label else 72.0, 60.0))
    sweep = sweep_frame(trial_frame(suite, store), swept_points(suite), "top1", "median", ["net1"])
    figure = draw_sweep(sweep, "target", "top1", "median", "t")
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["naive", "linear"]
    assert list(ax.lines[0].get_ydata()) == [70.0, 72.0]


def test_no_history_no_figure_no_error(tmp_path, write_suite):
    suite = load_suite(write_suite(tiny_suite_dict(seeds=[0])))
    store = ResultStore(tmp_path / "results")
    out = tmp_path / "reports"
    md = write_report(suite, store, out, log=lambda *_: None)["md"].read_text()  # nothing finished at all
    assert "Figures" not in md and not list(out.glob("*.png")) and not list(out.glob("*.pdf"))
    for cell in suite.cells:
        store.put(fake_record(cell, 50.0, 52.0))  # finished, without a history
    assert history_frame(suite, store.records(suite.cells)).empty
    assert curve_frame(history_frame(suite, store.records(suite.cells))).empty
    md = write_report(suite, store, out, log=lambda *_: None)["md"].read_text()
    assert "Figures" not in md and not list(out.glob("*.png")) and not list(out.glob("*.pdf"))


def test_a_cost_column_is_not_plotted_as_an_accuracy(tmp_path, write_suite, monkeypatch):
    import harness.reporting.figures as figures
    from harness.reporting.figures import write_figures

    raw = tiny_suite_dict(methods=[{"name": "dml", "temperature": {"grid": [1, 4]}}], seeds=[0],
                          table={"rows": ["method"], "columns": ["value"], "values": ["net1", "params_m"]})
    suite = load_suite(write_suite(raw))
    store = ResultStore(tmp_path / "results")
    for cell in suite.cells:
        store.put({**fake_record(cell, 50.0, 40.0), "params": {"peers": 2_000_000, "added_total": 0}})
    drawn = []
    monkeypatch.setattr(figures, "draw_sweep", lambda sweep, *a, **k: drawn.append(sweep) or draw_sweep(sweep, *a, **k))
    (tmp_path / "out").mkdir()
    write_figures(suite, store, tmp_path / "out")
    assert len(drawn) == 1 and set(drawn[0]["value"]) == {"net1"}
