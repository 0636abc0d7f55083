"""The Markdown and LaTeX of a report with known inputs, against stored snapshots; the LaTeX compiles where a
TeX engine is installed.  After an intended change of the report's look: UPDATE_SNAPSHOTS=1 pytest this file,
then read the diff of tests/snapshots/ before committing it."""
import os
import shutil
import subprocess

import pytest

from harness.reporting.report import build_table, render
from harness.results.store import ResultStore
from harness.suite.schema import load_suite
from tests.helpers import fake_record, tiny_suite_dict

SNAPSHOTS = os.path.join(os.path.dirname(__file__), "snapshots")
ACCS = {("ind", 0): (70.0, 68.5), ("ind", 1): (70.4, 69.1), ("dml", 0): (72.9, 70.0), ("dml", 1): (72.7, 70.6),
        ("kdcl", 0): (71.9, 69.0), ("kdcl", 1): (70.1, 70.2)}


def render_snapshot(tmp_path, write_suite, **table) -> dict[str, str]:
    """The snapshot suite's report (``table``: its table settings, e.g. a paper layout)."""
    raw = tiny_suite_dict(name="snapshot", title="TSB Table 1 layout, snapshot test (fake numbers)",
                          groups=[["cifar_resnet32", "cifar_resnet32"]], seeds=[0, 1],
                          methods=["ind", "dml", {"name": "kdcl", "target": "naive"}],
                          paper_table={"name": "tsb_table1_cifar100"}, **({"table": table} if table else {}))
    suite = load_suite(write_suite(raw, f"snapshot_{'_'.join(map(str, table.values()))}.yaml"))
    store = ResultStore(tmp_path / "results")
    for cell in suite.cells:
        store.put(fake_record(cell, *ACCS[(cell.label, cell.seed)]))
    texts = render(build_table(suite, store), suite, store)
    return {ext: text.replace(str(tmp_path), "<tmp>") for ext, text in texts.items()}


@pytest.fixture
def rendered(tmp_path, write_suite):
    """The default layout: "ours (paper, Δ)" in 12 columns is wider than a page, so a paper row under ours."""
    return render_snapshot(tmp_path, write_suite)


@pytest.fixture
def inline(tmp_path, write_suite):
    return render_snapshot(tmp_path, write_suite, paper_layout="inline")


@pytest.mark.parametrize("ext", ["md", "tex"])
def test_report_matches_snapshot(rendered, ext):
    path = os.path.join(SNAPSHOTS, f"report.{ext}")
    if os.environ.get("UPDATE_SNAPSHOTS"):
        with open(path, "w") as f:
            f.write(rendered[ext])
    with open(path) as f:
        assert rendered[ext] == f.read()


def test_best_method_is_bold_per_value(rendered):
    md = rendered["md"]
    # net1 medians: ind 70.2, dml 72.8 (sd 0.14), kdcl 71.0 (sd 1.27) -> dml, by 1.8 > 1.27; avg: dml 71.55;
    # ens, max(net1, net2) + 1 per seed: dml 73.8 over kdcl 72.05 (sd 1.2)
    assert "**72.80**" in md and "**71.55**" in md and "**73.80**" in md
    # net2: dml 70.3 over kdcl 69.6 (sd 0.85): within the spread, no bold
    assert md.count("**") == 2 * 3 and "1 comparison(s) have no bold" in md
    assert "\\textbf{72.80}" in rendered["tex"]


NO_TEX = pytest.mark.skipif(not shutil.which("pdflatex"), reason="no TeX engine installed (.ci/run installs Debian's "
                            "texlive-latex-base and texlive-latex-recommended with apt-get where it can)")


def compile_latex(tmp_path, body: str) -> str:
    """``body`` in an article with booktabs and graphicx, through pdflatex: its log (the test fails on an error)."""
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n\\begin{document}\n"
                   + body + "\n\\end{document}\n")
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:]
    return (tmp_path / "doc.log").read_text(errors="replace")


@NO_TEX
@pytest.mark.parametrize("layout", ["auto", "inline", "columns", "rows"])
def test_latex_compiles_and_fits_the_page(layout, tmp_path, write_suite):
    rendered = render_snapshot(tmp_path, write_suite, **({} if layout == "auto" else {"paper_layout": layout}))
    assert "Overfull \\hbox" not in compile_latex(tmp_path, rendered["tex"])


@NO_TEX
@pytest.mark.slow
def test_every_shipped_suites_latex_skeleton_compiles_without_an_overfull_box(tmp_path):
    """Each shipped suite's report before any cell finished (its paper's numbers, our cells empty), set as a paper
    sets it: one pdflatex run over all of them, no error, no overfull box, nothing shrunk below 80 %."""
    from pathlib import Path

    from tests.helpers import shipped_suite

    from harness.reporting.latex import MIN_SCALE, TEXT_WIDTH_PT, latex_parts, part_width

    store = ResultStore(tmp_path / "empty")
    tables = []
    for path in sorted((Path(__file__).parents[1] / "suites").glob("*.yaml")):
        suite = shipped_suite(path)
        table = build_table(suite, store)
        assert all(part_width(table, part) <= TEXT_WIDTH_PT / MIN_SCALE for part in latex_parts(table)), path.name
        tables.append(render(table, suite, store)["tex"] + "\n\\clearpage\n")
    log = compile_latex(tmp_path, "\n".join(tables))
    assert "Overfull \\hbox" not in log and len(tables) >= 50


def test_a_wide_table_is_scaled_to_the_text_width_and_a_narrow_one_is_not(inline, tmp_path, write_suite):
    """The snapshot's 12 columns of "ours (paper, Δ)" are wider than a page (estimated from its characters): a
    table* scaled to the text width; one method's two numbers without the paper are not touched."""
    from harness.reporting.latex import TEXT_WIDTH_PT, latex_width

    assert "\\resizebox{\\textwidth}{!}{%" in inline["tex"] and "\\begin{table*}" in inline["tex"]
    raw = tiny_suite_dict(seeds=[0], methods=["ind"], table={"rows": ["group"], "columns": ["method", "value"],
                                                             "values": ["net1", "net2"]})
    suite = load_suite(write_suite(raw, "narrow.yaml"))
    store = ResultStore(tmp_path / "narrow")
    for cell in suite.cells:
        store.put(fake_record(cell, 70.0, 69.0))
    table = build_table(suite, store)
    tex = render(table, suite, store)["tex"]
    assert latex_width(table) < TEXT_WIDTH_PT and "resizebox" not in tex and "\\begin{table}[t]" in tex


def test_the_latex_names_networks_as_papers_do_and_typesets_minus_signs(inline):
    body = inline["tex"].split("\\midrule", 1)[1]
    assert body.lstrip().startswith("ResNet-32 + ResNet-32 &") and "cifar" not in body
    assert "(71.15, $-$0.85)" in body and ", -0" not in body and "(68.99, +1.21)" in body


def body_rows(text: str, start: str) -> list[list[str]]:
    """The cells of a LaTeX tabular's body (after \\midrule) or a Markdown table's rows (after its rule)."""
    if start == "tex":  # a table set in stacked parts: each row's cells from every part, in order
        rows: list[list[str]] = []
        for part in text.split("\\midrule")[1:]:
            lines = part.split("\\bottomrule", 1)[0].strip().splitlines()
            cells = [[c.strip() for c in line.removesuffix("\\\\").split("&")] for line in lines]
            rows = cells if not rows else [r + c[1:] for r, c in zip(rows, cells)]
        return rows
    lines = [line for line in text.splitlines() if line.startswith("|")][2:]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def test_the_paper_layouts_put_the_same_numbers_inline_in_adjacent_columns_or_rows(tmp_path, write_suite, inline):
    """Every layout shows the same three numbers per entry: ours, the paper's, and Δ; bold stays on ours."""
    columns = render_snapshot(tmp_path, write_suite, paper_layout="columns")
    rows = render_snapshot(tmp_path, write_suite, paper_layout="rows")
    default = render_snapshot(tmp_path, write_suite)
    assert default == rows  # the inline table is wider than a page: "auto" chose rows
    # DML's net2 in each: ours 70.30, paper 71.15, Δ −0.85
    assert "70.30 (71.15, -0.85)" in body_rows(inline["md"], "md")[0]
    cols = body_rows(columns["md"], "md")[0]
    header = [h.strip() for h in columns["md"].split("\n| ", 1)[1].split("\n")[0].split("|")]
    at = header.index("dml net2 ours") + 1  # + the label column
    assert cols[at - 1:at + 2] == ["70.30", "71.15", "-0.85"] and header[at:at + 2] == ["dml net2 paper", "dml net2 Δ"]
    ours, paper, delta = body_rows(rows["md"], "md")
    assert (ours[6], paper[6], delta[6]) == ("70.30", "71.15", "-0.85") and paper[0] == "(paper)"
    assert ours[5] == "**72.80**" and paper[5] == "71.20"  # bold marks ours, never the paper's number
    tex_ours, tex_paper, tex_delta = body_rows(rows["tex"], "tex")
    assert tex_ours[6] == "70.30" and tex_paper[:1] == ["\\quad paper"] and tex_delta[6] == "$-$0.85"
    assert "ours & paper & $\\Delta$" in columns["tex"] and "$\\Delta$: ours $-$ paper" in columns["tex"]


def test_rows_are_about_half_as_wide_as_inline_and_without_delta_the_cells_are_shorter(tmp_path, write_suite):
    from harness.reporting.latex import latex_width

    widths = {}
    for layout in ("inline", "columns", "rows"):
        raw = tiny_suite_dict(groups=[["cifar_resnet32", "cifar_resnet32"]], seeds=[0], methods=["ind", "dml"],
                              paper_table={"name": "tsb_table1_cifar100"}, table={"paper_layout": layout})
        suite = load_suite(write_suite(raw, f"{layout}.yaml"))
        store = ResultStore(tmp_path / layout)
        for cell in suite.cells:
            store.put(fake_record(cell, 70.0, 69.0))
        widths[layout] = latex_width(build_table(suite, store))
    assert widths["rows"] < 0.6 * widths["inline"] < widths["columns"]
    no_delta = render_snapshot(tmp_path, write_suite, paper_layout="rows", paper_delta=False)
    assert len(body_rows(no_delta["md"], "md")) == 2 and "Δ" not in no_delta["md"].split("Top-1")[0]
