"""Suite files: YAML that names a grid of (dataset, peer group, method, seed) cells, validated all at once.

Every mistake is reported on one line: the file, the key path, the bad value and what would be valid.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import (BaseModel, Field, NonNegativeFloat, PositiveFloat, PositiveInt, ValidationError, field_validator,
                      model_validator)

from harness.config.cell import Cell, hashed_recipe
from harness.config.recipe import Recipe, Seed, Strict, load_presets, resolve_recipe
from harness.config.yaml_file import YamlFileError, read_yaml_mapping, shorten
from harness.data.datasets import DATASETS
from harness.papers.tables import PAPER_TABLES
from harness.registry import did_you_mean
from harness.suite.overrides import OverrideError, apply_overrides
from harness.training.method import load_methods

AGGREGATES = ("median", "mean", "std", "min", "max", "n")
METRICS = ("top1", "top5", "top1_error", "top5_error")  # error = 100 − accuracy (ImageNet tables)


class SuiteError(ValueError):
    """All problems of a suite file, one per line."""

    def __init__(self, lines: list[str]):
        # a value echoed back (an alias bomb, a huge name) is shortened where it is quoted; this caps the rest
        lines = [shorten(line, 2000) for line in lines]
        super().__init__("\n".join(lines))
        self.lines = lines


class DatasetSpec(Strict):
    name: str
    root: str | None = None
    download: bool = False
    pipeline: Literal["auto", "fast", "standard"] = "auto"  # auto: fast where the data and augmentation allow
    views: Literal["shared", "per_peer"] = "shared"  # per_peer: each peer its own random view (KDCL's ICL)
    train_per_class: PositiveInt | None = None
    test_per_class: PositiveInt | None = None
    # symmetric label noise on the training labels: each replaced, with this probability, by a class drawn uniformly
    # (one fixed draw, the same for every cell and seed); the test labels stay clean.  Hashed only where set.
    label_noise: float | None = Field(None, ge=0.0, lt=1.0)


class Resources(Strict):
    """What one cell asks of the cluster.  ``cpu`` and ``gpu`` are per worker (``cpu_per_worker`` and
    ``gpu_per_worker`` say the same, for suites that train a cell on several workers); ``workers`` > 1 trains a cell
    data-parallel, each worker on its share of every batch; ``grad_accumulation`` splits a worker's share into that
    many forward/backward passes whose gradients add up before one update (a batch larger than memory, as KDCL's
    2048).  None of these changes a cell's hash: the recipe's batch stays the global batch.  ``gpu_memory_gb`` is
    the memory of one of the cluster's GPUs, against which ``harness validate`` checks each cell's estimate."""

    cpu: PositiveFloat = 1
    gpu: NonNegativeFloat | Literal["auto"] = 0  # "auto": the share whose packing fits the largest cell's memory
    cpu_per_worker: PositiveFloat | None = None
    gpu_per_worker: NonNegativeFloat | None = None
    workers: PositiveInt = 1
    grad_accumulation: PositiveInt = 1
    # the K peers of a cell as one grouped network (harness/models/stacked.py): the same arithmetic up to float
    # rounding, fewer and larger kernels; torch.compile of each network.  Neither changes a cell's hash.
    stack_peers: bool = False
    # several seeds of a cell as one grouped network of every seed's peers (harness/training/bundle.py): one trial
    # trains them all on its share; each seed keeps its own record.  Not with workers, grad_accumulation or fp16.
    stack_seeds: bool = False
    compile: bool = False
    # bit-identical re-training on CUDA: deterministic cuDNN and torch algorithms, no autotuning (slower; on the CPU
    # runs repeat bit for bit without it). Not hashed: the same cell.
    deterministic: bool = False
    gpu_memory_gb: PositiveFloat = 80  # an assumption (an 80 GB A100/H100) where the suite does not say
    packing: ClassVar[str | None] = None  # how gpu: auto was resolved, in words (set on the instance by load_suite)

    @model_validator(mode="after")
    def _one_name_each(self):
        for key in ("cpu", "gpu"):
            if key in self.model_fields_set and f"{key}_per_worker" in self.model_fields_set:
                raise ValueError(f"give {key} or {key}_per_worker (the same number: per worker), not both")
            if getattr(self, f"{key}_per_worker") is not None:  # one spelling from here on: cpu and gpu
                setattr(self, key, getattr(self, f"{key}_per_worker"))
                setattr(self, f"{key}_per_worker", None)
        if self.workers > 1 and self.gpu not in (0, 1, "auto"):
            # a share would put two ranks on one GPU (NCCL refuses a duplicate GPU); a worker's second GPU would idle
            raise ValueError(f"a data-parallel worker trains on one whole GPU: gpu_per_worker is 0 or 1 where "
                             f"workers > 1, not {self.gpu:g}; for more GPUs per cell raise workers")
        return self

    @property
    def replicas(self) -> int:
        """Forward/backward passes per update: the recipe's batch is split this many ways."""
        return self.workers * self.grad_accumulation


class Evaluation(Strict):
    # "paper": the epoch the paper of each cell's recipe reports (its ``report_epoch``: the best test epoch for the
    # RepDistiller-based recipes, last where the paper does not say); [best, last] shows one table of each
    epoch: Literal["paper", "last", "best"] | list[Literal["last", "best"]] = "paper"
    aggregate: Literal["median", "mean", "std", "min", "max", "n"] = "median"
    metric: Literal["top1", "top5", "top1_error", "top5_error"] = "top1"  # error = 100 − accuracy (ImageNet tables)
    spread: bool = False  # each number ± its standard deviation over seeds (and its n where the cells' n differ)

    @field_validator("epoch")
    @classmethod
    def _epochs(cls, epoch):
        if isinstance(epoch, list) and (not epoch or len(set(epoch)) != len(epoch)):
            raise ValueError(f"a list of epochs names best and/or last once each, not {epoch}")
        return epoch

    def epochs(self) -> list[str]:
        """The epoch choices the report shows, one table each."""
        return list(self.epoch) if isinstance(self.epoch, list) else [self.epoch]


class Gain(Strict):
    """A derived value: Σ over ``of`` of (this method's aggregate − ``reference``'s), e.g. AMLN's ↑ and KDCL's gain.

    The reference must train under the same recipe as the method it is subtracted from (``harness validate``
    refuses a gain across recipes); ``references`` names another reference for some labels (AMLN's ONE and FFL,
    which carry FFL's recipe, against a vanilla trained the same way)."""

    reference: str
    of: list[str]
    references: dict[str, str] = {}

    def reference_of(self, label: str) -> str:
        return self.references.get(label, self.reference)

    def is_reference(self, label: str) -> bool:
        return label == self.reference or label in self.references.values()


class Layout(Strict):
    rows: list[Literal["group", "method", "dataset", "value"]] = ["group"]
    columns: list[Literal["group", "method", "dataset", "value"]] = ["method", "value"]
    values: list[str] = ["net1", "net2", "avg", "ens"]
    # where method and value are on the same side: the values shown for a method label ("*": any other), so
    # that an offline table shows Ind's teacher and student but only the student of every other method
    method_values: dict[str, list[str]] = {}
    gains: dict[str, Gain] = {}  # derived values by name, usable in ``values`` ({gain: {reference: ind, of: [avg]}})
    bold_best: bool = True  # the best method's value in bold, as the papers print it
    paper_delta: bool = True  # beside the paper's number, ours − paper (false: "ours (paper)", a shorter cell)
    # where the paper's number goes: "inline" in our cell, "ours (paper, Δ)"; "columns": ours, paper (and Δ) in
    # adjacent columns under each heading; "rows": a paper (and a Δ) row under each of ours, about half as wide;
    # "auto": inline where the LaTeX fits a page's text width, else rows
    paper_layout: Literal["auto", "inline", "columns", "rows"] = "auto"
    best_excludes: list[str] = []  # "method/value" entries that do not compete (ACKD Table 2's teacher: "ind/net1")
    # "method/value" entries that show a stage's own accuracy instead of the method's cell: {"ind/net1": teacher} puts
    # in the Teacher row the stage teacher the group's students learnt from (its own record, seed and hash)
    stage_values: dict[str, str] = {}

    def shows(self, where: dict) -> bool:
        """Whether a row or column (axis → entry) is shown under ``method_values``."""
        if not self.method_values or "method" not in where or "value" not in where:
            return True
        wanted = self.method_values.get(where["method"], self.method_values.get("*"))
        return wanted is None or where["value"] in wanted

    @field_validator("values")
    @classmethod
    def _known_values(cls, values):
        for v in values:
            metric, _, output = v.rpartition(":")
            if metric and metric not in METRICS or not output.replace("_", "").isalnum():
                raise ValueError(f"{v!r} is not an output name; valid: net1..netK, avg, ens, or an output a method "
                                 "evaluates (e.g. ONE's gated teacher), optionally as another metric "
                                 f"({', '.join(METRICS)}) of it, e.g. top5:avg")
        return values


class PaperTableRef(Strict):
    name: str
    nets: dict[str, str] = {}  # our model name -> the paper table's network name
    # our method label -> the paper table's method name, or several tried in order (the first with a number)
    methods: dict[str, str | list[str]] = {}
    # offline tables (rows with ``eval: teacher|student``): our value -> the role it is, per method label, "*" for
    # any other; e.g. {"*": {net1: student, teacher: teacher}, ind: {net1: teacher, net2: student}}
    eval: dict[str, dict[str, Literal["teacher", "student"]]] = {}
    # our value -> the key of the paper's row that holds it, per method label ("*" for any other): a table that
    # keeps numbers under the metric's name ({"*": {net1: top1}}), or prints an offline student as net2 ({kd: {net1:
    # net2}})
    value_keys: dict[str, dict[str, str]] = {}
    # per method label, keys a paper row must also have (rows that differ only in them): {"KDCL ICL": {icl: true}}
    match: dict[str, dict] = {}
    # the networks the paper's rows name, where they are not this suite's group: ACKD Table 5's ONE row, trained on
    # ResNet-18 branches, sits in its ResNet-34 -> ResNet-18 table (paper names, e.g. [resnet34, resnet18]); per
    # method label where they differ (ACKD Table 1's rows name [teacher, proxy, student])
    group: list[str] | dict[str, list[str]] | None = None

    def group_of(self, label: str) -> list[str] | None:
        return self.group.get(label) if isinstance(self.group, dict) else self.group

    @field_validator("name")
    @classmethod
    def _known_table(cls, name):
        if name not in PAPER_TABLES:
            raise ValueError(f"unknown paper table {name!r}{did_you_mean(name, PAPER_TABLES)}")
        return name


class SuiteSpec(Strict):
    name: str
    title: str = ""
    description: str = ""
    dataset: DatasetSpec
    groups: list[list[str]]
    methods: list
    seeds: list[Seed]
    recipe: dict
    recipes: dict[str, dict] = {}
    resources: Resources = Resources()
    evaluation: Evaluation = Evaluation()
    table: Layout = Layout()
    paper_table: PaperTableRef | None = None

    @field_validator("name")
    @classmethod
    def _slug(cls, name):
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"{name!r} must use only letters, digits, '_' and '-' (it names files)")
        if len(name) > 100:
            raise ValueError(f"{len(name)} characters is too long: at most 100 (it names files)")
        return name

    @field_validator("groups", "seeds", "methods")
    @classmethod
    def _non_empty(cls, value):
        if not value:
            raise ValueError("must list at least one entry")
        return value


class Suite:
    """A validated suite: its spec, where it came from, and the cells it expands to."""

    def __init__(self, spec: SuiteSpec, path: Path, cells: list[Cell], scaled_down: list[str] | None = None,
                 overrides: list[str] | None = None):
        self.spec, self.path, self.cells = spec, path, cells
        self.scaled_down = scaled_down or []  # how it is smaller than the paper's setting (see scaled_down_notes)
        self.overrides = overrides or []  # key=value from the command line, applied to the file (suite/overrides.py)

    @property
    def name(self) -> str:
        return self.spec.name

    def labels(self) -> list[str]:
        return list(dict.fromkeys(c.label for c in self.cells))

    def stage_cells(self, name: str) -> dict[str, Cell]:
        """Per group (its ``group_name``): the cell of the stage ``name`` that the group's cells declare (the
        teacher they learn from), the one most of them share where they differ (ESKD's own teacher is a stage of
        another name)."""
        from harness.training.stages import stages_of

        found: dict[str, list[Cell]] = {}
        for cell in self.cells:
            stage = stages_of(cell).get(name)
            if stage is not None and stage.cell is not None:
                found.setdefault(cell.group_name, []).append(stage.cell)
        return {group: max(cells, key=lambda c: sum(o.hash == c.hash for o in cells)) for group, cells in found.items()}


# ------------------------------------------------------------------------------------------------ loading
def _path_str(loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unknown_keys(data, model: type[BaseModel], path: str, errors: list[str]):
    """Report unknown keys (with a did-you-mean and the valid keys) and return ``data`` without them, so
    that validation of the rest still runs and every other mistake is reported in the same pass."""
    if not isinstance(data, dict):
        return data
    fields = model.model_fields
    clean = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in fields:
            errors.append(f"{where}: unknown key{did_you_mean(key, fields)}; valid keys: {', '.join(fields)}")
            continue
        annotation = fields[key].annotation
        args = getattr(annotation, "__args__", ()) or (annotation,)
        if getattr(annotation, "__origin__", None) is dict and isinstance(value, dict):  # dict[str, Model]
            model_of = args[-1]
            if isinstance(model_of, type) and issubclass(model_of, BaseModel):
                value = {k: _unknown_keys(v, model_of, f"{where}.{k}", errors) for k, v in value.items()}
            clean[key] = value
            continue
        for candidate in args:
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                value = _unknown_keys(value, candidate, where, errors)
        clean[key] = value
    return clean


def _pydantic_lines(error: ValidationError, prefix: str = "") -> list[str]:
    lines = []
    for e in error.errors():
        if e["type"] == "extra_forbidden":
            continue  # reported by _unknown_keys with its did-you-mean
        where = _path_str(((prefix,) if prefix else ()) + tuple(e["loc"]))
        message = e["msg"].removeprefix("Value error, ")
        shown = e.get("input")
        got = "" if e["type"] == "missing" or isinstance(shown, dict) else f", got {shorten(repr(shown), 100)}"
        lines.append(f"{where}: {message}{got}")
    return lines


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
            if stage.checkpoint and not Path(stage.checkpoint).expanduser().is_file():
                key = next((k for k, v in cell.hparams.items() if v == stage.checkpoint), "checkpoint")
                errors.append(f"{where(cell)}.{key}: no such file {stage.checkpoint!r}; give the path of a saved "
                              "network (the harness's results/weights/<hash>.pt or a state_dict file)")


def load_suite(path: str | Path, overrides: list[str] | tuple = ()) -> Suite:
    """Parse, validate and expand a suite file, with command-line ``key=value`` overrides applied to it first;
    raises :class:`SuiteError` listing every problem."""
    path = Path(path)
    try:
        raw = apply_overrides(dict(read_yaml_mapping(path, "suite file")), list(overrides))
    except (YamlFileError, OverrideError) as e:
        raise SuiteError([f"{path}: {e}" if isinstance(e, OverrideError) else str(e)]) from None
    if isinstance(raw.get("dataset"), str):
        raw["dataset"] = {"name": raw["dataset"]}
    errors: list[str] = []

    presets = {**load_presets(), **(raw.get("recipes") or {})}
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
        _check_stages(cells, spec.methods, errors)
        if spec.resources.stack_seeds and any(c.recipe.get("precision") == "fp16" for c in cells):
            errors.append("resources.stack_seeds: a recipe trains in fp16, whose loss scale would be shared by "
                          "every seed; use precision: bf16 (or fp32), or set stack_seeds: false")
    if errors:
        raise SuiteError([f"{path}: {line}" for line in dict.fromkeys(errors)])
    suite = Suite(spec, path, cells, scaled_down_notes(spec, raw_recipe, presets), list(overrides))
    if spec.resources.gpu == "auto":
        from harness.suite.packing import auto_gpu_share

        spec.resources.gpu, packing = auto_gpu_share(cells, spec.resources)
        object.__setattr__(spec.resources, "packing", packing)
    return suite


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
