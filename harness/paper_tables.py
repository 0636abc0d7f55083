"""The papers' own numbers (copied from ../shared/paper_tables), looked up for the cells of a suite."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

TABLES_DIR = Path(__file__).with_name("data") / "paper_tables"
PAPER_TABLES = sorted(p.stem for p in TABLES_DIR.glob("*.yaml"))


@lru_cache(maxsize=None)
def load_paper_table(name: str) -> dict:
    with open(TABLES_DIR / f"{name}.yaml") as f:
        return yaml.safe_load(f)


def paper_net_name(model: str, nets: dict[str, str]) -> str:
    """Our timm name → the table's name: an explicit mapping, else the name without its 'cifar_' prefix."""
    return nets.get(model, model.removeprefix("cifar_"))


def paper_value(table: dict, group, method: str, value: str, nets: dict[str, str] | None = None,
                methods: dict[str, str] | None = None, eval_roles: dict[str, dict[str, str]] | None = None,
                value_keys: dict[str, dict[str, str]] | None = None, match: dict[str, dict] | None = None):
    """The paper's number for (group, method label, value key), or None where the table has none.

    A row trained alone ("net", e.g. the Ind rows) stands for every peer of a group of copies of that network.
    In an offline table (rows with ``eval``), ``eval_roles`` says which role (teacher / student) our value is;
    the teacher's number is the table's teacher row, whatever the method.  A (method, value) it gives no role is
    looked up by its value key, as in an online table (AMLN Table 5 mixes both kinds of rows).
    ``value_keys`` renames our value to the row's key (per label, "*" for any); ``match`` adds keys a row must
    have for a label (KDCL's ``icl``, Table 9's ``lambda``).
    """
    names = [paper_net_name(m, nets or {}) for m in group]
    wanted = (methods or {}).get(method, method)
    extra = (match or {}).get(method, {})
    keys = (value_keys or {}).get(method) or (value_keys or {}).get("*", {})
    role = ((eval_roles or {}).get(method) or (eval_roles or {}).get("*", {})).get(value)
    ours, value = value, keys.get(value, value)
    rows = [row for row in table["rows"]  # a key a row lacks matches false / null (KDCL's rows without ICL)
            if all(row.get(k) == v or (k not in row and v in (False, None)) for k, v in extra.items())]
    if role is not None:
        for row in rows:
            if row["nets"] == names and row.get("eval") == role and (role == "teacher" or row["method"] == wanted):
                return row.get(value if value in row else "value")
        return None
    for row in rows:
        if row.get("method") != wanted:
            continue
        if row["nets"] == names and row.get(value) is not None:
            return row[value]
        if row["nets"] * len(names) == names and len(row["nets"]) == 1:  # one network alone, our group its copies
            if "net" in row and (ours == "avg" or ours.startswith("net")):
                return row["net"]
            if value != ours and row.get(value) is not None:  # renamed by value_keys: {net1: top1}
                return row[value]
    return None
