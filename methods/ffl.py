"""FFL, Feature Fusion Learning (Kim, Hyun, Chung, Kwak; arXiv 1904.09058, ICPR 2020) for exactly 2 peers.

Two sub-networks and a fusion module.  The fusion module concatenates the two last feature maps (before global
pooling), applies a depthwise 3×3 conv + BN + ReLU and a pointwise 1×1 conv + BN + ReLU, pools globally and
classifies: the fused logits z_f.  With z_ens = (z1 + z2) / 2 (a logit average) and w(t) a ramp-up,

    L = CE(z1) + CE(z2) + CE(z_f) + w(t) · [KL(z_f → z1) + KL(z_f → z2) + KL(z_ens → z_f)],

where KL(a → b) = T² · KL(softmax(a / T) ‖ softmax(b / T)), batch mean, the target a detached: the fused
classifier teaches each sub-network, the sub-networks' ensemble teaches the fused classifier.

Structure (``shared_trunk``): for two networks of the same architecture the official CIFAR code shares the low
layers (conv1, layer1, layer2) and gives each sub-network its own copy of the last stage and classifier, like
ONE.  Here the cut is ``harness.models.adapter.split`` at stage index len(feature_info) − 2, so each branch holds the
last stage and the classifier (layer3 + fc of a CIFAR ResNet); for different architectures the two networks are
separate.  With per-peer views the shared trunk runs once per view.  Either way each peer stays deployable on its own:
net_k = branch_k(trunk(x)) or the k-th network.  ``deployed_parameters`` counts net1 + net2 (the trunk once);
the fusion module is reported apart.

Evaluated outputs: net1, net2, their ensemble ``ens`` (engine: mean of probabilities), and ``fused`` (z_f).

Choices, with their defaults and sources (official code: Jangho-Kim/FFL-pytorch, ``train_FFL.py``,
``our_network.py``, ``utils.py``; see ``docs/notes/official_code.md#ffl``):
- ``shared_trunk`` "auto": shared when the two names are equal (the official CIFAR code), separate otherwise
  (the paper's mixed pairs, e.g. WRN-16-2/ResNet-32; those need two networks).  True with two different
  architectures is an error.
- ``branch_init`` "independent": the second branch is the last stage(s) of a second, independently initialised
  network of the same architecture, whose trunk is dropped (the official ``layer3_1``/``layer3_2`` are drawn
  independently, with the network's own init); "copy" starts it as a deep copy of the first branch.
- ``temperature`` 3, T² scaling (``t2_scaling``), batch mean, targets detached: the official ``KLLoss``.
- ``target_eps`` 1e-7: the official ``KLLoss`` adds 1e-7 to the target probabilities (inside the log too):
  T² · mean_batch Σ_c (p_c + ε)(log(p_c + ε) − log q_c).  0 gives the textbook KL.
- ``rampup_epochs`` 80 and ``rampup`` "epoch": w = exp(−5 (1 − min(e, 80) / 80)²) with e the 0-based epoch
  index, constant within an epoch (the official ``sigmoid_rampup(epoch, 80)``; w(0) = exp(−5), never 0).
  "step" uses the fractional epoch (per-step ramp).  ``rampup_epochs`` 0 means w = 1.  The ramp length is in
  epochs, not a fraction of the run.
- ``detach_fused_features`` False: the official code feeds the fusion module the sub-networks' maps without
  detaching, so CE(z_f) and KL(z_ens → z_f) also train the sub-networks (through the fused path).  True stops
  that gradient at the maps.
- ``fusion_channels`` "mean": the pointwise conv maps C1 + C2 channels to (C1 + C2) // 2; the official module
  maps 2C → C for two equal widths C.  "sum" keeps C1 + C2, "max" max(C1, C2), or an integer.  The paper does
  not treat unequal widths.
- ``spatial_align`` "pool": when the two last maps differ in spatial size (the paper is silent; it never fuses
  such pairs), each map larger than the smaller size is adaptive-average-pooled down to it before the
  concatenation; "interpolate" bilinearly upsamples the smaller to the larger instead.
- The fusion module's convs are initialised N(0, √(2 / (k² · C_out))), BN γ = 1, β = 0, the Linear layer keeps
  PyTorch's default (official ``Fusion_module``).  Global average pooling replaces the official AvgPool2d(8)
  (the same on 8×8 CIFAR maps).
- Optimizers: the official code has two SGD optimizers (network wd 1e-4; fusion module wd 1e-5; both lr 0.1,
  momentum 0.9, Nesterov, the same MultiStep schedule), both stepped after one backward pass of the summed loss
  (the engine's default joint ``train_step``).  Here the networks use the recipe's optimizer ("peers") and the
  fusion module gets an optimizer of its own ("fusion"): the recipe's kind, momentum, Nesterov flag, learning
  rate and schedule, with weight decay ``fusion_weight_decay`` (1e-5) and, if ``fusion_lr`` is set, that
  initial learning rate (None: the recipe's ``optimizer.lr``, as the official code, or the networks' own
  ``peer_lr`` when the pair is one architecture that has one; both scaled with the batch size like the peers' and
  following the same schedule).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt
from torch import nn

from harness.models import adapter
from harness.models.meta import clone
from harness.training.method import HParams, Method, OptimGroup, register_method
from methods.common.losses import distill_kl, soft_targets


class FFLParams(HParams):
    shared_trunk: Literal["auto"] | bool = "auto"
    branch_init: Literal["independent", "copy"] = "independent"
    temperature: PositiveFloat = 3.0
    t2_scaling: bool = True
    target_eps: NonNegativeFloat = 1e-7
    rampup_epochs: NonNegativeFloat = 80.0
    rampup: Literal["epoch", "step"] = "epoch"
    detach_fused_features: bool = False
    fusion_channels: Literal["mean", "sum", "max"] | PositiveInt = "mean"
    spatial_align: Literal["pool", "interpolate"] = "pool"
    fusion_weight_decay: NonNegativeFloat = 1e-5
    fusion_lr: PositiveFloat | None = None


def rampup_weight(progress: float, rampup_epochs: float) -> float:
    """exp(−5 (1 − p / R)²) with p clipped to [0, R]; 1 when R = 0 (the official sigmoid_rampup)."""
    if rampup_epochs == 0:
        return 1.0
    phase = 1.0 - min(max(progress, 0.0), rampup_epochs) / rampup_epochs
    return math.exp(-5.0 * phase * phase)


def kl_to_target(student: torch.Tensor, target_logits: torch.Tensor, temperature: float, t2_scaling: bool,
                 eps: float) -> torch.Tensor:
    """T² · KL(softmax(target / T) + eps ‖ softmax(student / T)), batch mean, the target detached."""
    target = soft_targets(target_logits, temperature)
    if eps == 0:
        return distill_kl(student, target, temperature, t2_scaling)
    target = target + eps
    log_student = F.log_softmax(student / temperature, dim=1)
    kl = (target * (target.log() - log_student)).sum(1).mean()
    return kl * temperature**2 if t2_scaling else kl


def ffl_terms(z1: torch.Tensor, z2: torch.Tensor, zf: torch.Tensor, y: torch.Tensor, w: float,
              temperature: float = 3.0, t2_scaling: bool = True, eps: float = 0.0) -> dict[str, torch.Tensor]:
    """FFL's named loss terms from the two sub-networks' logits, the fused logits, labels and ramp weight."""
    t = temperature
    ensemble = (z1 + z2) / 2
    return {
        "ce/net1": F.cross_entropy(z1, y),
        "ce/net2": F.cross_entropy(z2, y),
        "ce/fused": F.cross_entropy(zf, y),
        "kl/net1": w * kl_to_target(z1, zf, t, t2_scaling, eps),
        "kl/net2": w * kl_to_target(z2, zf, t, t2_scaling, eps),
        "kl/fused": w * kl_to_target(zf, ensemble, t, t2_scaling, eps),
    }


class Branch(nn.Module):
    """A deployable peer: the (possibly shared) trunk, then this peer's own layers and classifier."""

    def __init__(self, trunk: nn.Module, head: nn.Module):
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class FusionModule(nn.Module):
    """cat(maps) → depthwise 3×3 + BN + ReLU → 1×1 to ``out_channels`` + BN + ReLU → global pool → Linear."""

    def __init__(self, channels: tuple[int, int], out_channels: int, num_classes: int,
                 spatial_align: str = "pool"):
        super().__init__()
        total = sum(channels)
        self.spatial_align = spatial_align
        self.depthwise = nn.Conv2d(total, total, 3, padding=1, groups=total, bias=False)
        self.bn1 = nn.BatchNorm2d(total)
        self.pointwise = nn.Conv2d(total, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.fc = nn.Linear(out_channels, num_classes)
        for m in (self.depthwise, self.pointwise):
            fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan))
        for bn in (self.bn1, self.bn2):
            nn.init.ones_(bn.weight)
            nn.init.zeros_(bn.bias)

    def align(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        sizes = [tuple(m.shape[2:]) for m in maps]
        if len(set(sizes)) == 1:
            return maps
        if self.spatial_align == "pool":
            size = tuple(min(s[i] for s in sizes) for i in range(2))
            return [m if tuple(m.shape[2:]) == size else F.adaptive_avg_pool2d(m, size) for m in maps]
        size = tuple(max(s[i] for s in sizes) for i in range(2))
        return [m if tuple(m.shape[2:]) == size else
                F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = torch.cat(self.align([a, b]), dim=1)
        x = F.relu(self.bn1(self.depthwise(x)))
        x = F.relu(self.bn2(self.pointwise(x)))
        return self.fc(x.mean((2, 3)))


@register_method("ffl")
class FFL(Method):
    """Two networks (shared trunk or separate) and a fused classifier on their last maps, distilled both ways."""

    HParams = FFLParams
    min_peers = 2
    max_peers = 2

    @classmethod
    def group_error(cls, hp, group):
        if hp.shared_trunk is True and group[0] != group[1]:
            return "shared_trunk true needs two networks of one architecture; use shared_trunk auto or false"
        return None

    # --- structure -------------------------------------------------------------------------------------
    def build(self) -> nn.ModuleDict:
        hp, ctx = self.hp, self.ctx
        if len(ctx.group) != 2:
            raise ValueError(f"ffl is defined for exactly 2 networks, got {len(ctx.group)}: {', '.join(ctx.group)}")
        same = ctx.group[0] == ctx.group[1]
        if hp.shared_trunk is True and not same:
            raise ValueError(f"ffl: shared_trunk needs two networks of one architecture, got {ctx.group[0]} and "
                             f"{ctx.group[1]}; use shared_trunk auto or false")
        self.shared = same if hp.shared_trunk == "auto" else bool(hp.shared_trunk)
        input_size = (ctx.in_chans, *ctx.image_size)
        if self.shared:
            first = ctx.create_model(ctx.group[0])
            stage = len(adapter.stage_info(first)) - 2
            trunk, head1 = adapter.split(first, stage)
            if hp.branch_init == "copy":
                head2 = clone(head1)
            else:
                _, head2 = adapter.split(ctx.create_model(ctx.group[1]), stage)
            peers = [Branch(trunk, head1), Branch(trunk, head2)]
            channels = (adapter.shapes(first, input_size)["last"][0],) * 2
        else:
            nets = [ctx.create_model(name) for name in ctx.group]
            peers = [Branch(nn.Identity(), net) for net in nets]
            channels = tuple(adapter.shapes(net, input_size)["last"][0] for net in nets)
        fusion = FusionModule(channels, self._fusion_width(channels), ctx.num_classes, hp.spatial_align)
        return nn.ModuleDict({"peers": nn.ModuleList(peers), "fusion": fusion})

    def _fusion_width(self, channels: tuple[int, int]) -> int:
        choice = self.hp.fusion_channels
        if isinstance(choice, int):
            return choice
        return {"mean": sum(channels) // 2, "sum": sum(channels), "max": max(channels)}[choice]

    @property
    def trunk(self) -> nn.Module:
        return self.peers[0].trunk

    def optim_groups(self) -> dict[str, OptimGroup]:
        (name1, name2), (p1, p2) = self.ctx.group, self.peers
        first = list(p1.parameters())  # the shared trunk (if any) goes with net1, once
        seen = {id(p) for p in first}
        second = [p for p in p2.parameters() if id(p) not in seen]
        fusion = list(self.modules["fusion"].parameters())
        # The recipe's optimizer (kind, momentum, Nesterov), learning rate and schedule, with the fusion module's own
        # weight decay (and learning rate, if set) as parameter-group overrides: a method does not see the recipe.
        group = {**self.extra_group(fusion, "fusion"), "weight_decay": self.hp.fusion_weight_decay}
        if self.hp.fusion_lr is not None:
            group["lr"] = self.hp.fusion_lr
        fusion_group = OptimGroup([group], optimizer=None, follow_schedule=True)
        return {
            "peers": OptimGroup([{"params": first, "model": name1}, {"params": second, "model": name2}]),
            "fusion": fusion_group,
        }

    def deployed_parameters(self) -> int:
        """net1 + net2, the shared trunk counted once; the fusion module is not deployed."""
        unique = {id(p): p for p in self.peers.parameters()}
        return sum(p.numel() for p in unique.values())

    def fusion_parameters(self) -> int:
        return sum(p.numel() for p in self.modules["fusion"].parameters())

    # --- forward -----------------------------------------------------------------------------------------
    def _forward(self, views: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(last feature maps, logits) of both peers; the shared trunk runs once per distinct input."""
        cache: dict[int, torch.Tensor] = {}
        maps, logits = [], []
        for peer, x in zip(self.peers, views):
            if self.shared:
                if id(x) not in cache:
                    cache[id(x)] = peer.trunk(x)
                h = cache[id(x)]
            else:
                h = x
            last = peer.head.forward_features(h)
            maps.append(last)
            logits.append(peer.head.forward_head(last))
        return maps, logits

    def _fuse(self, maps: list[torch.Tensor]) -> torch.Tensor:
        if self.hp.detach_fused_features:
            maps = [m.detach() for m in maps]
        return self.modules["fusion"](*maps)

    # --- training ----------------------------------------------------------------------------------------
    def ramp(self, step) -> float:
        progress = step.epoch if self.hp.rampup == "epoch" else step.progress
        return rampup_weight(progress, self.hp.rampup_epochs)

    def losses(self, batch, step):
        maps, (z1, z2) = self._forward([batch.view(0), batch.view(1)])
        zf = self._fuse(maps)
        hp = self.hp
        return ffl_terms(z1, z2, zf, batch.y, self.ramp(step), hp.temperature, hp.t2_scaling, hp.target_eps)

    # --- evaluation ----------------------------------------------------------------------------------------
    def predict(self, x):
        maps, (z1, z2) = self._forward([x, x])
        return {"net1": z1, "net2": z2, "fused": self.modules["fusion"](*maps)}
