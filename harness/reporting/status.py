"""``harness status``: where a suite stands in a store, from its records alone (a run may be going on elsewhere).

Every cell and stage cell is finished, failed (with its one-line error), training now (a run holds its lock) or
missing; the time left is the mean trial time of the finished cells times the cells left, the figure a researcher
divides by the trials their cluster runs at once."""
from __future__ import annotations

import statistics

from harness.results.store import ResultStore
from harness.suite.schema import Suite


def suite_status(suite: Suite, store: ResultStore) -> dict:
    everything = suite.plan.everything
    out: dict = {"finished": [], "failed": [], "training": [], "missing": []}
    for cell in everything:
        record = store.get(cell.hash)
        if record is not None and record.get("status") == "ok":
            out["finished"].append((cell, record))
        elif store.is_training(cell.hash):
            out["training"].append((cell, record))
        elif record is not None:
            out["failed"].append((cell, record))
        else:
            out["missing"].append((cell, None))
    walls = [r["wall_time_s"] for _, r in out["finished"] if r.get("wall_time_s")]
    left = len(everything) - len(out["finished"])
    out["mean_trial_s"] = statistics.mean(walls) if walls else None
    out["trial_hours_left"] = out["mean_trial_s"] * left / 3600 if walls else None
    out["cells"] = len(everything)
    return out


def status_lines(suite: Suite, store: ResultStore) -> list[str]:
    s = suite_status(suite, store)
    head = (f"{suite.name}: {len(s['finished'])} of {s['cells']} cells finished, {len(s['training'])} training, "
            f"{len(s['failed'])} failed, {len(s['missing'])} not started (results in {store.uri})")
    if s["trial_hours_left"] is not None and len(s["finished"]) < s["cells"]:
        head += (f"; about {s['trial_hours_left']:.1f} trial-hours left ({s['mean_trial_s'] / 60:.1f} min per "
                 f"finished cell × {s['cells'] - len(s['finished'])} cells; divide by the trials that run at once)")
    lines = [head]
    lines += [f"  training: {c.describe()} [{c.hash}]" for c, _ in s["training"]]
    lines += [f"  failed: {c.describe()} [{c.hash}]: {r.get('error', 'unknown error')[:200]}" for c, r in s["failed"]]
    missing = s["missing"]
    lines += [f"  not started: {c.describe()} [{c.hash}]" for c, _ in missing[:20]]
    if len(missing) > 20:
        lines.append(f"  … and {len(missing) - 20} more not started")
    return lines
