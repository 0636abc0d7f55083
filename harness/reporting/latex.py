"""How a report's table (``harness.reporting.report.Table``) is typeset in LaTeX: labels as the papers print
them, escaping, minus signs, the multi-level column header, and an estimate of the table's width against the
page's."""
from __future__ import annotations

import re

from harness.models.zoo import display_name


def paper_style(axis: str, value) -> str:
    """A table label as a paper prints it: a group's networks by their papers' names (ResNet-32 + ResNet-32)."""
    if axis == "group":
        return " + ".join(display_name(m) for m in str(value).split("+"))
    return str(value)


def _latex_minus(text: str) -> str:
    """Typeset minus signs of numbers (−0.85, not a hyphen) in an escaped cell."""
    return re.sub(r"(?<![\w$])-(?=\d)", "$-$", text)


def _latex_escape(text) -> str:
    out = str(text)
    for char, repl in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                       ("$", r"\$"), ("{", r"\{"), ("}", r"\}"), ("—", "--"), ("Δ", r"$\Delta$"),
                       ("×", r"$\times$"), ("±", r"$\pm$"), ("†", r"\textsuperscript{\dag}"),
                       ("‡", r"\textsuperscript{\ddag}"), ("−", "$-$")):
        out = out.replace(char, repl)
    return out


def _latex_header_rows(table, part: list[int] | None = None) -> list[list[tuple[str, int]]]:
    """Column header rows as (text, span) pairs: the outer keys span the inner ones (\\multicolumn); ``part``: the
    indices of the value columns to head (all by default)."""
    header = []
    keys = table.shown_column_keys()
    shown = table.shown_columns()
    for level in range(len(keys)):
        row: list[tuple[str, int]] = []
        for col in ([shown[j] for j in part] if part is not None else shown):
            label = paper_style(keys[level], col[level])
            prefix = col[:level + 1]
            if row and row[-1][2] == prefix:
                row[-1] = (row[-1][0], row[-1][1] + 1, prefix)
            else:
                row.append((label, 1, prefix))
        header.append([(text, span) for text, span, _ in row])
    return header


TEXT_WIDTH_PT = 345.0  # LaTeX article's \textwidth at 10 pt: wider tables are scaled to fit
CHAR_PT, COLUMN_GAP_PT = 5.0, 12.0  # a digit of a 10 pt font, and booktabs' space between columns
# a table is never shrunk below 80 % of the text's size (what journals accept); a wider one is set, as the papers
# set theirs, in parts stacked one under the other, each with the row labels and its own header
MIN_SCALE = 0.8


def column_widths(table) -> list[float]:
    """An estimate of each column's natural width in points (characters × a digit's width, plus the gap beside
    it): the row labels' first, then each value column's."""
    body, header = table.body("plain"), _latex_header_rows(table)
    labels = [" / ".join(paper_style(k, v) for k, v in zip(table.row_keys, r)) for r in table.rows]  # as printed
    widths = [max([len(" / ".join(table.row_keys)), len("(ours − paper)")] + [len(label) for label in labels])]
    for j, _ in enumerate(table.shown_columns()):
        spans = [len(text) / span for level in header for text, span in _spread_over(level, j)]
        widths.append(max([len(row[j + 1]) for row in body] + spans))
    return [w * CHAR_PT + COLUMN_GAP_PT for w in widths]


def latex_width(table) -> float:
    """An estimate of the tabular's natural width in points."""
    return sum(column_widths(table))


def latex_parts(table) -> list[list[int]]:
    """The value columns (indices) of each stacked part: as few parts as let each fit the text width at no less
    than ``MIN_SCALE``, cut between the outermost header's groups (a method's columns stay together) unless one
    group alone is too wide."""
    label, *widths = column_widths(table)
    limit = TEXT_WIDTH_PT / MIN_SCALE
    groups: dict = {}
    for j, col in enumerate(table.shown_columns()):
        groups.setdefault(col[0], []).append(j)
    parts: list[list[int]] = []
    current: list[int] = []
    for group in groups.values():
        pieces = [group] if label + sum(widths[j] for j in group) <= limit else [[j] for j in group]
        for piece in pieces:
            if current and label + sum(widths[j] for j in current + piece) > limit:
                parts.append(current)
                current = []
            current += piece
    return parts + [current]


def part_width(table, part: list[int]) -> float:
    label, *widths = column_widths(table)
    return label + sum(widths[j] for j in part)


def _spread_over(level: list[tuple[str, int]], column: int):
    """The header entry of ``level`` above ``column`` (index among the value columns)."""
    start = 0
    for text, span in level:
        if start <= column < start + span:
            yield text, span
        start += span
