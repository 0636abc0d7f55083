"""Networks and how to reach inside them: the CIFAR families registered in timm's registry (importing this package
registers them all), the map from the papers' names to registry names (``zoo``), the adapter every method uses to
read features and split networks (their costs: ``harness.costs``).

May import: harness.registry.
"""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):  # every network module registers its entry points on import
    importlib.import_module(f"{__name__}.{_module.name}")
