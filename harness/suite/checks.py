"""What refuses a suite before any data is read, and so before Ray starts: ``harness validate``, ``harness run`` and
``harness index`` (its list of suite files that do not validate) ask this one function."""
from __future__ import annotations

from harness.costs.capacity import capacity_errors
from harness.suite.fit import fit_errors
from harness.suite.spec import Suite


def suite_problems(suite: Suite) -> list[str]:
    """One line per problem: the cells against the data's facts and their networks (``harness.suite.fit``), then,
    where those fit, against the resources (``harness.costs.capacity``: a batch the data cannot fill would only add
    memory lines)."""
    return fit_errors(suite) or capacity_errors(suite)
