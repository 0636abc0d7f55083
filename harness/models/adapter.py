"""One way for every method to reach inside any network created by name through timm.

- :func:`extract`: logits, the feature map of every stage, the last map before pooling and the pooled
  embedding, from one forward pass (timm's ``forward_intermediates``).
- :func:`shapes`: the shapes of all of these, from ``feature_info`` alone (no forward pass).
- :func:`split`: a shared trunk and a head that can be cloned into branches, at a stage or at any block
  (ONE and CLNN branch after stage 2; ACKD's DnBm learners at a down-sampling layer plus m blocks).

Nothing here changes a model's ``forward``.  The split relies on the model's feature path being the
blocks listed by :func:`blocks`, applied in order; ``tests/test_adapter.py`` checks that for every model.
"""
from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from harness.models.meta import Template

HEAD_MODULES = {"global_pool", "head_drop", "flatten", "pool"}  # used by forward_head, not by features


@dataclass
class Features:
    logits: torch.Tensor
    stages: list[torch.Tensor]  # one per feature_info entry: the stem, then each stage
    last: torch.Tensor  # forward_features: the last map before global pooling
    embedding: torch.Tensor  # pooled, pre-logits

    @property
    def blocks(self) -> list[torch.Tensor]:
        """The stage outputs without the stem (AMLN's 'blocks', FitNet/AT's intermediate maps)."""
        return self.stages[1:]


def _parts(model: nn.Module, x: torch.Tensor) -> tuple:
    last, stages = model.forward_intermediates(x)
    embedding = model.forward_head(last, pre_logits=True)
    return model.get_classifier()(embedding), stages, last, embedding


# networks whose feature path was compiled (resources.compile): extract runs the compiled function; copies of them
# (deep copies, loaded stages) are not in it and run eagerly
_COMPILED: "weakref.WeakKeyDictionary[nn.Module, Callable]" = weakref.WeakKeyDictionary()


def extract(model: nn.Module, x: torch.Tensor) -> Features:
    compiled = _COMPILED.get(model)
    return Features(*(compiled(x) if compiled is not None else _parts(model, x)))


def compile_features(model: nn.Module, **options) -> None:
    """``torch.compile`` of :func:`extract` on ``model`` (``forward_intermediates`` is not the compiled
    ``__call__``, so compiling the module alone leaves every feature method eager)."""
    _COMPILED[model] = torch.compile(functools.partial(_parts, model), **options)


@torch.no_grad()
def probe(model: nn.Module, input_size: tuple[int, int, int]) -> Features:
    """Features of a zero batch of 2, in eval mode: the real map shapes, for sizing per-network modules.

    :func:`shapes` derives sizes from the reductions alone, which misses floor-rounding pools (VGG on 28×28
    gives 3×3, not 4×4).  Eval mode leaves the BN statistics alone and the pass draws no random numbers.
    """
    param = next(model.parameters())
    x = torch.zeros(2, *input_size, dtype=param.dtype, device=param.device)
    was_training = model.training
    model.eval()
    try:
        return extract(model, x)
    finally:
        model.train(was_training)


def stage_info(model: nn.Module) -> list[dict]:
    info = model.feature_info
    return list(info.info if hasattr(info, "info") else info)


def shapes(model: nn.Module, input_size: tuple[int, int, int]) -> dict:
    """Shapes (per sample) of every stage map, the last map, the embedding and the logits."""
    _, h, w = input_size
    stages = [(d["num_chs"], -(-h // d["reduction"]), -(-w // d["reduction"])) for d in stage_info(model)]
    last_reduction = stage_info(model)[-1]["reduction"]
    return {
        "stages": stages,
        "last": (model.num_features, -(-h // last_reduction), -(-w // last_reduction)),
        "embedding": (model.num_features,),
        "logits": (model.num_classes,),
    }


def blocks(model: nn.Module) -> list[str]:
    """Names of the modules of the feature path in forward order, Sequential containers opened up."""
    head = HEAD_MODULES | {model.pretrained_cfg.get("classifier", "fc")}
    names: list[str] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if not prefix and name in head:
                continue
            if isinstance(child, nn.Sequential) and len(child):
                walk(child, f"{full}.")
            else:
                names.append(full)

    walk(model, "")
    return names


def stage_end(model: nn.Module, stage: int) -> str:
    """The block at which stage ``stage`` (an index into feature_info; 0 = stem) ends."""
    module = stage_info(model)[stage]["module"]
    inside = [b for b in blocks(model) if b == module or b.startswith(f"{module}.")]
    if not inside:
        raise ValueError(f"{type(model).__name__}: stage module {module!r} is not on the feature path")
    return inside[-1]


class Trunk(nn.Module):
    """The blocks up to the split point; its output feeds every branch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def split(model: nn.Module, at: int | str) -> tuple[Trunk, nn.Module]:
    """(trunk, head) of ``model`` cut after stage ``at`` (int) or after the block named ``at`` (str).

    Both are copies with the other side's blocks replaced by identities, so ``head(trunk(x))`` equals
    ``model(x)``; clone the head (:func:`harness.models.meta.clone`) for as many branches as a method needs.
    """
    names = blocks(model)
    cut = stage_end(model, at) if isinstance(at, int) else at
    if cut not in names:
        raise ValueError(f"{type(model).__name__}: no block {cut!r}; blocks: {', '.join(names)}")
    position = names.index(cut) + 1
    template = Template(model)
    trunk, head = template.copy(), template.copy()
    for name in names[position:]:
        trunk.set_submodule(name, nn.Identity())
    trunk.reset_classifier(0)
    for name in names[:position]:
        head.set_submodule(name, nn.Identity())
    return Trunk(trunk), head


def reset_parameters(module: nn.Module, seed: int | None = None) -> nn.Module:
    """Re-initialise every layer that knows how (a cloned branch that must not start as a copy)."""
    if seed is not None:
        torch.manual_seed(seed)
    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return module
