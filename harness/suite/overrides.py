"""``key=value`` overrides from the command line, applied to a suite file's mapping before it is validated.

``harness run SUITE seeds=[0] recipe.epochs=5 methods=dml`` runs the suite with one seed, five epochs and only its
``dml`` entry, without a copy of the YAML: each value is read as YAML (``[0, 1]``, ``5``, ``true``, ``{a: 1}``), the
dotted key walks into the mapping (a recipe given as a preset name becomes ``{base: <name>, ...}``), and the
result is validated like the file itself.  ``methods=NAME`` or ``methods=[A, B]`` naming labels or method names of
the suite keeps those entries (a selection, as a researcher means it), anything else replaces the list.  What was
overridden is kept with the suite and written into every record its run makes."""
from __future__ import annotations

import copy

import yaml

from harness.registry import did_you_mean


class OverrideError(ValueError):
    """An override that is not ``key=value`` or whose value is not YAML; its message is one line."""


def parse(override: str) -> tuple[list[str], object]:
    key, sep, text = override.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise OverrideError(f"override {override!r}: not key=value (e.g. recipe.epochs=5, seeds=[0,1])")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise OverrideError(f"override {override!r}: the value is not YAML ({str(e).splitlines()[0]})") from None
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """A copy of ``raw`` with every override applied in order."""
    out = copy.deepcopy(raw)
    for override in overrides:
        path, value = parse(override)
        picked = _selection(out.get("methods"), value) if path == ["methods"] else None
        if picked is not None:
            out["methods"] = picked
            continue
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part) if isinstance(node, dict) else None
            if part == "recipe" and i == 0 and isinstance(child, str):
                child = {"base": child}  # a preset name, overridden field by field
            if child is None:
                child = {}
            if not isinstance(child, dict):
                raise OverrideError(f"override {override!r}: {'.'.join(path[:i + 1])} is {child!r}, not a mapping")
            node[part] = child
            node = child
        node[path[-1]] = value
    return out


def _selection(methods, value) -> list | None:
    """The entries of ``methods`` that ``value`` names (a label or method name, or a list of them), in the order
    asked; None when ``value`` is not names (entries replace the list); a name the suite lacks is an error."""
    wanted = [value] if isinstance(value, str) else value
    if (not isinstance(methods, list) or not isinstance(wanted, list) or not wanted
            or not all(isinstance(w, str) for w in wanted)):
        return None  # entries (mappings), or nothing: they replace the list

    def names(entry) -> set:
        return {entry} if isinstance(entry, str) else {entry.get("label"), entry.get("name")} - {None}

    picked = [[e for e in methods if w in names(e)] for w in wanted]
    for w, found in zip(wanted, picked):
        if not found:
            known = sorted({n for e in methods for n in names(e)})
            raise OverrideError(f"override 'methods={w}': the suite has no method entry {w!r}{did_you_mean(w, known)}; "
                                f"valid: {', '.join(known)} (to replace the list, give entries: methods=[{{name: kd}}])")
    return [e for group in picked for e in group]
