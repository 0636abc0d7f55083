"""Finished cells are reused only for the data they trained on.

Before a run, each dataset entry of the suite is loaded once and fingerprinted (:mod:`harness.data.fingerprint`).
Every cell's dataset entry then carries that fingerprint (``fingerprint``, not hashed: the trial checks that its
own copy of the data matches the driver's).  Where a finished record under the cells' hashes (a cell or a teacher
it needs) was trained on other data, this data's cells are keyed apart: ``data: d<checksum>`` enters their dataset
entry and so their hash, the earlier results stay as they are, and the run says so in one line.  Data that no
finished record contradicts keeps the plain hashes, so the hashes of unchanged data never move."""
from __future__ import annotations

import json
from dataclasses import replace
from functools import lru_cache
from typing import Callable

from harness.data.datasets import ImageData, load_dataset
from harness.data.fingerprint import describe, fingerprint
from harness.results.store import ResultStore
from harness.suite.spec import Suite


def bind_data(suite: Suite, store: ResultStore, data_of: Callable[[dict], ImageData], log=print,
              say_unchecked: bool = True) -> Suite:
    """``suite`` with every cell's dataset entry bound to the data found here; ``data_of`` loads an entry.
    ``say_unchecked``: say how many finished records hold no fingerprint (a run says it; a report need not)."""
    bound: dict[str, dict] = {}
    everything = suite.plan.everything
    for key in dict.fromkeys(_key(c.dataset) for c in suite.cells):
        entry = json.loads(key)
        fp = fingerprint(data_of(entry))
        cells = [c for c in everything if _key(c.dataset) == key]
        other, unchecked = [], 0
        records = store.records(cells)
        for cell in cells:
            record = records.get(cell.hash)
            if record is None or record.get("status") != "ok":
                continue
            theirs = (record.get("data") or {}).get("checksum")
            if theirs is None:
                unchecked += 1
            elif theirs != fp["checksum"]:
                other.append((cell, record["data"]))
        entry = {**entry, "fingerprint": fp["checksum"]}
        if other:
            entry["data"] = f"d{fp['checksum']}"
            more = f" and {len(other) - 3} more" if len(other) > 3 else ""
            names = ", ".join(c.describe() for c, _ in other[:3]) + more
            log(f"{suite.name}: the {entry['name']} data here ({describe(fp)}) is not what {len(other)} finished "
                f"cell(s) trained on ({names}; {describe(other[0][1])}); those results are kept, and the cells of "
                f"this data are keyed apart (dataset data {entry['data']}), reused only on this data")
        if unchecked and say_unchecked:
            log(f"{suite.name}: {unchecked} finished cell(s) were recorded before records held a data fingerprint "
                "(2026-12-02): reused without that check")
        bound[key] = entry
    def bind(cell):
        key = _key(cell.dataset)
        return replace(cell, dataset=bound[key]) if key in bound else cell

    out = Suite(suite.spec, suite.path, [bind(c) for c in suite.cells], suite.scaled_down, suite.overrides)
    out.plan = suite.plan.mapped(bind)  # the same plan under the bound cells: not derived again
    return out


def _key(dataset: dict) -> str:
    return json.dumps({k: v for k, v in dataset.items() if k not in ("fingerprint", "data")}, sort_keys=True)


def dataset_loader(data_root: str | None) -> Callable[[dict], ImageData]:
    """``load_dataset`` for this data root, each entry loaded once (the fingerprint and the pre-flight share it)."""
    cached = lru_cache(maxsize=None)(lambda key: load_dataset(json.loads(key), data_root))
    return lambda entry: cached(_key(entry))
