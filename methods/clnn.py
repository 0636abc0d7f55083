"""CLNN, collaborative learning with intermediate-level representation sharing (Song and Chai, NeurIPS 2018).

One network of the group's architecture grows H = K classifier heads that share their lower layers
(the branched network of ``methods/one.py``).  Loss of head h:

    β · CE(z_h, y) + (1 - β) · T² · KL(t_h ‖ softmax(z_h / T)),   t_h = softmax(mean_{j≠h} z_j / T), detached,

with T = 2 and β = 0.5.  Backward-pass rescaling: the gradient flowing into a layer shared by n heads is
multiplied by 1/n (the forward pass is unchanged), applied at every split as 1/fan-out, so a segment shared
by n heads gets 1/n of their summed gradient.  Evaluated outputs: ``net1..netH`` (head h on its shared
layers, the deployed network h) and the engine's ``ens`` (mean of the heads' probabilities).

Choices the paper leaves open (no official code; defaults from the best third-party version, winycg/MCL-OKD
@c15a0fd ``main_cifar_cl_ilr.py``, ``docs/notes/official_code.md#clnn``):
- The sharing hierarchy: ``branch_stages`` (indices into feature_info, 0 = stem, increasing) with one
  ``fanouts`` entry per split, their product = H.  Default: one split after len(feature_info) - 2 into H heads
  (the last stage duplicated, as ONE and OKDDip's CL-ILR).  Two levels are supported: MCL-OKD's 4-head CIFAR
  ResNet is ``branch_stages: [1, 2], fanouts: [2, 2]``; KDCL Table 3's 4-head ResNet-18 (40.5M parameters)
  matches ``branch_stages: [2, 3], fanouts: [2, 2]`` (two Res4 copies per Res3 copy; checked by parameter count).
- ``rescale_grad`` True (the paper's backward-pass rescaling; False = plain summed gradients).
- ``temperature`` 2, ``beta`` 0.5; the target averages the other heads' *logits* (MCL-OKD).
- ``detach_target`` True (MCL-OKD; OKDDip's CL-ILR lets the gradient reach the other heads).
- ``reinit_branches`` / ``branch_init``: as ONE (fresh weights for every copy but the first, taken from a
  newly created network of the same name by default).
- KL batch mean, times T²; every head sees the same images (``batch.x``).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pydantic import Field, PositiveFloat

from harness.training.method import HParams, register_method
from methods.common.losses import distill_kl, soft_targets
from methods.one import BranchedMethod


class CLNNParams(HParams):
    temperature: PositiveFloat = 2.0
    beta: float = Field(0.5, ge=0.0, le=1.0)  # CE's share; KL gets 1 − beta
    branch_stages: tuple[int, ...] | None = None
    fanouts: tuple[int, ...] | None = None
    rescale_grad: bool = True
    detach_target: bool = True
    reinit_branches: bool = True
    branch_init: Literal["model", "reset"] = "model"


def peer_targets(logits: list[torch.Tensor], temperature: float, detach: bool = True) -> list[torch.Tensor]:
    """t_h = softmax(mean_{j≠h} z_j / T) for every head h."""
    total = sum(logits)
    others = [(total - z) / (len(logits) - 1) for z in logits]
    if detach:
        return [soft_targets(o, temperature) for o in others]
    return [F.softmax(o / temperature, dim=1) for o in others]


def clnn_terms(logits: list[torch.Tensor], y: torch.Tensor, hp: CLNNParams) -> dict[str, torch.Tensor]:
    """β · CE and (1 - β) · T² · KL(t_h ‖ head h) of every head."""
    targets = peer_targets(logits, hp.temperature, hp.detach_target)
    terms = {}
    for h, (z, t) in enumerate(zip(logits, targets)):
        terms[f"ce/net{h + 1}"] = hp.beta * F.cross_entropy(z, y)
        terms[f"kl/net{h + 1}"] = (1.0 - hp.beta) * distill_kl(z, t, hp.temperature)
    return terms


@register_method("clnn")
class CLNN(BranchedMethod):
    """H heads with hierarchically shared layers, each learning from the mean of the others."""

    HParams = CLNNParams

    def build(self) -> nn.ModuleDict:
        net = self.build_net(self.hp.branch_stages, self.hp.fanouts)
        return nn.ModuleDict({"peers": nn.ModuleList(net.paths)})

    def losses(self, batch, step):
        _, logits = self.net.forward(batch.x, rescale=self.hp.rescale_grad)
        return clnn_terms(logits, batch.y, self.hp)

    def predict(self, x):
        _, logits = self.net.forward(x)
        return {f"net{h + 1}": z for h, z in enumerate(logits)}
