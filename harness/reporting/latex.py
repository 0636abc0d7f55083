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


def _latex_header_rows(table) -> list[list[tuple[str, int]]]:
    """Column header rows as (text, span) pairs: the outer keys span the inner ones (\\multicolumn)."""
    header = []
    keys = table.shown_column_keys()
    for level in range(len(keys)):
        row: list[tuple[str, int]] = []
        for col in table.shown_columns():
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


def latex_width(table) -> float:
    """An estimate of the tabular's natural width in points (characters × a digit's width, plus column gaps)."""
    body, header = table.body("plain"), _latex_header_rows(table)
    widths = [max([len(" / ".join(table.row_keys))] + [len(row[0]) for row in body])]
    for j, _ in enumerate(table.shown_columns()):
        spans = [len(text) / span for level in header for text, span in _spread_over(level, j)]
        widths.append(max([len(row[j + 1]) for row in body] + spans))
    return sum(w * CHAR_PT + COLUMN_GAP_PT for w in widths)


def _spread_over(level: list[tuple[str, int]], column: int):
    """The header entry of ``level`` above ``column`` (index among the value columns)."""
    start = 0
    for text, span in level:
        if start <= column < start + span:
            yield text, span
        start += span
