"""``harness compare``: two result sets side by side, cell by cell, seed by seed.

The two sides are one suite in two stores (a rerun after a code change, another machine's results), or two suites
(one method under two recipes) in one store or two.  Trials are matched on (group, method label, output, seed), so a
difference is measured on the same seed, never between medians of different seeds; the table shows each side's
median, the median of the per-seed differences (B − A), and which seeds were matched."""
from __future__ import annotations

import pandas as pd
from tabulate import tabulate

from harness.reporting.frames import trial_frame
from harness.results.store import ResultStore
from harness.suite.schema import Suite

KEYS = ["group", "method", "value"]


def compare_frame(a: Suite, a_store: ResultStore, b: Suite, b_store: ResultStore) -> pd.DataFrame:
    """One row per (group, method, output) found on both sides: medians, the median per-seed Δ and the seeds."""
    metric = a.spec.evaluation.metric
    left = trial_frame(a, a_store)[[*KEYS, "seed", metric]]
    right = trial_frame(b, b_store)[[*KEYS, "seed", metric]]
    both = left.merge(right, on=[*KEYS, "seed"], suffixes=("_a", "_b"))
    if both.empty:
        return pd.DataFrame(columns=[*KEYS, "a", "b", "delta", "seeds"])
    both["delta"] = both[f"{metric}_b"] - both[f"{metric}_a"]
    rows = []
    for key, part in both.groupby(KEYS, sort=False):
        rows.append({**dict(zip(KEYS, key)), "a": part[f"{metric}_a"].median(), "b": part[f"{metric}_b"].median(),
                     "delta": part["delta"].median(), "seeds": ",".join(str(s) for s in sorted(part["seed"]))})
    return pd.DataFrame(rows)


def compare_text(frame: pd.DataFrame, a_name: str, b_name: str, metric: str) -> str:
    if frame.empty:
        return f"no trial of {a_name} matches one of {b_name} (same group, method label, output and seed)"
    table = tabulate([[r.group, r.method, r.value, f"{r.a:.2f}", f"{r.b:.2f}", f"{r.delta:+.2f}", r.seeds]
                      for r in frame.itertuples()],
                     headers=["group", "method", "output", f"A {metric}", f"B {metric}", "Δ (B − A, per seed)", "seeds"],
                     disable_numparse=True)
    return f"A = {a_name}\nB = {b_name}\n{table}"
