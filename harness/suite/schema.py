"""Suite files: YAML that names a grid of (dataset, peer group, method, seed) cells, validated all at once and
expanded into cells (:func:`load_suite`).  The keys' models are :mod:`harness.suite.spec`'s, the checks across keys
:mod:`harness.suite.consistency`'s.

Every mistake is reported on one line: the file, the key path, the bad value and what would be valid.
"""
from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

from pydantic import ValidationError

from harness.config.cell import Cell
from harness.config.recipe import Recipe, load_presets, resolve_recipe
from harness.config.yaml_file import YamlFileError, read_yaml_mapping
from harness.data.datasets import DATASETS
from harness.suite.consistency import (_check_groups, _check_layout, _check_paper_table, _check_seed_stacking,
                                       _check_stages)
from harness.suite.overrides import OverrideError, apply_overrides
from harness.suite.spec import Suite, SuiteError, SuiteSpec, _pydantic_lines, _unknown_keys
from harness.registry import NameClash, PluginError, load_plugin
from harness.tracking.trackers import load_trackers
from harness.training.stages import cell_plugins
from harness.training.method import load_methods

def _expand_hparam_grid(hparams: dict) -> list[dict]:
    """``{key: {grid: [a, b]}}`` values expand into one entry per combination."""
    axes = {k: v["grid"] for k, v in hparams.items() if isinstance(v, dict) and set(v) == {"grid"}}
    if not axes:
        return [hparams]
    out = []
    for combo in itertools.product(*axes.values()):
        out.append({**hparams, **dict(zip(axes, combo))})
    return out


def _method_entries(raw_methods, errors: list[str], presets: dict | None = None,
                    alone: set[str] | None = None) -> list[tuple[str, str, dict, dict | None]]:
    """(label, method name, validated full hyper-parameters, the entry's own resolved recipe or None) for each
    method entry and grid point; the labels of entries with ``alone: true`` are added to ``alone``."""
    registry = load_methods()
    entries = []
    for i, entry in enumerate(raw_methods):
        where = f"methods[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or "name" not in entry:
            errors.append(f"{where}: expected a method name or a mapping with 'name', got {entry!r}")
            continue
        entry = dict(entry)
        name, label = entry.pop("name"), entry.pop("label", None)
        own = entry.pop("recipe", None)
        trained_alone = entry.pop("alone", False)
        own_recipe = None if own is None else _resolved_recipe(own, presets or load_presets(), f"{where}.recipe",
                                                               errors)
        if not isinstance(name, str) or not isinstance(label, (str, type(None))):
            key, value = ("name", name) if not isinstance(name, str) else ("label", label)
            errors.append(f"{where}.{key}: expected a string, got {value!r}")
            continue
        if name not in registry:
            errors.append(f"{where}.name: {registry.unknown_message(name)}")
            continue
        method_cls = registry.get(name)
        if not isinstance(trained_alone, bool):
            errors.append(f"{where}.alone: {trained_alone!r} is not true or false")
            continue
        if trained_alone and not method_cls.trains_alone:
            alone_methods = ", ".join(n for n, m in registry.items() if m.trains_alone)
            errors.append(f"{where}.alone: True; 'alone: true' trains each network of a group as a cell of its own, "
                          f"which only methods whose networks learn from the labels alone ({alone_methods}) can; "
                          "remove it")
            continue
        empty = [k for k, v in entry.items() if isinstance(v, dict) and set(v) == {"grid"} and not v["grid"]]
        if empty:
            errors.append(f"{where}.{empty[0]}: grid: [] sweeps no value, so the entry would train no cell; give "
                          "one value or more (grid: [a, b]), or a plain value")
            continue
        grid = _expand_hparam_grid(entry)
        for hparams in grid:
            hparams = _unknown_keys(hparams, method_cls.HParams, where, errors)
            try:
                full = method_cls.HParams.model_validate(hparams).cell_dict()
            except ValidationError as e:
                errors.extend(_pydantic_lines(e, where))
                continue
            point = label or name
            if len(grid) > 1:
                swept = ",".join(f"{k}={hparams[k]}" for k in hparams if isinstance(entry[k], dict))
                point = f"{point}[{swept}]"
            entries.append((point, name, full, own_recipe))
            if trained_alone and alone is not None:
                alone.add(point)
    labels = [label for label, _, _, _ in entries]
    for label in sorted({l for l in labels if labels.count(l) > 1}):
        errors.append(f"methods: label {label!r} is used twice; give one entry a distinct 'label'")
    return entries


def _resolved_recipe(raw, presets: dict, where: str, errors: list[str]) -> dict | None:
    """A recipe (preset name or mapping) resolved and validated: the suite's, or a method entry's own (its paper's,
    in a suite comparing methods each under its own recipe); None, with the errors listed, when it is invalid."""
    try:
        resolved = _unknown_keys(resolve_recipe(raw, presets, where), Recipe, where, errors)
        return Recipe.model_validate(resolved).model_dump(mode="json")
    except KeyError as e:
        errors.append(str(e.args[0]))
    except ValidationError as e:
        errors.extend(_pydantic_lines(e, where))
    return None


def load_suite(path: str | Path, overrides: list[str] | tuple = (), plugins: list[str] | tuple = ()) -> Suite:
    """Parse, validate and expand a suite file, with command-line ``key=value`` overrides applied to it first and
    its plug-ins (``plugins:``, and ``plugins`` from the command line) imported; raises :class:`SuiteError` listing
    every problem."""
    path = Path(path)
    try:
        raw = apply_overrides(dict(read_yaml_mapping(path, "suite file")), list(overrides))
    except (YamlFileError, OverrideError) as e:
        raise SuiteError([f"{path}: {e}" if isinstance(e, OverrideError) else str(e)]) from None
    named = raw.get("plugins") or []
    if not isinstance(named, list) or not all(isinstance(p, str) for p in named):
        raise SuiteError([f"{path}: plugins: expected a list of module names or .py files, got {named!r}"])
    try:
        for spec in named:
            load_plugin(spec, path.parent)
        for spec in plugins:
            load_plugin(spec)
        load_methods()  # and every installed plug-in's entry points
    except (PluginError, NameClash) as e:
        raise SuiteError([f"{path}: plugins: {e}"]) from None
    if isinstance(raw.get("dataset"), str):
        raw["dataset"] = {"name": raw["dataset"]}
    errors: list[str] = []

    presets = {**load_presets(), **(raw.get("recipes") or {})}
    looped: set[str] = set()
    for name in raw.get("recipes") or {}:  # each of the suite's own presets, used by a cell or not
        try:
            resolve_recipe(name, presets, f"recipes.{name}")
        except KeyError as e:
            chain = str(e.args[0]).rsplit(": ", 1)[-1].split(" -> ") if "in a loop" in str(e.args[0]) else []
            if name not in looped:  # a loop is one line, not one per preset in it
                errors.append(str(e.args[0]))
            looped.update(chain)
    raw_recipe = raw.get("recipe")
    recipe_dict = None
    if "recipe" in raw:
        recipe_dict = _resolved_recipe(raw["recipe"], presets, "recipe", errors)
        raw["recipe"] = recipe_dict or {}

    raw = _unknown_keys(raw, SuiteSpec, "", errors)
    spec = None
    try:
        spec = SuiteSpec.model_validate(raw)
    except ValidationError as e:
        errors.extend(_pydantic_lines(e))
        if isinstance(raw.get("methods"), list):  # a mistake elsewhere must not hide the method entries' own
            _method_entries(raw["methods"], errors, presets, set())

    cells: list[Cell] = []
    if spec is not None:
        if spec.dataset.name not in DATASETS:
            errors.append(f"dataset.name: {DATASETS.unknown_message(spec.dataset.name)}")
        _check_trackers(spec, errors)
        alone: set[str] = set()
        methods = _method_entries(spec.methods, errors, presets, alone)
        _check_groups(spec.groups, methods, errors, spec.resources.stack_peers, spec.resources.stack_seeds)
        _check_seed_stacking(spec.resources, errors)
        _check_layout(spec, methods, errors)
        _check_paper_table(spec, methods, errors)
        if recipe_dict is not None and not errors:
            dataset = spec.dataset.model_dump(mode="json", exclude_none=True)
            for group, (label, name, hparams, own), seed in itertools.product(spec.groups, methods, spec.seeds):
                common = dict(method=name, hparams=hparams, dataset=dataset, recipe=own or recipe_dict, seed=seed,
                              label=label, suite=spec.name)
                if label in alone:  # one cell per network, for this group's row (cells alike are one cell)
                    cells += [Cell(group=(model,), row=tuple(group), position=i, **common)
                              for i, model in enumerate(group)]
                else:
                    cells.append(Cell(group=tuple(group), **common))
            cells = [dataclasses.replace(c, plugins=cell_plugins(c)) for c in cells]
        _check_stages(cells, spec.methods, errors)
        if spec.resources.stack_seeds and any(c.recipe.get("precision") == "fp16" for c in cells):
            errors.append("resources.stack_seeds: a recipe trains in fp16, whose loss scale would be shared by "
                          "every seed; use precision: bf16 (or fp32), or set stack_seeds: false")
    if errors:
        raise SuiteError([f"{path}: {line}" for line in dict.fromkeys(errors)])
    suite = Suite(spec, path, cells, scaled_down_notes(spec, raw_recipe, presets), list(overrides))
    if spec.resources.gpu == "auto":
        from harness.costs.packing import auto_gpu_share

        spec.resources.gpu, packing = auto_gpu_share(suite.plan, spec.resources)
        object.__setattr__(spec.resources, "packing", packing)
    return suite


def _check_trackers(spec: SuiteSpec, errors: list[str]) -> None:
    """Each tracker of ``log:`` registered (built in, a plug-in's, an installed package's) and its settings valid;
    ``spec.log`` then holds every setting, defaults filled in."""
    registry = load_trackers()
    for name, given in spec.log.items():
        if name not in registry:
            errors.append(f"log: {registry.unknown_message(name)}")
            continue
        model = registry.get(name).Options
        try:
            spec.log[name] = model.model_validate(_unknown_keys(given, model, f"log.{name}", errors)).model_dump()
        except ValidationError as e:
            errors.extend(_pydantic_lines(e, f"log.{name}"))


def scaled_down_notes(spec: SuiteSpec, raw_recipe, presets: dict) -> list[str]:
    """How a suite that mirrors a paper table is smaller than the paper's setting: another dataset than the
    table's, a subset of the images, fewer epochs than the preset it names.  The report puts them in its title,
    so that no one mistakes the run for a reproduction; a suite without a paper table claims nothing."""
    if spec.paper_table is None:
        return []
    from harness.papers.tables import load_paper_table

    notes = []
    theirs = load_paper_table(spec.paper_table.name).get("dataset")
    if theirs and spec.dataset.name != theirs:
        notes.append(f"{spec.dataset.name} in place of {theirs}")
    for split in ("train", "test"):
        if (n := getattr(spec.dataset, f"{split}_per_class")) is not None:
            notes.append(f"{n} {split} images per class")
    own = [m["recipe"] for m in spec.methods if isinstance(m, dict) and "recipe" in m]  # a method's own recipe
    for recipe in [raw_recipe, *own]:
        if isinstance(recipe, dict) and isinstance(recipe.get("base"), str) and "epochs" in recipe:
            base = resolve_recipe(recipe["base"], presets)
            if recipe["epochs"] < base.get("epochs", 0):
                notes.append(f"{recipe['epochs']} of {recipe['base']}'s {base['epochs']} epochs")
    return list(dict.fromkeys(notes))
