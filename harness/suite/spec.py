"""A suite file's spec: the pydantic models of its keys (dataset, resources, evaluation, layout, the paper table it
mirrors), each key typed, with its default and range, and :class:`Suite`, a validated suite with its cells.
Parsing a file and expanding it into cells is :mod:`harness.suite.schema`'s; the checks across keys are
:mod:`harness.suite.consistency`'s."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import (BaseModel, Field, NonNegativeFloat, PositiveFloat, PositiveInt, ValidationError,
                      field_validator, model_validator)

from harness.config.cell import Cell
from harness.config.recipe import Seed, Strict
from harness.config.yaml_file import shorten
from harness.papers.tables import PAPER_TABLES
from harness.registry import did_you_mean

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
    """The dataset every cell of the suite trains and is tested on."""

    name: str
    """A registered dataset (``harness list datasets``; a plug-in's too)."""
    root: str | None = None
    """Where it lives, for this suite only (else ``--data-root``, ``$HARNESS_DATA``, ``~/.cache/okd-harness/data``);
    not hashed."""
    download: bool | None = None
    """A dataset with a public archive that is missing from the data root is downloaded there (unless ``--offline``);
    false: never for this suite (the run stops in one line instead).  Not hashed."""
    pipeline: Literal["auto", "fast", "standard"] = "auto"
    """The input pipeline: tensors augmented on the device (fast), a DataLoader with torchvision transforms
    (standard), or the fast one where the data and augmentation allow (auto)."""
    views: Literal["shared", "per_peer"] = "shared"
    """One random augmentation of each image for every peer, or one per peer (KDCL's ICL)."""
    train_per_class: PositiveInt | None = None
    """Keep the first N training images of each class (a scaled-down run)."""
    test_per_class: PositiveInt | None = None
    """Keep the first N test images of each class."""
    label_noise: float | None = Field(None, ge=0.0, lt=1.0)
    """Symmetric noise on the training labels: each replaced, with this probability, by a class drawn uniformly
    (one fixed draw, the same for every cell and seed); the test labels stay clean.  Hashed only where set."""


class Resources(Strict):
    """What one cell asks of the cluster.  ``cpu`` and ``gpu`` are per worker (``cpu_per_worker`` and
    ``gpu_per_worker`` say the same, for suites that train a cell on several workers); ``workers`` > 1 trains a cell
    data-parallel, each worker on its share of every batch; ``grad_accumulation`` splits a worker's share into that
    many forward/backward passes whose gradients add up before one update (a batch larger than memory, as KDCL's
    2048).  None of these changes a cell's hash: the recipe's batch stays the global batch.  ``gpu_memory_gb`` is
    the memory of one of the cluster's GPUs, against which ``harness validate`` checks each cell's estimate."""

    cpu: PositiveFloat = 1
    """CPUs of one trial (of each worker of a data-parallel cell)."""
    gpu: NonNegativeFloat | Literal["auto"] = 0
    """GPUs of one trial (a fraction packs several trials on a GPU); "auto": the share whose packing fits the
    largest cell's memory."""
    cpu_per_worker: PositiveFloat | None = None
    """``cpu``, under the name suites with several workers use."""
    gpu_per_worker: NonNegativeFloat | None = None
    """``gpu``, under the name suites with several workers use (0 or 1 where ``workers`` > 1)."""
    workers: PositiveInt = 1
    """Workers that train one cell data-parallel (Ray Train), each on its share of every batch."""
    grad_accumulation: PositiveInt = 1
    """Passes per worker whose gradients add up before one update (a batch larger than memory)."""
    stack_peers: bool = False
    """The K peers of a cell as one grouped network: the same arithmetic up to float rounding, fewer and larger
    kernels.  Not hashed."""
    stack_seeds: bool = False
    """Several seeds of a cell as one grouped network of every seed's peers, one trial; each seed keeps its own
    record.  Not with workers, grad_accumulation or fp16.  Not hashed."""
    compile: bool = False
    """torch.compile of each network.  Not hashed."""
    deterministic: bool = False
    """Bit-identical re-training on CUDA: deterministic cuDNN and torch algorithms, no autotuning (slower; on the CPU
    runs repeat bit for bit without it).  Not hashed: the same cell."""
    gpu_memory_gb: PositiveFloat = 80
    """The memory of one of the cluster's GPUs, against which each cell's estimate is checked (an 80 GB A100/H100 is
    assumed where the suite does not say)."""
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
    """Which number of each cell the report shows, and how seeds are aggregated."""

    epoch: Literal["paper", "last", "best"] | list[Literal["last", "best"]] = "paper"
    """"paper": the epoch the paper of each cell's recipe reports (its ``report_epoch``; the last where the paper
    does not say); "last" or "best" test epoch; [best, last] shows one table of each."""
    aggregate: Literal["median", "mean", "std", "min", "max", "n"] = "median"
    """How a cell's seeds make one number."""
    metric: Literal["top1", "top5", "top1_error", "top5_error"] = "top1"
    """Accuracy, or error = 100 − accuracy (ImageNet tables)."""
    spread: bool = False
    """Each number ± its standard deviation over seeds (and its n where the cells' n differ)."""

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
    """The method label subtracted."""
    of: list[str]
    """The values summed over (e.g. [avg])."""
    references: dict[str, str] = {}
    """Another reference for some method labels."""

    def reference_of(self, label: str) -> str:
        return self.references.get(label, self.reference)

    def is_reference(self, label: str) -> bool:
        return label == self.reference or label in self.references.values()


class Layout(Strict):
    """The report's table: what its rows and columns are, and which values it shows."""

    rows: list[Literal["group", "method", "dataset", "value"]] = ["group"]
    """What the rows are, outermost first."""
    columns: list[Literal["group", "method", "dataset", "value"]] = ["method", "value"]
    """What the columns are, outermost first."""
    values: list[str] = ["net1", "net2", "avg", "ens"]
    """The outputs shown: net1..netK, avg, ens, an output a method adds (``teacher``, ``fused``), ``metric:output``
    (top5:avg), a gain's name, or a cost (params_m, train_gmacs, peer_gmacs)."""
    method_values: dict[str, list[str]] = {}
    """Where method and value are on the same side: the values shown for a method label ("*": any other), so that
    an offline table shows Ind's teacher and student but only the student of every other method."""
    gains: dict[str, Gain] = {}
    """Derived values by name, usable in ``values`` ({gain: {reference: ind, of: [avg]}})."""
    bold_best: bool = True
    """The best method's value in bold, as the papers print it."""
    paper_delta: bool = True
    """Beside the paper's number, ours − paper (false: "ours (paper)", a shorter cell)."""
    paper_layout: Literal["auto", "inline", "columns", "rows"] = "auto"
    """Where the paper's number goes: "inline" in our cell, "ours (paper, Δ)"; "columns": ours, paper (and Δ) in
    adjacent columns; "rows": a paper (and a Δ) row under each of ours; "auto": inline where the LaTeX fits a page's
    text width, else rows."""
    best_excludes: list[str] = []
    """"method/value" entries that do not compete for bold (ACKD Table 2's teacher: "ind/net1")."""
    stage_values: dict[str, str] = {}
    """"method/value" entries that show a stage's own accuracy instead of the method's cell: {"ind/net1": teacher}
    puts in the Teacher row the teacher the group's students learnt from."""

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
    """The paper's table whose numbers the report prints beside ours, and how our cells find their rows."""

    name: str
    """A paper table shipped with the harness (``harness/papers/data``)."""
    nets: dict[str, str] = {}
    """Our model name → the paper table's network name."""
    methods: dict[str, str | list[str]] = {}
    """Our method label → the paper table's method name, or several tried in order (the first with a number)."""
    eval: dict[str, dict[str, Literal["teacher", "student"]]] = {}
    """Offline tables (rows with ``eval: teacher|student``): our value → the role it is, per method label, "*" for
    any other; e.g. {"*": {net1: student}, ind: {net1: teacher, net2: student}}."""
    value_keys: dict[str, dict[str, str]] = {}
    """Our value → the key of the paper's row that holds it, per method label ("*" for any other): a table that
    keeps numbers under the metric's name ({"*": {net1: top1}}), or prints an offline student as net2."""
    match: dict[str, dict] = {}
    """Per method label, keys a paper row must also have (rows that differ only in them): {"KDCL ICL": {icl: true}}."""
    group: list[str] | dict[str, list[str]] | None = None
    """The networks the paper's rows name, where they are not this suite's group (paper names, e.g. [resnet34,
    resnet18]); per method label where they differ."""

    def group_of(self, label: str) -> list[str] | None:
        return self.group.get(label) if isinstance(self.group, dict) else self.group

    @field_validator("name")
    @classmethod
    def _known_table(cls, name):
        if name not in PAPER_TABLES:
            raise ValueError(f"unknown paper table {name!r}{did_you_mean(name, PAPER_TABLES)}")
        return name


class SuiteSpec(Strict):
    """A suite file: a grid of cells (dataset × group × method × seed) and the table they fill."""

    name: str
    """Names the report files and the Ray experiments (letters, digits, '_' and '-')."""
    title: str = ""
    """The report's title (say "scaled-down" where it is not the paper's setting)."""
    description: str = ""
    """Free text for the index of suites."""
    dataset: DatasetSpec
    """The dataset (see its section)."""
    groups: list[list[str]]
    """Peer groups: each a list of 1..K networks created by name through timm (``harness list models``)."""
    methods: list
    """Each a method name, or a mapping with ``name``, an optional ``label`` and ``recipe``, and its
    hyper-parameters (a ``{grid: [...]}`` value sweeps one)."""
    seeds: list[Seed]
    """The seeds each (group, method) trains with: one cell each."""
    recipe: dict
    """How cells train: a preset name (``harness list recipes``), a mapping of the recipe's keys, or ``{base: PRESET,
    ...}`` with the keys that differ."""
    recipes: dict[str, dict] = {}
    """Presets of this suite, by name, usable as ``recipe`` or a method's ``recipe``."""
    resources: Resources = Resources()
    """What one trial asks of the cluster (see its section)."""
    evaluation: Evaluation = Evaluation()
    """Which numbers the report shows (see its section)."""
    table: Layout = Layout()
    """The report's table (see its section)."""
    paper_table: PaperTableRef | None = None
    """The paper's table printed beside ours (see its section)."""
    plugins: list[str] = []
    """Modules or .py files (relative to the suite file) that register methods, models, datasets or trackers."""
    log: dict[str, dict] = {}
    """Experiment trackers every cell of a run logs to, each with its settings: a name, a list of names, or a
    mapping {wandb: {project: okd}, mlflow: {}} (``harness list trackers``)."""

    @field_validator("name")
    @classmethod
    def _slug(cls, name):
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"{name!r} must use only letters, digits, '_' and '-' (it names files)")
        if len(name) > 100:
            raise ValueError(f"{len(name)} characters is too long: at most 100 (it names files)")
        return name

    @field_validator("log", mode="before")
    @classmethod
    def _trackers(cls, value):
        """One form for the three spellings: ``{name: settings}``."""
        if value is None:
            return {}
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return {name: {} for name in value}
        if isinstance(value, dict) and all(isinstance(v, (dict, type(None))) for v in value.values()):
            return {name: settings or {} for name, settings in value.items()}
        raise ValueError("expected a tracker's name, a list of names, or a mapping of names to their settings "
                         "(log: {wandb: {project: okd}})")

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

    @functools.cached_property
    def plan(self):
        """The plan of a run of this suite (:class:`harness.suite.plan.RunPlan`), derived on first use, once."""
        from harness.suite.plan import RunPlan

        return RunPlan.of(self.cells)

    def labels(self) -> list[str]:
        return list(dict.fromkeys(c.label for c in self.cells))

    def stage_cells(self, name: str) -> dict[str, Cell]:
        """Per group (its ``group_name``): the cell of the stage ``name`` that the group's cells declare (the
        teacher they learn from), the one most of them share where they differ (ESKD's own teacher is a stage of
        another name)."""
        found: dict[str, list[Cell]] = {}
        for cell in self.cells:
            stage = self.plan.stages[cell.hash].get(name)
            if stage is not None and stage.cell is not None:
                found.setdefault(cell.group_name, []).append(stage.cell)
        return {group: max(cells, key=lambda c: sum(o.hash == c.hash for o in cells)) for group, cells in found.items()}


# ------------------------------------------------------------------------------------------------ errors
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
