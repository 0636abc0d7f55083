"""Distillation methods, one module each; importing this package registers every module in it.

May import: harness.config, harness.data, harness.models, harness.training, harness.results, harness.registry,
methods.common.
"""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
