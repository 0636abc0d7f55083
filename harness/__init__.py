"""Declarative benchmark harness for online knowledge distillation."""
from harness import _compat

_compat.install()  # before anything imports torchvision or timm

__version__ = "0.1.0"
