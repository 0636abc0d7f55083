"""The checks of a suite file across its keys, made while it is parsed, each adding one line per problem: peer
groups against the methods' limits and the stacking switches, the report layout against the grid, the paper table
against the suite, and the stages (teachers) the cells need."""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from harness.config.cell import Cell, hashed_recipe
from harness.registry import did_you_mean
from harness.results.weights import hub_name_problem, is_hub, is_url
from harness.suite.spec import Resources, SuiteSpec, _pydantic_lines
from harness.training.method import load_methods

def _check_groups(groups, methods, errors: list[str], stack_peers: bool = False, stack_seeds: bool = False) -> None:
    import timm

    import harness.models  # noqa: F401

    registry = load_methods()
    known = None
    for i, group in enumerate(groups):
        for j, model in enumerate(group):
            if not timm.is_model(model):
                known = known or timm.list_models()
                errors.append(f"groups[{i}][{j}]: unknown model {model!r}{did_you_mean(model, known)}; "
                              "'harness list models' shows the registered ones")
        for label, name, hparams, _ in methods:
            cls = registry.get(name)
            if len(group) < cls.min_peers or (cls.max_peers and len(group) > cls.max_peers):
                limit = f"{cls.min_peers}..{cls.max_peers or 'any'}"
                errors.append(f"groups[{i}]: method {label!r} takes {limit} networks, the group has {len(group)}")
                continue
            problem = cls.group_error(cls.HParams.model_validate(hparams), tuple(group))
            if problem:
                errors.append(f"groups[{i}]: method {label!r} cannot train {list(group)}: {problem}")
            problem = stack_peers and cls.stack_error(cls.HParams.model_validate(hparams), tuple(group))
            if problem:
                errors.append(f"resources.stack_peers: groups[{i}] with method {label!r}: {problem}; "
                              "set stack_peers: false")
            problem = stack_seeds and cls.seed_stack_error(cls.HParams.model_validate(hparams), tuple(group))
            if problem:
                errors.append(f"resources.stack_seeds: groups[{i}] with method {label!r}: {problem}; "
                              "set stack_seeds: false")
        for key, wanted, size in (("stack_peers", stack_peers, 2), ("stack_seeds", stack_seeds, 1)):
            if wanted and len(set(group)) == 1 and len(group) >= size and timm.is_model(group[0]):
                problem = _stacking_problem(group)
                if problem:
                    errors.append(f"resources.{key}: groups[{i}]: {problem}; set {key}: false")


def _check_seed_stacking(resources: Resources, errors: list[str]) -> None:
    """Stacked seeds train in one process on one device, with one update per step."""
    if not resources.stack_seeds:
        return
    for key in ("workers", "grad_accumulation"):
        if getattr(resources, key) > 1:
            errors.append(f"resources.stack_seeds: {key} {getattr(resources, key)}: stacked seeds train in one "
                          f"process with one update per step; set {key}: 1 or stack_seeds: false")


def _stacking_problem(group) -> str | None:
    """Why the group's networks cannot be stacked (a layer that mixes channels), tried on the CPU."""
    import timm

    from harness.models.stacked import StackedPeers, StackingError

    try:
        StackedPeers([timm.create_model(group[0]) for _ in range(2)], name=group[0])
    except StackingError as e:
        return str(e).removesuffix("; train it without stack_peers")
    return None


def _check_layout(spec: SuiteSpec, methods, errors: list[str]) -> None:
    """Every axis with more than one entry must be a row or a column; none may be both."""
    layout = spec.table
    for key in sorted(set(layout.rows) & set(layout.columns)):
        errors.append(f"table: {key!r} is in both rows and columns; keep it in one")
    sizes = {"group": len({tuple(g) for g in spec.groups}), "method": len(methods), "value": len(layout.values)}
    for key, size in sizes.items():
        if size > 1 and key not in layout.rows + layout.columns:
            errors.append(f"table: the suite has {size} entries of {key!r} but the table has no place for them; "
                          f"add {key!r} to table.rows or table.columns")
    widest = max(len(g) for g in spec.groups)
    for i, value in enumerate(layout.values if "values" in layout.model_fields_set else []):
        output = value.rpartition(":")[2]
        if output.startswith("net") and output[3:].isdigit() and not 1 <= int(output[3:]) <= widest:
            errors.append(f"table.values[{i}]: {value!r} names network {output[3:]} but the suite's groups have at most "
                          f"{widest}; valid: net1..net{widest}, avg, ens or an output of a method")
    labels = [label for label, _, _, _ in methods]
    for label, values in layout.method_values.items():
        if label != "*" and label not in labels:
            errors.append(f"table.method_values.{label}: not a method label of this suite{did_you_mean(label, labels)}"
                          f"; valid: {', '.join(labels)} or '*'")
        for value in values:
            if value not in layout.values:
                errors.append(f"table.method_values.{label}: {value!r} is not in table.values "
                              f"({', '.join(layout.values)})")
    recipes = {label: json.dumps(hashed_recipe(own or spec.recipe or {}), sort_keys=True)
               for label, _, _, own in methods}
    for name, gain in layout.gains.items():
        for where, reference in (("reference", gain.reference),
                                 *((f"references.{k}", v) for k, v in gain.references.items())):
            if reference not in labels:
                errors.append(f"table.gains.{name}.{where}: {reference!r} is not a method label of this suite"
                              f"{did_you_mean(reference, labels)}; valid: {', '.join(labels)}")
        for label in gain.references:
            if label not in labels:
                errors.append(f"table.gains.{name}.references: key {label!r} is not a method label of this suite"
                              f"{did_you_mean(label, labels)}; valid: {', '.join(labels)}")
        for label in labels:
            reference = gain.reference_of(label)
            if reference in recipes and not gain.is_reference(label) and recipes[label] != recipes[reference]:
                errors.append(f"table.gains.{name}: {label} trains under another recipe than its reference {reference}; "
                              f"add a method entry trained like {label} and name it in "
                              f"table.gains.{name}.references.{label}")
    for where, entries in (("best_excludes", {f"[{i}]": e for i, e in enumerate(layout.best_excludes)}),
                           ("stage_values", {f".{e}": e for e in layout.stage_values})):
        for key, entry in entries.items():
            label, _, value = entry.rpartition("/")
            if label not in labels or value not in layout.values:
                errors.append(f"table.{where}{key}: {entry!r} is not 'method label/value' of this table; labels: "
                              f"{', '.join(labels)}; values: {', '.join(layout.values)}")


def _check_paper_table(spec: SuiteSpec, methods, errors: list[str]) -> None:
    """The labels ``paper_table`` keys its settings by must be this suite's (a typo would silently show no paper
    number), and the paper methods it names must be the table's."""
    ref = spec.paper_table
    if ref is None:
        return
    from harness.papers.tables import load_paper_table

    labels = [label for label, _, _, _ in methods]
    rows = load_paper_table(ref.name)["rows"]
    ours = sorted({model for group in spec.groups for model in group})
    networks = sorted({name for row in rows for name in row.get("nets", [])})
    for model, name in ref.nets.items():
        if model not in ours:
            errors.append(f"paper_table.nets.{model}: not a network of this suite's groups{did_you_mean(model, ours)}; "
                          f"valid: {', '.join(ours)}")
        if name not in networks:
            errors.append(f"paper_table.nets.{model}: {name!r} is not a network of {ref.name}"
                          f"{did_you_mean(name, networks)}; valid: {', '.join(networks)}")
    for where, names in ([("group", ref.group)] if isinstance(ref.group, list) else
                         [(f"group.{k}", v) for k, v in (ref.group or {}).items()]):
        for name in names:
            if name not in networks:
                errors.append(f"paper_table.{where}: {name!r} is not a network of {ref.name}"
                              f"{did_you_mean(name, networks)}; valid: {', '.join(networks)}")
    theirs = sorted({row["method"] for row in rows if "method" in row})
    for field in ("methods", "eval", "value_keys", "match"):
        for label in getattr(ref, field):
            if label != "*" and label not in labels:
                errors.append(f"paper_table.{field}.{label}: not a method label of this suite"
                              f"{did_you_mean(label, labels)}; valid: {', '.join(labels)} or '*'")
    for label, names in ref.methods.items():
        for name in [names] if isinstance(names, str) else names:
            if name not in theirs:
                errors.append(f"paper_table.methods.{label}: {name!r} is not a method of {ref.name}"
                              f"{did_you_mean(name, theirs)}; valid: {', '.join(theirs)}")


def method_where(cell: Cell, raw_methods) -> str:
    """The key path (``methods[i]``) of the suite entry a cell comes from; ``methods`` where none matches."""
    for i, entry in enumerate(raw_methods):
        name = entry if isinstance(entry, str) else entry.get("name")
        label = None if isinstance(entry, str) else entry.get("label")
        if cell.label in (label, name) or cell.label.startswith(f"{label or name}["):
            return f"methods[{i}]"
    return "methods"


def _check_stages(cells: list[Cell], raw_methods, errors: list[str]) -> None:
    """Stages a method asks for must be definable (a known teacher recipe) and a checkpoint file must exist."""
    from harness.training.stages import StageError, stages_of

    def where(cell: Cell) -> str:
        return method_where(cell, raw_methods)

    for cell in {c.hash: c for c in cells}.values():
        try:
            stages = stages_of(cell)
        except KeyError as e:  # an unknown teacher recipe preset: resolve_recipe's one-line message
            errors.append(f"{where(cell)}.{e.args[0]}")
            continue
        except ValidationError as e:
            errors.extend(_pydantic_lines(e, f"{where(cell)}.teacher_recipe"))
            continue
        except StageError as e:  # a stage the method cannot define from these hyper-parameters: "key: why"
            errors.append(f"{where(cell)}.{e}")
            continue
        for stage in stages.values():
            if not stage.checkpoint:
                continue
            key = next((k for k, v in cell.hparams.items() if v == stage.checkpoint), "checkpoint")
            if is_hub(stage.checkpoint):
                problem = hub_name_problem(stage.checkpoint)
                if problem:
                    errors.append(f"{where(cell)}.{key}: {problem}")
                continue
            if is_url(stage.checkpoint):
                if not stage.sha256:
                    errors.append(f"{where(cell)}.{key}: a teacher from a URL needs its SHA-256 (teacher_sha256: the "
                                  "file's 64 hex digits), so that a changed or damaged download is never used")
                continue
            if not Path(stage.checkpoint).expanduser().is_file():
                errors.append(f"{where(cell)}.{key}: no such file {stage.checkpoint!r}; give the path of a saved "
                              "network (the harness's results/weights/<hash>.pt or a state_dict file)")
