"""Figures beside a suite's report: per-epoch curves of every method, and the effect of a swept hyper-parameter.

- ``<suite>_curves.png/.pdf``: for each peer group (one row of panels, as in TSB Fig. 5), per epoch and method,
  from the records' ``history``: the test accuracy of every output the table shows for the method (the suite's
  metric; net1, net2, avg, ens…, one line style each), the cross-entropy terms (``loss/ce/*``, summed: the one
  loss every method has, so the methods compare) and, apart, every other term (distillation, adversarial, feature
  terms, summed).  The median over seeds is a line (a marker per method, so that identical curves stay visible),
  the min–max over seeds a band.
- ``<suite>_sweep_<param>.png/.pdf``: for a method entry with a ``{grid: [...]}`` hyper-parameter (labels such
  as ``dml[temperature=3]``), the suite's aggregate over seeds of each table output against the swept value,
  one line per group and output (TSB Fig. 3's β, KDCL Table 9's λ); the band is the min–max over seeds.

The data behind each figure comes from pure functions returning DataFrames (:func:`history_frame`,
:func:`curve_frame`, :func:`sweep_frame`), drawn apart.  Drawing uses matplotlib's ``Figure`` with the Agg
canvas (no pyplot, no display, no global backend switch) under matplotlib's default style with fixed sizes,
and files carry no dates or software stamp, so the same records give byte-identical files.  Nothing is drawn
(and nothing is said) where there is no data.
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.reporting.frames import COST_VALUES, epoch_text, metric_value, trial_frame
from harness.results.store import ResultStore
from harness.suite.schema import Suite

CURVE_KEYS = ["dataset", "group", "method", "output", "quantity", "epoch"]
QUANTITIES = (("accuracy", "test {metric} (%)"), ("ce", "cross-entropy terms"), ("other", "other loss terms"))
LINE_STYLES = {"net1": "-", "net2": "--", "avg": "-.", "ens": ":"}  # netK beyond: the cycle below
MORE_STYLES = ((0, (5, 1, 1, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 2)), (0, (6, 2)))
MARKERS = "osD^vP*Xph"
SWEEP_AGGREGATES = ("median", "mean", "min", "max")  # "std" or "n" of a sweep point is no accuracy: median then
STYLE = {"font.family": "DejaVu Sans", "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9,
         "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8, "figure.dpi": 100,
         "savefig.dpi": 150, "lines.linewidth": 1.4, "axes.grid": True, "grid.alpha": 0.3}
NO_STAMP = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Creator": None, "Producer": None}}


@dataclass
class Figure:
    """A written figure: its name in the report, the caption, and the two files."""

    name: str
    caption: str
    png: Path
    pdf: Path


# ------------------------------------------------------------------------------------------------ data
def curve_outputs(suite: Suite, label: str, history: list[dict]) -> list[str]:
    """The outputs whose accuracy a method's curves show: those the table shows for it that were evaluated."""
    table = suite.spec.table
    evaluated = {key.split("/", 1)[1] for row in history for key in row if key.startswith("top1/")}
    return [value for value in dict.fromkeys(table.values)
            if value in evaluated and table.shows({"method": label, "value": value})]


def _metric(row: dict, metric: str, output: str | None) -> float:
    """The suite's metric of one history row (an error is 100 − accuracy); NaN where it was not evaluated."""

    base = metric.removesuffix("_error")
    key = f"{base}/{output}"
    if output is None or key not in row:
        return math.nan
    return metric_value({base: row[key]}, metric)


HISTORY_COLUMNS = ["dataset", "group", "method", "output", "seed", "epoch", "quantity", "y"]


def history_frame(suite: Suite, records: dict[str, dict]) -> pd.DataFrame:
    """Per (finished cell, epoch): one row per output with its test metric (quantity ``accuracy``), one with the
    summed cross-entropy terms (``ce``) and one with every other loss term summed (``other``; absent where a
    method has none), the losses with output ``""``."""
    metric = suite.spec.evaluation.metric
    rows = []
    for cell in suite.cells:
        record = records.get(cell.hash)
        if record is None or record.get("status") != "ok" or not record.get("history"):
            continue
        outputs = curve_outputs(suite, cell.label, record["history"])
        where = {"dataset": cell.dataset["name"], "group": cell.row_name, "method": cell.label, "seed": cell.seed}
        for row in record["history"]:
            epoch = int(row["epoch"])
            for output in outputs:
                rows.append({**where, "output": output, "epoch": epoch, "quantity": "accuracy",
                             "y": _metric(row, metric, output)})
            terms = {k: v for k, v in row.items() if k.startswith("loss/")}
            ce = [v for k, v in terms.items() if k.startswith("loss/ce/") or k == "loss/ce"]
            other = [v for k, v in terms.items() if not (k.startswith("loss/ce/") or k == "loss/ce")]
            for quantity, values in (("ce", ce), ("other", other)):
                if values:
                    rows.append({**where, "output": "", "epoch": epoch, "quantity": quantity, "y": sum(values)})
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def curve_frame(history: pd.DataFrame) -> pd.DataFrame:
    """Median, min and max over seeds per (dataset, group, method, output, quantity, epoch).

    ``n`` counts the seeds that reached the epoch (a seed may stop earlier)."""
    long = history.dropna(subset=["y"])
    stats = long.groupby(CURVE_KEYS, sort=False)["y"].agg(["median", "min", "max", "count"]).reset_index()
    return stats.rename(columns={"count": "n"})  # in the suite's order of groups and methods


def swept_points(suite: Suite) -> dict[str, tuple[str, dict]]:
    """label → (label without the sweep, {swept hyper-parameter: its value}) for the grid points of a suite.

    A grid point's label is ``<label>[k=v,...]`` (``suite._method_entries``); the values are taken from the
    cell's hyper-parameters, so that numbers stay numbers."""
    points = {}
    for cell in suite.cells:
        label = cell.label
        if not label.endswith("]") or "[" not in label:
            continue
        base, inner = label[:-1].split("[", 1)
        names = [part.split("=", 1)[0] for part in inner.split(",")]
        if names and all(name in cell.hparams for name in names):
            points[label] = (base, {name: _plottable(cell.hparams[name]) for name in names})
    return points


def _plottable(value):
    """A swept value as a point on an axis: numbers and names as they are, anything else (a list) as text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def sweep_frame(trials: pd.DataFrame, points: dict[str, tuple[str, dict]], metric: str, how: str,
                values: list[str]) -> pd.DataFrame:
    """The aggregate over seeds of each (swept method, group, output) against each swept hyper-parameter.

    ``trials``: :func:`harness.reporting.frames.trial_frame`'s rows (one per finished cell and output).  One row per
    (param, method, fixed, dataset, group, value, x): ``method`` is the label without the sweep, ``fixed`` the
    other swept hyper-parameters of the point (``""`` for a one-dimensional sweep), ``y`` the aggregate."""
    how = how if how in SWEEP_AGGREGATES else "median"
    columns = ["param", "method", "fixed", "dataset", "group", "value", "x", "y", "min", "max", "n"]
    rows = []
    swept = trials[trials["method"].isin(list(points)) & trials["value"].isin(values)]
    for (label, dataset, group, value), seeds in swept.groupby(["method", "dataset", "group", "value"], sort=False):
        base, hparams = points[label]
        for param, x in hparams.items():
            fixed = ",".join(f"{k}={v}" for k, v in hparams.items() if k != param)
            ys = seeds[metric]
            rows.append({"param": param, "method": base, "fixed": fixed, "dataset": dataset, "group": group,
                         "value": value, "x": x, "y": float(ys.agg(how)), "min": float(ys.min()),
                         "max": float(ys.max()), "n": len(ys)})
    rows.sort(key=lambda row: values.index(row["value"]))  # lines in the table's order of outputs
    return pd.DataFrame(rows, columns=columns)


# ------------------------------------------------------------------------------------------------ drawing
def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    figure = MplFigure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _colors(keys: list) -> dict:
    """A fixed color per key, in the suite's order, so a method keeps its color across panels and figures."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(keys) <= 10 else "tab20"].colors
    return {key: palette[i % len(palette)] for i, key in enumerate(keys)}


def _save(figure, out_dir: Path, stem: str) -> tuple[Path, Path]:
    paths = out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"
    for path, fmt in zip(paths, ("png", "pdf")):
        figure.savefig(path, format=fmt, metadata=NO_STAMP[fmt])
    return paths


def _line_style(output: str, outputs: list[str]):
    if output in LINE_STYLES:
        return LINE_STYLES[output]
    return MORE_STYLES[outputs.index(output) % len(MORE_STYLES)] if output in outputs else "-"


def draw_curves(curves: pd.DataFrame, methods: list[str], metric: str, title: str):
    """Rows of panels, one per (dataset, group): the accuracy of every output, the cross-entropy terms and the
    other loss terms per epoch.  A method has one color and marker in every panel, an output one line style."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    panels = list(dict.fromkeys(zip(curves["dataset"], curves["group"])))
    several_datasets = len({d for d, _ in panels}) > 1
    quantities = [(q, label.format(metric=metric)) for q, label in QUANTITIES if (curves["quantity"] == q).any()]
    figure = _new_figure(4.2 * len(quantities) + 2.0, 0.6 + 2.8 * len(panels))
    axes = figure.subplots(len(panels), len(quantities), squeeze=False)
    colors = _colors(methods)
    markers = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(methods)}
    outputs = [o for o in dict.fromkeys(curves.loc[curves["quantity"] == "accuracy", "output"]) if o]
    drawn_methods = []
    for (dataset, group), row in zip(panels, axes):
        where = f"{dataset} / {group}" if several_datasets else group
        for ax, (quantity, ylabel) in zip(row, quantities):
            data = curves[(curves["dataset"] == dataset) & (curves["group"] == group)
                          & (curves["quantity"] == quantity)]
            for method in methods:
                for output in dict.fromkeys(data.loc[data["method"] == method, "output"]):
                    line = data[(data["method"] == method) & (data["output"] == output)].sort_values(
                        "epoch", kind="stable")
                    ax.plot(line["epoch"], line["median"], color=colors[method], marker=markers[method],
                            markersize=3.5, markevery=max(1, len(line) // 8), linestyle=_line_style(output, outputs))
                    if (line["n"] > 1).any():
                        ax.fill_between(line["epoch"], line["min"], line["max"], color=colors[method], alpha=0.12,
                                        linewidth=0)
                    if method not in drawn_methods:
                        drawn_methods.append(method)
            ax.set_title(where)
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    legend = [Line2D([], [], color=colors[m], marker=markers[m], markersize=3.5, label=m)
              for m in methods if m in drawn_methods]
    legend += [Line2D([], [], color="0.3", linestyle=_line_style(o, outputs), label=o) for o in outputs]
    figure.legend(handles=legend, loc="outside right upper")  # one legend: methods by color, outputs by style
    figure.suptitle(textwrap.fill(title, 110))
    return figure


def draw_sweep(sweep: pd.DataFrame, param: str, metric: str, how: str, title: str):
    """The aggregate against the swept value, one line per (method, other swept values, group, output)."""
    figure = _new_figure(8.0, 4.0)
    ax = figure.subplots()
    line_keys = ["method", "fixed", "dataset", "group", "value"]
    varying = [k for k in line_keys if sweep[k].nunique() > 1]  # only what tells the lines apart goes in the legend
    grouped = sweep.groupby(line_keys, sort=False)
    colors = _colors(list(grouped.groups))
    numeric = pd.api.types.is_numeric_dtype(sweep["x"]) and not pd.api.types.is_bool_dtype(sweep["x"])
    categories = list(dict.fromkeys(sweep["x"]))
    for key, line in grouped:
        if numeric:
            line = line.sort_values("x", kind="stable")
            xs = line["x"].astype(float)
        else:
            xs = line["x"].map(categories.index)
        label = " / ".join(str(part) for k, part in zip(line_keys, key) if k in varying) or str(key[-1])
        ax.plot(xs, line["y"], marker="o", color=colors[key], label=label)
        if (line["n"] > 1).any():
            ax.fill_between(xs, line["min"], line["max"], color=colors[key], alpha=0.15, linewidth=0)
    if not numeric:
        ax.set_xticks(range(len(categories)), [str(c) for c in categories])
    elif len(categories) <= 12:
        ax.set_xticks(sorted(float(x) for x in categories))  # a tick at every swept value
    ax.set_xlabel(param)
    ax.set_ylabel(f"{metric} (%), {how} over seeds")
    figure.legend(loc="outside right upper")
    ax.set_title(textwrap.fill(title, 70))
    return figure


# ------------------------------------------------------------------------------------------------ report
def write_figures(suite: Suite, store: ResultStore, out_dir: str | Path, trials: pd.DataFrame | None = None,
                  records: dict[str, dict] | None = None) -> list[Figure]:
    """Write the suite's figures that have data into ``out_dir``; ``trials`` and ``records``: the report's trial
    frame and the records it read (read again when not given)."""
    import matplotlib

    out_dir = Path(out_dir)
    spec, figures = suite.spec, []
    metric, how = spec.evaluation.metric, spec.evaluation.aggregate
    with matplotlib.rc_context():
        matplotlib.rcdefaults()  # a user's matplotlibrc must not change the files
        matplotlib.rcParams.update(STYLE)
        records = store.records(suite.cells) if records is None else records
        history = history_frame(suite, records)
        curves = curve_frame(history)
        if not curves.empty:
            outputs = ", ".join(o for o in dict.fromkeys(history["output"].dropna()) if o)
            figure = draw_curves(curves, suite.labels(), metric, spec.title or spec.name)
            png, pdf = _save(figure, out_dir, f"{suite.name}_curves")
            figures.append(Figure(
                "curves", f"Per-epoch test {metric} of every output ({outputs}; one line style each), the "
                "cross-entropy terms (summed over the peers: the loss every method has) and, apart, all the other "
                "loss terms a trial logged (distillation, adversarial, feature terms), each averaged over the "
                "epoch's batches; median over seeds with the min–max band, one color and marker per method.",
                png, pdf))
        if trials is None:

            trials = trial_frame(suite, store, records)

        accuracies = [v for v in spec.table.values if v not in COST_VALUES]  # a cost is no accuracy to plot
        sweep = sweep_frame(trials, swept_points(suite), metric, how, accuracies)
        shown = how if how in SWEEP_AGGREGATES else "median"
        for param in dict.fromkeys(sweep["param"]):
            data = sweep[sweep["param"] == param]
            figure = draw_sweep(data, param, metric, shown, f"{spec.title or spec.name}: effect of {param}")
            png, pdf = _save(figure, out_dir, f"{suite.name}_sweep_{param}")
            when = epoch_text(suite, spec.evaluation.epochs()[0])
            figures.append(Figure(f"sweep_{param}", f"{metric} at the {when} against "
                                  f"{param}: {shown} over seeds, band = min–max.", png, pdf))
    return figures


def figures_markdown(figures: list[Figure]) -> str:
    """The report's "Figures" section (image links relative to the report), or nothing without figures."""
    if not figures:
        return ""
    parts = ["\n## Figures\n"]
    for figure in figures:
        parts.append(f"\n![{figure.name}]({figure.png.name})\n\n{figure.caption} [PDF]({figure.pdf.name})\n")
    return "".join(parts)
