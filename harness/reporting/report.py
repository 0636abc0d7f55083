"""``harness report``: aggregate finished cells over seeds into the suite's table layout, beside the paper.

Writes ``<suite>.md`` (Markdown), ``<suite>.tex`` (LaTeX, booktabs) and ``<suite>.csv`` (one row per trial
and value: the hash, seed, code version and hardware behind every aggregated number).
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from jinja2 import Environment, FileSystemLoader
from tabulate import tabulate

from harness.data.fingerprint import describe as describe_fingerprint
from harness.models.zoo import init_notes
from harness.papers.tables import load_paper_table, paper_lookup
from harness.reporting.frames import COST_VALUES, epoch_text, report_cells, stage_value_cells, trial_frame
from harness.reporting.latex import (TEXT_WIDTH_PT, _latex_escape, _latex_header_rows, _latex_minus, latex_parts,
                                     latex_width, paper_style, part_width)
from harness.results.store import ResultStore
from harness.suite.schema import Suite
from harness.training.method import load_methods

TEMPLATES = Path(__file__).with_name("templates")
METRIC_TEXT = {"top1": "Top-1 test accuracy", "top5": "Top-5 test accuracy", "top1_error": "Top-1 test error",
               "top5_error": "Top-5 test error"}
# flags of a paper table's row -> the mark its number gets and the footnote saying why
PAPER_MARKS = (("copied_from", "†", "copied by the paper from {}"),
               ("reconstructed", "‡", "rebuilt from a garbled line of the paper (see the paper table's notes)"))
MISSING = "—"  # no finished trial yet (not run, running or failed)
NOT_APPLICABLE = "n/a"  # the cell's trials finished but the method has no such output (e.g. a teacher)
# the parts of a cell that ``table.paper_layout: columns|rows`` puts side by side or one under the other
OURS, PAPER, DELTA = "ours", "paper", "Δ"
PART_AXIS = "source"  # the name of that extra axis in headers


@dataclass
class Entry:
    """One table cell: our aggregate over ``n`` seeds, and the paper's number where the suite names one."""

    ours: float | None
    n: int
    paper: float | None = None
    applicable: bool = True
    spread: float | None = None  # standard deviation over the seeds (None: fewer than two)
    paper_mark: str = ""  # † the paper copied its number from elsewhere, ‡ rebuilt from garbled text (footnotes)

    @property
    def delta(self) -> float | None:
        return None if self.ours is None or self.paper is None else self.ours - self.paper

    def text(self, with_paper: bool, spread: bool = False, with_n: bool = False, delta: bool = True) -> str:
        ours = (MISSING if self.applicable else NOT_APPLICABLE) if self.ours is None else f"{self.ours:.2f}"
        if self.ours is not None and spread and self.spread is not None:
            ours += f" ± {self.spread:.2f}"
        if self.ours is not None and with_n:
            ours += f" (n={self.n})"
        if not with_paper:
            return ours
        paper = MISSING if self.paper is None else f"{self.paper:.2f}{self.paper_mark}"
        shown = "" if self.delta is None or not delta else f", {self.delta:+.2f}"
        return f"{ours} ({paper}{shown})"

    def part_text(self, part: str, spread: bool, with_n: bool) -> str:
        """One part of the cell where the layout puts ours, the paper's and Δ apart."""
        if part == PAPER:
            return MISSING if self.paper is None else f"{self.paper:.2f}{self.paper_mark}"
        if part == DELTA:
            return MISSING if self.delta is None else f"{self.delta:+.2f}"
        return self.text(False, spread, with_n)


@dataclass
class Table:
    title: str
    row_keys: list[str]
    column_keys: list[str]
    rows: list[tuple]
    columns: list[tuple]
    entries: dict[tuple[tuple, tuple], Entry]
    with_paper: bool
    trials: pd.DataFrame
    best: set = field(default_factory=set)  # (row, column) keys of the best value among the methods compared
    records: dict = field(default_factory=dict)  # the records read for it, by hash (read once per report)
    epoch_text: str = "last epoch"  # which epoch it shows, in words
    footnotes: dict = field(default_factory=dict)  # mark -> what it means here (the papers' copied numbers)
    within_spread: set = field(default_factory=set)  # contests not bolded: the best within the seeds' spread
    show_spread: bool = False  # ``evaluation.spread``: ± the standard deviation over seeds
    paper_delta: bool = True  # ``table.paper_delta``: ours − paper beside the paper's number
    paper_layout: str = "inline"  # ``table.paper_layout``: the paper's number in our cell, or its own column/row
    row_names: dict = field(default_factory=dict)  # row key -> its name as the papers print it (Teacher, KD, ...)

    def parts(self, side: str) -> tuple:
        """The parts each row or column ("rows"/"columns") is split into: (None,) where a cell holds them all."""
        if not self.with_paper or self.paper_layout != side:
            return (None,)
        return (OURS, PAPER, DELTA) if self.paper_delta else (OURS, PAPER)

    def shown_columns(self) -> list[tuple]:
        """The printed columns: each column key, with its part (ours, paper, Δ) appended in the columns layout."""
        return [c + ((p,) if p else ()) for c in self.columns for p in self.parts("columns")]

    def shown_column_keys(self) -> list[str]:
        return self.column_keys + ([PART_AXIS] if self.parts("columns") != (None,) else [])

    def header(self) -> list[str]:
        return [" / ".join(self.row_keys)] + [" ".join(map(str, c)) for c in self.shown_columns()]

    def body(self, style: str = "plain") -> list[list[str]]:
        """Cell texts; ``style`` "md" or "tex" marks the best values in bold (and escapes for LaTeX)."""
        n_min, n_max = self.n_range()
        split = self.parts("columns") != (None,)

        def cell(r, row_part, shown) -> str:
            c, column_part = (shown[:-1], shown[-1]) if split else (shown, None)
            part = row_part or column_part
            entry, with_n = self.entries[(r, c)], self.show_spread and n_min != n_max
            text = entry.text(self.with_paper, self.show_spread, with_n, self.paper_delta) if part is None \
                else entry.part_text(part, self.show_spread, with_n)
            if style == "tex":
                text = _latex_minus(_latex_escape(text))
            if (r, c) in self.best and style != "plain" and part in (None, OURS):
                ours, _, rest = text.partition(" ")
                text = (f"**{ours}**" if style == "md" else f"\\textbf{{{ours}}}") + (f" {rest}" if rest else "")
            return text

        def label(r, part) -> str:
            if part not in (None, OURS):  # the paper's row under ours
                return f"({'ours − paper' if part == DELTA else part})" if style != "tex" else \
                    ("\\quad " + ("$\\Delta$" if part == DELTA else part))
            if r in self.row_names:
                return _latex_escape(self.row_names[r]) if style == "tex" else self.row_names[r]
            if style != "tex":
                return " / ".join(map(str, r))
            return _latex_escape(" / ".join(paper_style(k, v) for k, v in zip(self.row_keys, r)))

        return [[label(r, p)] + [cell(r, p, c) for c in self.shown_columns()]
                for r in self.rows for p in self.parts("rows")]

    def n_range(self) -> tuple[int, int]:
        ns = [e.n for e in self.entries.values() if e.applicable]
        return (min(ns), max(ns)) if ns else (0, 0)

    def has_missing(self) -> bool:
        return any(e.ours is None and e.applicable for e in self.entries.values())

    def has_not_applicable(self) -> bool:
        return any(not e.applicable for e in self.entries.values())


def best_entries(entries: dict, rows: list[tuple], columns: list[tuple], row_keys: list[str],
                 column_keys: list[str], lower_is_better: bool, excluded: set[str]) -> tuple[set, set]:
    """The (row, column) keys holding the best of ours among entries that differ only in their method, as the
    papers bold the best method; ties are all bold; ``excluded`` ("method/value") never compete (a teacher), nor
    do costs (parameters, multiply-adds).  The best is bold only where it stands out from the seeds: it beats the
    runner-up by more than the larger of their standard deviations over seeds (where both have two seeds or
    more; a single seed has no spread to compare with, and is bold as the papers bold)."""
    def where(r, c) -> dict:
        return {**dict(zip(row_keys, r)), **dict(zip(column_keys, c))}

    contests: dict[tuple, list] = {}
    within: set = set()  # contests whose best did not stand out (their runner-up's key)
    for r in rows:
        for c in columns:
            w = where(r, c)
            entry = entries[(r, c)]
            if entry.ours is None or f"{w.get('method')}/{w.get('value')}" in excluded or w.get("value") in COST_VALUES:
                continue
            key = tuple(sorted((k, v) for k, v in w.items() if k != "method"))
            contests.setdefault(key, []).append(((r, c), entry.ours))
    best = set()
    for contenders in contests.values():
        if len(contenders) < 2:
            continue
        top = (min if lower_is_better else max)(v for _, v in contenders)
        winners = {k for k, v in contenders if round(v, 2) == round(top, 2)}
        if len(winners) == len(contenders):  # when every method ties, none is best
            continue
        rest = [(k, v) for k, v in contenders if k not in winners]
        runner_key, runner = min(rest, key=lambda kv: abs(kv[1] - top))
        spreads = [entries[k].spread for k in [*winners, runner_key]]
        if all(s is not None for s in spreads) and abs(top - runner) <= max(spreads):
            within.add(runner_key)  # within the seeds' spread: no method stands out
            continue
        best |= winners
    return best, within


def add_gains(stats: pd.Series, counts: pd.Series, gains: dict) -> tuple[pd.Series, pd.Series]:
    """Derived values (the papers' "gain" columns): Σ over ``of`` of (a method's aggregate − the reference
    method's), per dataset and group; AMLN's ↑ is ``of: [avg]``, KDCL's gain ``of: [net1, net2]``."""
    if not gains or stats.empty:
        return stats, counts
    extra, extra_n = {}, {}
    for name, gain in gains.items():
        for dataset, group, method in {k[:3] for k in stats.index}:
            parts = [(dataset, group, method, v) for v in gain.of]
            refs = [(dataset, group, gain.reference_of(method), v) for v in gain.of]
            if gain.is_reference(method) or not all(k in stats.index for k in parts + refs):
                continue
            extra[(dataset, group, method, name)] = sum(stats[p] - stats[r] for p, r in zip(parts, refs))
            extra_n[(dataset, group, method, name)] = int(min(counts[p] for p in parts))
    if not extra:
        return stats, counts
    return (pd.concat([stats, pd.Series(extra).rename_axis(stats.index.names)]),
            pd.concat([counts, pd.Series(extra_n).rename_axis(counts.index.names)]))


def build_table(suite: Suite, store: ResultStore, epoch: str | None = None, records: dict | None = None) -> Table:
    """The table at one choice of ``evaluation.epoch`` (the first by default)."""
    spec = suite.spec
    metric, how = spec.evaluation.metric, spec.evaluation.aggregate
    epoch = epoch or spec.evaluation.epochs()[0]
    records = store.records(report_cells(suite)) if records is None else records
    trials = trial_frame(suite, store, records, epoch)
    keys = ["dataset", "group", "method", "value"]
    grouped = trials.groupby(keys)[metric]
    stats = grouped.size() if how == "n" else grouped.agg(how)
    counts = grouped.size()
    spreads = grouped.std()  # NaN where a value has one seed
    finished = set(trials[keys[:-1]].itertuples(index=False, name=None))
    stats, counts = add_gains(stats, counts, spec.table.gains)
    axis_values = {
        "dataset": [spec.dataset.name],
        "group": list(dict.fromkeys(c.row_name for c in suite.cells)),
        "method": suite.labels(),
        "value": spec.table.values,
    }
    paper = load_paper_table(spec.paper_table.name) if spec.paper_table else None
    groups = {c.row_name: c.row or c.group for c in suite.cells}
    rows = [r for r in itertools.product(*(axis_values[k] for k in spec.table.rows))
            if spec.table.shows(dict(zip(spec.table.rows, r)))]
    columns = [c for c in itertools.product(*(axis_values[k] for k in spec.table.columns))
               if spec.table.shows(dict(zip(spec.table.columns, c)))]
    entries, footnotes = {}, {}
    stage_entries = stage_value_cells(suite)  # a stage not finished yet is missing, not "n/a"
    for r, c in itertools.product(rows, columns):
        where = {**dict(zip(spec.table.rows, r)), **dict(zip(spec.table.columns, c))}
        for axis, choices in axis_values.items():  # an axis that is neither row nor column has one entry
            where.setdefault(axis, choices[0])
        key = tuple(where[k] for k in keys)
        spread = spreads.get(key) if key in spreads.index else None
        entry = Entry(float(stats[key]) if key in stats.index else None, int(counts.get(key, 0)),
                      applicable=key in stats.index or key[:-1] not in finished or key[1:] in stage_entries,
                      spread=None if spread is None or pd.isna(spread) else float(spread))
        if paper is not None:
            ref = spec.paper_table
            entry.paper, row = paper_lookup(paper, ref.group_of(where["method"]) or groups[where["group"]],
                                            where["method"], where["value"],
                                            ref.nets, ref.methods, ref.eval, ref.value_keys, ref.match)
            for flag, mark, text in PAPER_MARKS:
                if entry.paper is not None and row.get(flag):
                    entry.paper_mark += mark
                    notes = footnotes.setdefault(mark, [])
                    if text.format(row[flag]) not in notes:
                        notes.append(text.format(row[flag]))
        entries[(r, c)] = entry
    when = epoch_text(suite, epoch)
    title = f"{spec.title or spec.name} — {when}"
    if suite.scaled_down:
        title = f"SCALED DOWN ({', '.join(suite.scaled_down)}), not a reproduction — {title}"
    best, within = best_entries(entries, rows, columns, spec.table.rows, spec.table.columns,
                                metric.endswith("_error"), set(spec.table.best_excludes)) \
        if spec.table.bold_best else (set(), set())
    layout = spec.table.paper_layout
    table = Table(title, spec.table.rows, spec.table.columns, rows, columns, entries, paper is not None, trials, best,
                  records, when, footnotes, within, spec.evaluation.spread, spec.table.paper_delta,
                  "inline" if layout == "auto" else layout, row_names(suite, rows))
    if layout == "auto" and table.with_paper and latex_width(table) > TEXT_WIDTH_PT:
        table.paper_layout = "rows"
    return table


def provenance(suite: Suite, store: ResultStore, table: Table) -> dict:
    """What the footer says about the numbers: code, packages, hardware, recipe, epochs actually run."""
    records = [r for r in (table.records or store.records(report_cells(suite))).values() if r.get("status") == "ok"]
    codes = sorted({f"{r['code'].get('git_sha') or 'unknown'}{' (dirty)' if r['code'].get('dirty') else ''}"
                    for r in records if r.get("code")})
    packages = sorted({", ".join(f"{k} {v}" for k, v in sorted(r.get("packages", {}).items()))
                       for r in records})
    hardware = sorted({f"{h.get('gpu') or h.get('cpu')} ({h.get('device')}, {h.get('torch_threads')} threads)"
                       + _parallel_text(r.get("parallel") or {}) for r in records if (h := r.get("hardware"))})
    epochs = sorted({r.get("epochs") for r in records})
    data = sorted({describe_fingerprint(r["data"]) for r in records if r.get("data")})
    keyed_apart = sorted({c.dataset["data"] for c in suite.cells if c.dataset.get("data")})
    by_recipe: dict[str, list[str]] = {}  # a method may train under its own paper's recipe
    for cell in suite.cells:
        labels = by_recipe.setdefault(json.dumps(cell.recipe, sort_keys=True), [])
        if cell.label not in labels:
            labels.append(cell.label)
    texts = [_recipe_text(json.loads(r)) for r in by_recipe]
    recipe_text = texts[0] if len(texts) == 1 else "; ".join(
        f"{', '.join(labels)}: {text}" for labels, text in zip(by_recipe.values(), texts))
    sources = [json.loads(r).get("source", "") for r in by_recipe]
    n_min, n_max = table.n_range()
    return {"code": codes, "packages": packages, "hardware": hardware, "epochs": epochs, "recipe": recipe_text,
            "data": data, "unfingerprinted": sum(not r.get("data") for r in records), "keyed_apart": keyed_apart,
            "source": "; ".join(s for s in dict.fromkeys(sources) if s), "n_min": n_min, "n_max": n_max, "records": len(records),
            "cells": len({c.hash for c in suite.cells}), "results": store.uri}


def _parallel_text(parallel: dict) -> str:
    """How a trial split its batches, where it did: workers, accumulated passes, images per pass; and the seeds it
    trained stacked into one network (``resources.stack_seeds``)."""
    workers, passes = parallel.get("workers", 1), parallel.get("grad_accumulation", 1)
    seeds = parallel.get("stacked_seeds", 1)
    stacked = f", {seeds} seeds stacked in one network" if seeds > 1 else ""
    if workers * passes == 1:
        return stacked
    return f" × {workers} worker(s), {passes} pass(es) each of {parallel.get('images_per_pass')} images{stacked}"


def notes(suite: Suite) -> dict:
    """What the report says about settings the paper does not state, from the files themselves: the clauses of
    each recipe's ``source`` that say what was assumed, and the suite file's header comment (where every suite says
    which table it mirrors and each choice it makes where the paper is silent)."""
    assumed = []
    for cell in suite.cells:
        for clause in cell.recipe.get("source", "").split(";"):
            stated = any(word in clause for word in ("assum", "not stated", "not given"))
            why_epoch = clause.strip().startswith(("best epoch", "last epoch"))  # which epoch the table shows, and why
            if (stated or why_epoch) and clause.strip() not in assumed:
                assumed.append(clause.strip())
    deviations: list[str] = []  # what the cells do otherwise than their papers' text, in the code's own words
    methods = load_methods()
    for cell in suite.plan.everything:
        cls = methods.get(cell.method)
        for note in [*cls.report_notes(cls.HParams.model_validate(cell.hparams), cell),
                     *(n for model in cell.group for n in init_notes(model))]:
            if note not in deviations:
                deviations.append(note)
    resources = suite.spec.resources
    if resources.replicas > 1:
        batches = sorted({c.recipe["batch_size"] for c in suite.cells})
        assumed.append(
            f"each batch ({'/'.join(map(str, batches))}) is split over {resources.workers} worker(s) × "
            f"{resources.grad_accumulation} accumulation step(s), so batch norm statistics are over "
            f"{'/'.join(str(b // resources.replicas) for b in batches)} images (the suite's resources; the paper's "
            "device count is not given unless its header says so)")
    header = []
    try:
        for line in Path(suite.path).read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            header.append(line[1:].removeprefix(" "))
    except OSError:
        pass
    return {"assumed": assumed, "deviations": deviations, "header": "\n".join(header).strip(), "file": str(suite.path)}


def row_names(suite: Suite, rows: list[tuple]) -> dict[tuple, str]:
    """Rows of methods named as the papers print them: the stage teacher's row "Teacher", the other outputs of its
    method (the network trained alone) "Student", and a method that shows one output by its display name (its
    card's, or the suite's own label); a method showing several outputs keeps "method / output"."""
    table = suite.spec.table
    if table.rows[:1] != ["method"]:
        return {}
    teacher = {key for key, role in table.stage_values.items() if role == "teacher"}
    method_of = {c.label: c.method for c in suite.cells}
    methods = load_methods()
    names = {}
    for r in rows:
        where = dict(zip(table.rows, r))
        label, value = where["method"], where.get("value")
        shown = table.method_values.get(label, table.method_values.get("*", table.values))
        if f"{label}/{value}" in teacher:
            names[r] = "Teacher"
        elif any(key.split("/")[0] == label for key in teacher):
            names[r] = "Student"
        elif (value is None or len(shown) == 1) and len(r) <= 2:
            names[r] = label if label != method_of.get(label) else methods.get(label).display_name()
    return names


def _recipe_text(recipe: dict) -> str:
    opt, sched = recipe["optimizer"], recipe["schedule"]
    scaled = (f" scaled {recipe['lr_scaling']} to batch {recipe['batch_size']} from {recipe['reference_batch_size']}"
              if recipe.get("lr_scaling", "none") != "none" and recipe.get("reference_batch_size") else "")
    return (f"{recipe['epochs']} epochs, batch {recipe['batch_size']}, {opt['name']} lr {opt['lr']}{scaled} "
            f"(momentum {opt['momentum']}, nesterov {opt['nesterov']}, wd {opt['weight_decay']}), "
            f"{sched['name']} schedule"
            + (f" at {sched['milestones']} ×{sched['gamma']}" if sched["name"] == "multistep" else "")
            + (f", {recipe['warmup_epochs']} warm-up epochs" if recipe["warmup_epochs"] else "")
            + f", crop pad {recipe['augment']['crop_padding']}, flip {recipe['augment']['flip']}")


def render(table: Table, suite: Suite, store: ResultStore) -> dict[str, str]:
    env = Environment(loader=FileSystemLoader(TEMPLATES), trim_blocks=True, lstrip_blocks=True,
                      keep_trailing_newline=True)
    env.filters["tex"] = _latex_escape
    body = table.body("tex")
    context = {
        "table": table, "suite": suite.spec, "prov": provenance(suite, store, table),
        "latex_parts": [{"columns": part, "header": _latex_header_rows(table, part),
                         "body": [[row[0]] + [row[j + 1] for j in part] for row in body],
                         "scaled": part_width(table, part) > TEXT_WIDTH_PT} for part in latex_parts(table)],
        "latex_wide": latex_width(table) > TEXT_WIDTH_PT,  # table*: wider than a column of a two-column page
        "resize_open": "\\resizebox{\\textwidth}{!}{%",  # in a variable: "{%" would open a Jinja tag
        "metric_text": METRIC_TEXT[suite.spec.evaluation.metric],
        "markdown_table": tabulate(table.body("md"), headers=table.header(), tablefmt="pipe", disable_numparse=True,
                                   colalign=["left"] + ["right"] * len(table.shown_columns())),
        "missing": MISSING, "not_applicable": NOT_APPLICABLE,
        "costs": {v: COST_VALUES[v][0] for v in suite.spec.table.values if v in COST_VALUES},
        "notes": notes(suite),
    }
    context["latex_scaled"] = any(part["scaled"] for part in context["latex_parts"])
    return {ext: env.get_template(f"report.{ext}.j2").render(**context) for ext in ("md", "tex")}


def write_report(suite: Suite, store: ResultStore, out_dir: str | Path, log=print) -> dict[str, Path]:
    """One table per choice of ``evaluation.epoch`` (``[best, last]`` gives both), in one Markdown, LaTeX and CSV."""
    records = store.records(report_cells(suite))
    tables = [build_table(suite, store, epoch, records) for epoch in suite.spec.evaluation.epochs()]
    table = tables[0]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from harness.reporting.figures import figures_markdown, write_figures  # matplotlib only when a report is written

    figures = write_figures(suite, store, out_dir, table.trials, table.records)
    rendered = [render(t, suite, store) for t in tables]
    texts = {ext: "\n".join(r[ext] for r in rendered) for ext in ("md", "tex")}
    texts["md"] += figures_markdown(figures)  # a "Figures" section linking the PNGs (and PDFs) beside the report
    paths = {}
    for ext, text in texts.items():
        paths[ext] = out_dir / f"{suite.name}.{ext}"
        paths[ext].write_text(text)
    paths.update({f"{figure.name}.{ext}": getattr(figure, ext) for figure in figures for ext in ("png", "pdf")})
    paths["csv"] = out_dir / f"{suite.name}.csv"
    pd.concat([t.trials for t in tables], ignore_index=True).to_csv(paths["csv"], index=False)
    for t in tables:
        log(t.title)
        log(tabulate(t.body(), headers=t.header(), tablefmt="simple", disable_numparse=True))
    log(f"report: {', '.join(str(p) for p in paths.values())}")
    return paths
