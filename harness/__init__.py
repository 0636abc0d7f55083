"""Declarative benchmark harness for online knowledge distillation."""
from harness import _compat

_compat.install()  # before anything imports torchvision or timm

__version__ = "0.1.0"

API = ("load_suite", "run_suite", "results_frame", "prepare_run")  # harness/api.py, for notebooks and scripts


def __getattr__(name: str):
    """``from harness import load_suite, run_suite, results_frame``, imported on first use (``import harness``
    stays light: every trial process imports it for the torchvision shim)."""
    if name in API:
        from harness import api

        return getattr(api, name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
