"""Whether each cell fits its data and its networks, checked by ``harness validate`` and before a run starts.

A batch larger than the training set, a held-out split as large as a class, a crop padding wider than the image or
a split point beyond a network's stages passes every field's own check and then fails, or silently misleads, inside
a trial hours later.  The data's figures come from :mod:`harness.data.facts` (no file is read; a dataset the facts
do not know, an ``imagefolder``, is checked by the run's pre-flight on its files), and every method is built on the
meta device: nothing is allocated and nothing trains.  Each problem is one line naming the key to change."""
from __future__ import annotations

import json
from collections import Counter

import timm
import torch

from harness.config.cell import Cell
from harness.data.facts import DATASET_FACTS, fewest_per_class, train_images
from harness.models.meta import ShapesOnly, Template
from harness.suite.consistency import method_where
from harness.suite.spec import Suite
from harness.training.method import MethodContext, load_methods


# the networks built so far on the meta device (they hold no memory), copied for each method that asks: building one
# costs about ten times copying it, and a suite (every shipped suite, in the tests) asks for the same few many times
_META_NETWORKS: dict[tuple, Template] = {}
_BUILD_ERRORS: dict[tuple, str | None] = {}  # _build_error's answers


class _NeedsSavedModules(Exception):
    """The method builds from a stage's saved modules (FT's paraphraser), which exist only after that stage ran."""


def fit_errors(suite: Suite) -> list[str]:
    """One line per mistake, for the first cell that shows it (cells alike share their line)."""
    methods = load_methods()
    lines: dict[str, None] = {}
    built: set[tuple] = set()
    entry = {c.hash: method_where(c, suite.spec.methods) for c in suite.cells}
    for c in suite.cells:  # a stage (a teacher) is the business of the entry that asks for it
        for stage in suite.plan.stages[c.hash].values():
            if stage.cell is not None:
                entry.setdefault(stage.cell.hash, f"{entry[c.hash]}.teacher")
    recipes = Counter(json.dumps(c.recipe, sort_keys=True) for c in suite.cells)
    shared = recipes.most_common(1)[0][0]  # the suite's ``recipe`` (as --smoke scaled it), unless entries override it
    said: set[str] = set()  # a mistake met again in another recipe (a teacher's, copied from the suite's) is one line
    for cell in suite.plan.everything:
        if cell.dataset["name"] not in DATASET_FACTS:
            continue
        method = methods.get(cell.method)
        hp = method.HParams.model_validate(cell.hparams)
        where = entry.get(cell.hash, "methods")
        recipe_key = "recipe" if json.dumps(cell.recipe, sort_keys=True) == shared else f"{where}.recipe"
        for line in _data_errors(cell, method.held_out_per_class(hp), where, recipe_key):
            what = line.split(": ", 1)[1]
            if what not in said:
                said.add(what)
                lines.setdefault(f"{suite.path}: {line}")
        key = (cell.method, json.dumps(cell.hparams, sort_keys=True), cell.group, cell.dataset["name"],
               (cell.recipe.get("augment") or {}).get("train_size"))
        if key not in built:
            built.add(key)
            problem = _build_error(cell, method, hp, suite.plan.stages[cell.hash])
            if problem:
                lines.setdefault(f"{suite.path}: {where}: {cell.method} cannot train {'+'.join(cell.group)}: {problem}")
    return list(lines)


def _data_errors(cell: Cell, held_out: int, where: str, recipe_key: str) -> list[str]:
    name = cell.dataset["name"]
    _, (_, height, width), classes = DATASET_FACTS[name]
    per = cell.dataset.get("train_per_class")
    subset = f" (dataset.train_per_class {per})" if per else ""
    per_class = fewest_per_class(cell.dataset)
    problems = []
    if held_out and held_out >= per_class:
        key = next((k for k, v in cell.hparams.items() if v == held_out), "held-out images per class")
        problems.append(f"{where}.{key}: {cell.method} holds out {held_out} training images per class, but {name} has "
                        f"{per_class} in its smallest class{subset}, leaving none to train on; "
                        f"valid: 1..{per_class - 1}")
        return problems
    images = train_images(cell.dataset) - held_out * classes
    batch = cell.recipe["batch_size"]
    if batch > images:
        kept = f" after {cell.method}'s held-out split" if held_out else ""
        problems.append(f"{recipe_key}.batch_size: {batch} is more than the {images} training images of {name}"
                        f"{subset}{kept}, so an epoch would be a single short step; valid: 2..{images}")
    augment = cell.recipe.get("augment") or {}
    side = min(height, width)
    for field in ("crop_padding", "cutout"):
        if (augment.get(field) or 0) > side and not augment.get("train_size"):
            problems.append(f"{recipe_key}.augment.{field}: {augment[field]} is more than the {side}-pixel side of "
                            f"{name}'s images; valid: 0..{side}")
    return problems


def _build_error(cell: Cell, method, hp, stages: dict) -> str | None:
    """Why the method cannot be built for the cell's networks and input (its own one-line ValueError), else None;
    answered once per process for each set of what it reads (a suite validated again, or another suite asking the
    same, costs nothing)."""
    side = (cell.recipe.get("augment") or {}).get("train_size")
    key = (method, json.dumps(cell.hparams, sort_keys=True), tuple(cell.group), cell.dataset["name"], side,
           cell.recipe["epochs"], cell.recipe["batch_size"],
           tuple((name, tuple(s.models or (s.cell.group if s.cell else ()))) for name, s in sorted(stages.items())))
    if key not in _BUILD_ERRORS:
        _BUILD_ERRORS[key] = _build(cell, method, hp, side, stages)
    return _BUILD_ERRORS[key]


def _build(cell: Cell, method, hp, side: int | None, stages: dict) -> str | None:
    try:
        build_on_meta(cell, method, hp, side, stages)
    except _NeedsSavedModules:
        return None
    except (ValueError, KeyError) as e:
        return str(e.args[0] if e.args else e).splitlines()[0][:300]
    return None


def build_on_meta(cell: Cell, method=None, hp=None, side: int | None = None, stages: dict | None = None):
    """The method of ``cell`` built for its networks and input on the meta device (nothing allocated), with its
    stages' networks as frozen teachers; its own ValueError where it cannot be built.  ``method``, ``hp``, ``side``
    and ``stages`` default to the cell's."""
    method = method or load_methods().get(cell.method)
    hp = hp if hp is not None else method.HParams.model_validate(cell.hparams)
    side = side if side is not None else (cell.recipe.get("augment") or {}).get("train_size")
    if stages is None:
        from harness.training.stages import stages_of

        stages = stages_of(cell)
    _, (chans, height, width), classes = DATASET_FACTS[cell.dataset["name"]]
    size = (side, side) if side else (height, width)

    def create(name: str) -> torch.nn.Module:
        key = (name, classes, chans)
        if key not in _META_NETWORKS:
            _META_NETWORKS[key] = Template(timm.create_model(name, num_classes=classes, in_chans=chans))
        return _META_NETWORKS[key].copy()  # a method may change its networks (split, wrap, freeze)

    def load_stage(name: str) -> list[torch.nn.Module]:
        stage = stages[name]
        return [create(m).requires_grad_(False).eval() for m in (stage.models or stage.cell.group)]

    def load_stage_modules(name: str) -> dict:
        raise _NeedsSavedModules(name)

    with torch.device("meta"), ShapesOnly():
        ctx = MethodContext(group=cell.group, num_classes=classes, in_chans=chans, image_size=size, num_train=1000,
                            epochs=cell.recipe["epochs"], steps_per_epoch=1, device=torch.device("meta"),
                            create_model=create, batch_size=cell.recipe["batch_size"], load_stage=load_stage,
                            load_stage_modules=load_stage_modules)
        return method(hp, ctx)
