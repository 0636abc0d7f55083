"""``harness list``: what can be named in a suite, with the facts needed to choose."""
from __future__ import annotations

import sys
import typing

from tabulate import tabulate

from harness.config.recipe import Recipe, load_presets, resolve_recipe
from harness.data.datasets import DATASETS
from harness.registry import origin, plugin_of
from harness.training.method import load_methods

HARNESS_MODEL_PREFIX = "cifar_"


def _hparam_line(name: str, field) -> str:
    """``name = default``, with the choices of a Literal field: ``target = 'general'  (naive|linear|...)``."""
    annotation = field.annotation
    parts = [annotation] if typing.get_origin(annotation) is typing.Literal else typing.get_args(annotation)
    choices = [a for arg in parts if typing.get_origin(arg) is typing.Literal for a in typing.get_args(arg)]
    if bool in parts:
        choices += [True, False]
    line = f"{name} = {field.default!r}"
    return f"{line}  ({'|'.join(map(str, choices))})" if choices else line


def list_methods() -> str:
    """Every registered method, one hyper-parameter per line with its default (and choices)."""
    rows = []
    for name, cls in load_methods().items():
        fields = cls.HParams.model_fields
        hparams = "\n".join(_hparam_line(k, f) for k, f in fields.items()) or "(none)"
        peers = f"{cls.min_peers}..{cls.max_peers or 'K'}"
        doc = cls.__doc__ or sys.modules[cls.__module__].__doc__ or ""
        summary = doc.strip().splitlines()[0] if doc.strip() else ""
        rows.append([name, peers, hparams, summary, origin(cls)])
    return tabulate(rows, headers=["method", "networks", "hyper-parameters = defaults", "what it is", "from"],
                    maxcolwidths=[None, None, None, 48, 40])


def list_models() -> str:
    """Every network the tables name, at its dataset's resolution: parameters and FLOPs."""
    import timm
    from timm.models._registry import model_entrypoint

    from harness.costs.networks import flops, parameters
    from harness.models.zoo import PAPER_MODELS, RESOLUTION

    rows = []
    for kind, classes in (("cifar", 100), ("imagenet", 1000)):
        by_model: dict[str, list[str]] = {}
        for paper, name in PAPER_MODELS[kind].items():
            by_model.setdefault(name, []).append(paper)
        extra = [n for n in timm.list_models(f"{HARNESS_MODEL_PREFIX}*") if kind == "cifar" and n not in by_model]
        if kind == "cifar":  # networks a plug-in registered in timm
            extra += [n for n in timm.list_models() if n not in by_model and n not in extra
                      and plugin_of(model_entrypoint(n))]
        for name in list(by_model) + extra:
            model = timm.create_model(name, num_classes=classes)
            size = (3, *RESOLUTION[kind])
            rows.append([name, ", ".join(by_model.get(name, [])), "x".join(map(str, size)), classes,
                         f"{parameters(model) / 1e6:.2f}", f"{flops(model, size) / 2e9:.3f}",
                         origin(model_entrypoint(name))])
    return tabulate(rows, headers=["model", "paper names", "input", "classes", "params (M)",
                                   "GMACs ('FLOPs' in papers)", "from"])


def list_datasets() -> str:
    load_methods()  # and the installed plug-ins' datasets
    rows = [[name, (fn.__doc__ or "").strip().splitlines()[0] if (fn.__doc__ or "").strip() else "", origin(fn)]
            for name, fn in DATASETS.items()]
    return tabulate(rows, headers=["dataset", "what it is", "from"])


def list_recipes() -> str:
    presets = load_presets()
    rows = []
    for name in sorted(presets):
        r = Recipe.model_validate(resolve_recipe(name, presets))
        rows.append([name, r.epochs, r.batch_size, f"{r.optimizer.name} {r.optimizer.lr}", r.optimizer.weight_decay,
                     f"{r.schedule.name} {r.schedule.milestones or ''}".strip(), r.source])
    return tabulate(rows, headers=["recipe", "epochs", "batch", "optimizer", "wd", "schedule", "source"])


def list_trackers() -> str:
    """Every experiment tracker a run can log to (``--log``, a suite's ``log:``): its settings with their defaults,
    the extra that installs it, and whether it is installed here."""
    import importlib.util

    from harness.tracking.trackers import load_trackers

    load_methods()  # and the installed plug-ins' trackers
    rows = []
    for name, cls in load_trackers().items():
        settings = "\n".join(_hparam_line(k, f) for k, f in cls.Options.model_fields.items())
        here = all(importlib.util.find_spec(m) is not None for m in cls.modules)
        install = f'pip install "okd-harness[{cls.extra}]"' if cls.extra else ""
        summary = (cls.__doc__ or "").strip().splitlines()[0] if (cls.__doc__ or "").strip() else ""
        rows.append([name, settings, summary, "yes" if here else f"no: {install}", origin(cls)])
    return tabulate(rows, headers=["tracker", "settings = defaults", "what it is", "installed", "from"],
                    maxcolwidths=[None, None, 40, 30, 30])


SECTIONS = {"methods": list_methods, "models": list_models, "datasets": list_datasets, "recipes": list_recipes,
            "trackers": list_trackers}


def listing(what: str | None) -> str:
    chosen = [what] if what else list(SECTIONS)
    return "\n\n".join(f"== {name} ==\n{SECTIONS[name]()}" for name in chosen)
