"""Checkpoints of other codebases, renamed onto our networks: the CIFAR teacher files the field shares.

RepDistiller (CRD's code) released its trained CIFAR-100 teachers, and mdistiller redistributes the same files with
the same model code, so one layout serves both: ``{"model": state_dict, ...}``, whose names follow their model
files.  Our CIFAR networks keep the same parameters in the same order (they were written to match), under these
names:

- ResNets (``resnet8`` ... ``resnet110``, ``resnet8x4``, ``resnet32x4``): the same names;
- WideResNets: ``block1.layer.0.conv1`` → ``block1.0.conv1``, ``convShortcut`` → ``shortcut``, the last
  batch norm ``bn1`` → ``norm``;
- VGGs: the classifier ``classifier`` → ``fc``;
- ShuffleNetV1: ``linear`` → ``fc``;
- MobileNetV2: the seven ``blocks.<setting>.<block>`` groups → our four stages ``layer<k>.<block>`` (settings 1-2
  in ``layer1``, 3 in ``layer2``, 4-5 in ``layer3``, 6-7 in ``layer4``), ``classifier.0`` → ``fc``.

A layout is a function of (state dict, network) that returns the state dict under our names, or None where it does
not know that network; the loader tries ours first, then each layout here (:data:`KEY_LAYOUTS`), and records which
one fitted.  A researcher adds another codebase's layout with ``@KEY_LAYOUTS.register("name")``."""
from __future__ import annotations

import re
from typing import Callable

from torch import nn

from harness.registry import Registry

KeyLayout = Callable[[dict, nn.Module], "dict | None"]
KEY_LAYOUTS: Registry[KeyLayout] = Registry("checkpoint key layout")


def _mobilenetv2_blocks() -> dict[int, tuple[int, int]]:
    """RepDistiller's setting index → (our stage, the index of its first block in that stage)."""
    from harness.models.cifar_mobilenetv2 import _SETTINGS

    out, setting = {}, 0
    for stage, settings in enumerate(_SETTINGS, start=1):
        offset = 0
        for _, _, repeats, _ in settings:
            out[setting] = (stage, offset)
            offset += repeats
            setting += 1
    return out


def _rename_wrn(key: str) -> str:
    key = re.sub(r"^(block\d+)\.layer\.", r"\1.", key).replace(".convShortcut.", ".shortcut.")
    return re.sub(r"^bn1\.", "norm.", key)


def _rename_mobilenetv2(key: str) -> str:
    match = re.match(r"^blocks\.(\d+)\.(\d+)\.(.*)$", key)
    if match:
        stage, offset = _mobilenetv2_blocks()[int(match[1])]
        return f"layer{stage}.{offset + int(match[2])}.{match[3]}"
    return re.sub(r"^classifier\.0\.", "fc.", key)


_RENAMES: dict[str, Callable[[str], str]] = {
    "CifarResNet": lambda key: key,
    "CifarWideResNet": _rename_wrn,
    "CifarVGG": lambda key: re.sub(r"^classifier\.", "fc.", key),
    "CifarShuffleNetV1": lambda key: re.sub(r"^linear\.", "fc.", key),
    "CifarMobileNetV2": _rename_mobilenetv2,
}


@KEY_LAYOUTS.register("repdistiller")
def repdistiller(state: dict, network: nn.Module) -> dict | None:
    """RepDistiller's and mdistiller's CIFAR model files (see the module's docstring)."""
    rename = _RENAMES.get(type(network).__name__)
    return None if rename is None else {rename(k): v for k, v in state.items()}


def fit_state(state: dict, network: nn.Module) -> tuple[dict, str] | None:
    """``state`` under ``network``'s own names and the layout that named it ("harness" where it already fits), or
    None where no layout makes its names and shapes those of ``network``."""
    own = network.state_dict()

    def fits(candidate: dict | None) -> bool:
        return (candidate is not None and candidate.keys() == own.keys()
                and all(tuple(candidate[k].shape) == tuple(v.shape) for k, v in own.items()))

    if fits(state):
        return state, "harness"
    for name, layout in KEY_LAYOUTS.items():
        renamed = layout(state, network)
        if fits(renamed):
            return renamed, name
    return None


def misfit(state: dict, network: nn.Module) -> str:
    """Where ``state`` and ``network`` part, in a few words, under the layout that names most of its keys: the
    first tensor whose shape differs (a classifier for another number of classes), else the names missing."""
    own = network.state_dict()
    candidates = [state] + [layout(state, network) for _, layout in KEY_LAYOUTS.items()]
    best = max((c for c in candidates if c is not None), key=lambda c: len(c.keys() & own.keys()))
    for key, value in own.items():
        if key in best and tuple(best[key].shape) != tuple(value.shape):
            return f"{key} is {tuple(best[key].shape)} in the file, {tuple(value.shape)} in the network"
    missing, extra = sorted(own.keys() - best.keys()), sorted(best.keys() - own.keys())
    return (f"{len(missing)} of the network's tensors are not in the file (first {missing[:2]}), and {len(extra)} "
            f"of the file's are not in the network (first {extra[:2]})")
