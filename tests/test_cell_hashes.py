"""The hash of every cell of every shipped suite (its stage cells and its --smoke cells too) is the one recorded in
tests/snapshots/cell_hashes.json: a change that moves code must not move a result's key, and a change that means to
(a fix that changes what a cell trains) says so by updating the snapshot, its note and the README."""
import json
from pathlib import Path

import pytest

from harness.suite.smoke import smoke_suite
from harness.training.stages import waves
from tests.helpers import shipped_suite

ROOT = Path(__file__).parents[1]
SNAPSHOT = json.loads((ROOT / "tests" / "snapshots" / "cell_hashes.json").read_text())
SUITES = sorted((ROOT / "suites").glob("*.yaml"))


def all_hashes(cells) -> list[str]:
    return sorted(c.hash for wave in waves(cells) for c in wave)


def test_every_shipped_suite_is_in_the_snapshot():
    assert sorted(SNAPSHOT) == [p.stem for p in SUITES]


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_cell_hashes_unchanged(path):
    suite = shipped_suite(path)
    assert all_hashes(suite.cells) == SNAPSHOT[path.stem]["cells"]
    assert all_hashes(smoke_suite(suite).cells) == SNAPSHOT[path.stem]["smoke"]
