"""The papers' own numbers (``harness/papers/data/``, copied from the papers' tables), looked up for the cells of
a suite."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

TABLES_DIR = Path(__file__).with_name("data")
PAPER_TABLES = sorted(p.stem for p in TABLES_DIR.glob("*.yaml"))


@lru_cache(maxsize=None)
def load_paper_table(name: str) -> dict:
    with open(TABLES_DIR / f"{name}.yaml") as f:
        return yaml.safe_load(f)


def paper_net_name(model: str, nets: dict[str, str]) -> str:
    """Our timm name → the table's name: an explicit mapping, else the name without its 'cifar_' prefix."""
    return nets.get(model, model.removeprefix("cifar_"))


ROLES = ("teacher", "student")  # an offline row's ``eval``; any other ``eval`` names the network the row is about


def in_our_order(row: dict, names: list[str]) -> dict | None:
    """``row`` with its per-network keys (net1, net2, …) renumbered to our group's order when its nets are ours
    listed in another order (KDCL Table 7's "2 distill 1" lists the student first); None when they are not ours."""
    if row["nets"] == names:
        return row
    if sorted(row["nets"]) != sorted(names):
        return None
    free = list(enumerate(row["nets"], 1))
    renamed = {k: v for k, v in row.items() if not (k.startswith("net") and k[3:].isdigit())}
    for ours, name in enumerate(names, 1):
        theirs = next(i for i, n in free if n == name)
        free.remove((theirs, name))
        if f"net{theirs}" in row:
            renamed[f"net{ours}"] = row[f"net{theirs}"]
    return renamed


def paper_lookup(table: dict, group, method: str, value: str, nets: dict[str, str] | None = None,
                methods: dict[str, str | list[str]] | None = None,
                eval_roles: dict[str, dict[str, str]] | None = None,
                value_keys: dict[str, dict[str, str]] | None = None, match: dict[str, dict] | None = None):
    """The paper's number for (group, method label, value key) and the row it is from, or (None, None) where the
    table has none.

    A row's nets may list ours in another order (its ``net1``/``net2`` are renumbered to ours, and a row in our
    order is preferred).  A row of one network (the Ind / vanilla rows, ONE's multi-branch network) stands for
    each of our networks that is that network.  A row whose ``eval`` names a network holds that network's numbers
    only: our ``netK`` gets them when our K-th network is it.  In an offline table (rows with ``eval: teacher |
    student``), ``eval_roles`` says which role our value is; the teacher's number is the table's teacher row,
    whatever the method; a (method, value) it gives no role is looked up as in an online table (AMLN Table 5 mixes
    both kinds of rows).  ``methods`` maps our label to the paper's method (a list: the first that has a number);
    ``value_keys`` renames our value to the row's key (per label, "*" for any); ``match`` adds keys a row must
    have for a label (KDCL's ``icl``, Table 9's ``lambda``); "{net1}" there is our first network's name.
    """
    names = [paper_net_name(m, nets or {}) for m in group]
    wanted = (methods or {}).get(method, method)
    if isinstance(wanted, list):
        return next((v for w in wanted if (v := paper_lookup(table, group, method, value, nets, {method: w},
                                                             eval_roles, value_keys, match))[0] is not None),
                    (None, None))
    extra = {k: v.format(**{f"net{i}": n for i, n in enumerate(names, 1)}) if isinstance(v, str) else v
             for k, v in (match or {}).get(method, {}).items()}
    keys = (value_keys or {}).get(method) or (value_keys or {}).get("*", {})
    role = ((eval_roles or {}).get(method) or (eval_roles or {}).get("*", {})).get(value)
    ours, value = value, keys.get(value, value)
    rows = [row for row in table["rows"]  # a key a row lacks matches false / null (KDCL's rows without ICL)
            if all(row.get(k) == v or (k not in row and v in (False, None)) for k, v in extra.items())]
    if role is not None:
        for row in rows:
            if row["nets"] == names and row.get("eval") == role and (role == "teacher" or row["method"] == wanted):
                return row.get(value if value in row else "value"), row
        return None, None
    output = ours.rpartition(":")[2]  # "top5:net1" is net1's number at another metric
    position = int(output[3:]) if output.startswith("net") and output[3:].isdigit() else None
    if position is not None and not 1 <= position <= len(names):
        return None, None  # net3 of a pair
    ordered = [r for r in rows if r.get("method") == wanted and r["nets"] == names]
    others = [r for r in rows if r.get("method") == wanted and r["nets"] != names]
    for row in ordered + others:
        about = row.get("eval") if row.get("eval") not in ROLES else None
        if about is not None and (names[position - 1] != about if position else value != ours or value not in row):
            continue  # not that network's number (a number of the whole cell, e.g. params_m, still is)
        if len(row["nets"]) == 1 and len(names) > 1:  # one network alone: each of our networks that is it
            if position is None and not (ours == "avg" and set(names) == set(row["nets"])) and ours not in keys:
                continue  # a value of the whole group, unless the suite names the row's key for it (value_keys)
            if position is not None and names[position - 1] != row["nets"][0]:
                continue
            key = value if value in row else "net" if "net" in row else "value" if about else None
            if key is not None and row.get(key) is not None:
                return row[key], row
            continue
        reordered = in_our_order(row, names)
        if reordered is None:
            continue
        key = value if value in reordered else "value" if about and "value" in reordered else None
        if key is not None and reordered.get(key) is not None:
            return reordered[key], row
    return None, None


def paper_value(table: dict, group, method: str, value: str, *args, **kwargs):
    """The paper's number of :func:`paper_lookup`, or None."""
    return paper_lookup(table, group, method, value, *args, **kwargs)[0]
