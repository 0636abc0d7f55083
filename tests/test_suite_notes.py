"""A suite's header comment is its report's Notes (what the paper does not state, the choices made): every setting it
states of a method (a temperature, a number of branches or blocks) and every recipe it names is checked against the
suite's own cells, so that a note can no longer contradict its table."""
from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import yaml

from harness.config.recipe import load_presets
from harness.reporting.report import notes
from tests.helpers import shipped_suite

SUITES = sorted((Path(__file__).parents[1] / "suites").glob("*.yaml"))
NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
TEMPERATURE = re.compile(r"(?<![\w^])(?:T|tau|τ)\s*=\s*(\d+(?:\.\d+)?)(?![\d.]*\s*->)")
BRANCHES = re.compile(r"\b(two|three|four|five|\d+) (?:\w+ )?branches\b")
BLOCKS = re.compile(r"\b(two|three|four|five|\d+) (?:AMLN )?blocks\b")
RECIPE = re.compile(r"Recipes?: `?([a-z][a-z0-9_]+)`?")


def clauses(header: str) -> list[str]:
    """The header's bullets (a line "- ..." and the lines under it) and, outside them, its sentences."""
    out, bullet = [], None
    for line in header.splitlines():
        if line.startswith("- "):
            if bullet is not None:
                out.append(bullet)
            bullet = line[2:]
        elif line.startswith("  ") and bullet is not None:
            bullet += " " + line.strip()
        else:
            if bullet is not None:
                out.append(bullet)
                bullet = None
            out.append(line)
    out += [bullet] if bullet is not None else []
    return [sentence for clause in out for sentence in re.split(r"(?<=[.;])\s+(?=[A-Z])", clause)]


def subject(clause: str, names: dict[str, list]) -> str | None:
    """The first method (a label or a method name of the suite) the clause names: what its settings are about."""
    found = [(m.start(), name) for name in names
             for m in [re.search(rf"(?<![\w+-]){re.escape(name)}(?![\w+-])", clause)] if m]
    return min(found)[1] if found else None


ENGLISH = {"at", "one"}  # method names that are also words of the prose: only their labels (AT, ONE) name them


@functools.cache
def _stages(model: str, side: int) -> int:
    """Stage outputs after the stem of ``model`` (AMLN's blocks where ``blocks`` is not set), on the meta device."""
    import timm
    import torch

    import harness.models  # noqa: F401
    from harness.models.adapter import probe
    from harness.models.meta import ShapesOnly

    with torch.device("meta"), ShapesOnly():
        return len(probe(timm.create_model(model, num_classes=10), (3, side, side)).blocks)


def amln_blocks(cell) -> int | None:
    if cell.method != "amln":
        return None
    side = 224 if cell.dataset["name"] == "imagenet" else 32
    return cell.hparams.get("blocks") or min(_stages(m, side) for m in cell.group)


def stated_problems(path: Path) -> list[str]:
    from harness.suite.schema import load_suite

    suite = shipped_suite(path) if path.parent == SUITES[0].parent else load_suite(path)
    names: dict[str, list] = {}
    for cell in suite.cells:
        for name in {cell.label, cell.method} - ENGLISH:
            names.setdefault(name, []).append(cell)
    problems = []
    for clause in clauses(notes(suite)["header"]):
        who = subject(clause, names)
        if who is None and "AMLN blocks" in clause and "amln" in names:
            who = "amln"  # "n AMLN blocks" is about the method wherever it stands
        if who is None:
            continue
        cells = names[who]
        for pattern, read in ((TEMPERATURE, lambda c: c.hparams.get("temperature")),
                              (BRANCHES, lambda c: c.hparams.get("branches", len(c.group))),
                              (BLOCKS, amln_blocks)):
            for match in pattern.finditer(clause):
                said = float(NUMBERS.get(match.group(1), match.group(1)))
                about = names["amln"] if "AMLN blocks" in match.group(0) and "amln" in names else cells
                have = {read(c) for c in about} - {None}
                if have and said not in {float(h) for h in have}:
                    problems.append(f"{path.name}: the header says {match.group(0)!r} of {who}, its cells have "
                                    f"{sorted(have)}: {clause[:160]}")
    raw = yaml.safe_load(path.read_text())
    used = {v for v in _strings(raw) if v in load_presets() or v in (raw.get("recipes") or {})}
    for match in RECIPE.finditer(notes(suite)["header"]):
        if match.group(1) in load_presets() and match.group(1) not in used:
            problems.append(f"{path.name}: the header names recipe {match.group(1)}, which no cell uses "
                            f"(they use {sorted(used)})")
    return problems


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_a_suites_notes_state_only_what_its_cells_do(path):
    assert stated_problems(path) == []


def test_the_check_finds_a_note_that_contradicts_its_cells(tmp_path, monkeypatch):
    """A header that says T = 2 of a method trained at T = 4, four AMLN blocks where the cells have three, and a
    recipe no cell uses: three lines."""
    text = (Path(__file__).parents[1] / "suites" / "amln_table3a.yaml").read_text()
    bad = tmp_path / "amln_table3a.yaml"
    bad.write_text("# - DML: CE + T^2 KL at T = 7, joint update.\n# - AMLN: four AMLN blocks on each side.\n"
                   "# Recipe: kdcl_cifar.\n" + text)
    found = stated_problems(bad)
    assert len(found) == 3, found
    assert "'T = 7' of DML" in found[0] and "'four AMLN blocks' of AMLN" in found[1] and "kdcl_cifar" in found[2]
