"""ONE, On-the-fly Native Ensemble (Lan, Zhu and Gong, NeurIPS 2018), and the branched network it shares
with CLNN (``methods/clnn.py``).

One network of the group's architecture is cut into a shared trunk and a head (``harness.models.adapter.split``);
the head is cloned into m = K branches (K = the group's size, all names the same network).  Branch i gives
logits z_i; a gate g = softmax(ReLU(BN1d(Linear(avgpool(trunk output))))) of length m builds the teacher
logit z_e = Σ_i g_i z_i.  Loss (official code, ``docs/notes/official_code.md#one``):

    Σ_i CE(z_i, y) + CE(z_e, y) + w(e) · T² · Σ_i KL(softmax(z_e / T) ‖ softmax(z_i / T)),

the teacher detached in the KL, T = 3, w(e) = exp(-5 (1 - e/80)²) for epoch index e < 80, else 1.
Evaluated outputs: ``net1..netm`` (branch i on the shared trunk: the deployed network i), ``ens`` (the
engine's mean of the branch probabilities, as TSB reports ONE's "Ens") and ``teacher`` (the gated logits).

Choices the paper leaves open (defaults from the official code, Lan1991Xu/ONE_NeurIPS2018 @54afde3):
- ``branch_stage``: the branches duplicate everything after this stage (an index into the model's
  feature_info, 0 = stem).  None = len(feature_info) - 2, i.e. the last stage is duplicated: ``layer3`` of
  a 3-stage CIFAR ResNet (official code) and Res4 of an ImageNet ResNet (KDCL Table 3).
- ``reinit_branches`` (True): branches 2..m get fresh weights so they do not start as copies (the
  official code builds every branch from scratch).  Branch 1 keeps the created network's weights, so at
  initialisation net1 is exactly the network ``create_model`` returned.
- ``branch_init`` "model": a fresh branch takes its weights from a newly created network of the same name
  (the architecture's own initialiser, e.g. Kaiming-normal fan-out convolutions, which is what the
  official code's branches get); "reset": ``harness.models.adapter.reset_parameters`` on a copy (PyTorch's layer
  defaults, e.g. Kaiming-uniform(a=√5), about 6× smaller conv weight variance).  Both draw from torch's
  RNG, so the cell's seed decides them.
- ``temperature`` 3, ``rampup_epochs`` 80 (``--consistency_rampup 80`` in both official scripts); the
  ramp-up is evaluated once per epoch on the 0-based epoch index (``rampup_per_step`` False), so
  w(0) = exp(-5) ≈ 0.0067, never exactly 0; True uses the fractional epoch ``Step.progress``.
- ``target_eps`` 1e-7: the official KL adds 1e-7 to the teacher's probabilities (0 = the textbook KL).
- ``detach_teacher`` True (official ``.data``); OKDDip's re-implementation lets the KL reach the teacher.
- KL terms summed over branches (not averaged), batch mean, times T²; CE on the gated teacher too.
- Every branch sees the same images (``batch.x``): the branches share one trunk, so a per-peer view
  setting of the dataset cannot apply.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from harness.models import adapter
from harness.models.meta import clone
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat

from harness.training.method import HParams, Method, OptimGroup, added_option, register_method
from methods.common.losses import distill_kl, warmup_gate


# --- the branched network (shared with CLNN) ---------------------------------------------------------------
class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward gradient multiplied by ``scale`` (CLNN's backward-pass rescaling)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    return x if scale == 1 else _ScaleGrad.apply(x, scale)


def same_architecture(group: tuple[str, ...], method: str) -> str:
    """The group's single network name; a ValueError when the group mixes architectures."""
    if len(set(group)) != 1:
        raise ValueError(f"{method} builds one multi-branch network, so every network of the group must be the "
                         f"same architecture; got {', '.join(group)}")
    return group[0]


def segments(model: nn.Module, stages: tuple[int, ...]) -> list[nn.Module]:
    """[trunk, segment between consecutive split stages ..., head]: ``model`` cut after every stage in ``stages``."""
    parts, rest = [], model
    for stage in stages:
        trunk, rest = adapter.split(rest, stage)
        parts.append(trunk)
    return parts + [rest]


def resolve_stages(model: nn.Module, stages: tuple[int, ...] | None, method: str) -> tuple[int, ...]:
    """Split stages, None meaning the last stage is duplicated (len(feature_info) - 2)."""
    count = len(adapter.stage_info(model))
    stages = (count - 2,) if stages is None else tuple(stages)
    if not stages or any(b <= a for a, b in zip(stages, stages[1:])) or stages[0] < 0 or stages[-1] > count - 2:
        raise ValueError(f"{method}: split stages must increase within 0..{count - 2} "
                         f"({type(model).__name__} has {count} feature stages, 0 = stem); got {list(stages)}")
    return stages


class BranchedNet:
    """A tree of network segments: a trunk, then at split level i every node fans out into ``fanouts[i]``.

    ``levels[0]`` = [trunk], ``levels[i]`` = the nodes after the i-th split (the last level holds the heads,
    which end with the classifier).  Node j of level i feeds on node j // fanouts[i-1] of level i-1.
    ``paths[h]`` is head h with every segment it runs on: the deployed network h.  The segments are plain
    references; the modules are registered through the peers (``nn.Sequential`` of the path).
    """

    def __init__(self, create_model, name: str, stages: tuple[int, ...] | None, fanouts: tuple[int, ...] | None,
                 heads: int, reinit: bool, init: str, method: str):
        base = create_model(name)
        self.stages = resolve_stages(base, stages, method)
        self.channels = [adapter.stage_info(base)[s]["num_chs"] for s in self.stages]  # input of each split
        self.fanouts = (heads,) if fanouts is None else tuple(fanouts)
        if len(self.fanouts) != len(self.stages) or any(f < 2 for f in self.fanouts) or math.prod(self.fanouts) != heads:
            raise ValueError(f"{method}: one fan-out (≥ 2) per split stage {list(self.stages)}, multiplying to the "
                             f"{heads} networks of the group; got {list(self.fanouts)}")
        base_parts = segments(base, self.stages)
        fresh: dict[int, list[nn.Module]] = {}  # copy index → the segments of a newly created network

        def node(level: int, j: int) -> nn.Module:
            if j == 0:
                return base_parts[level]
            if not reinit:
                return clone(base_parts[level])
            if init == "model":
                if j not in fresh:
                    fresh[j] = segments(create_model(name), self.stages)
                return fresh[j][level]
            seed = int(torch.randint(0, 2**31 - 1, ()))
            with torch.random.fork_rng(devices=[]):  # reset_parameters seeds torch; keep the global stream
                return adapter.reset_parameters(clone(base_parts[level]), seed)

        self.levels = [[base_parts[0]]]
        for level, fanout in enumerate(self.fanouts, start=1):
            self.levels.append([node(level, j) for j in range(len(self.levels[-1]) * fanout)])
        self.paths = []
        for h in range(heads):
            path, j = [], h
            for level in range(len(self.levels) - 1, -1, -1):
                path.insert(0, self.levels[level][j])
                if level:
                    j //= self.fanouts[level - 1]
            self.paths.append(nn.Sequential(*path))

    def forward(self, x: torch.Tensor, rescale: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(trunk output, logits of every head); the trunk runs once, every inner node once.

        ``rescale``: the gradient flowing back into a node from its children is multiplied by 1/fan-out
        (forward unchanged), so a segment shared by n heads gets 1/n of their summed gradient.
        """
        trunk = self.levels[0][0](x)
        outputs = [trunk]
        for level, fanout in enumerate(self.fanouts, start=1):
            outputs = [segment(scale_grad(outputs[j // fanout], 1.0 / fanout) if rescale else outputs[j // fanout])
                       for j, segment in enumerate(self.levels[level])]
        return trunk, outputs


def peer_optim_groups(method: Method) -> dict[str, OptimGroup]:
    """One parameter group per deployed network, keyed by its name, each parameter in the first network that
    holds it (group 1 = trunk + branch 1, group k = branch k's own segments); extra modules in one more group."""
    seen: set[int] = set()
    groups = []
    for name, peer in zip(method.ctx.group, method.peers):
        params = [p for p in peer.parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        groups.append({"params": params, "model": name})
    extra = [p for key, module in method.modules.items() if key != "peers" for p in module.parameters()
             if id(p) not in seen]
    return {"peers": OptimGroup(groups + ([method.extra_group(extra)] if extra else []))}


class BranchedMethod(Method):
    """A method that trains one network of the group's architecture with a shared trunk and K branches."""

    min_peers = 2

    @classmethod
    def group_error(cls, hp, group):
        if len(set(group)) != 1:
            return "it builds one network with a branch per peer, so every network must be the same architecture"
        fanouts = getattr(hp, "fanouts", None)
        if fanouts is not None and (any(f < 2 for f in fanouts) or math.prod(fanouts) != len(group)):
            return f"fanouts {list(fanouts)} must each be ≥ 2 and multiply to the {len(group)} networks of the group"
        return None

    def build_net(self, stages, fanouts) -> BranchedNet:
        name = same_architecture(self.ctx.group, self.name)
        self.net = BranchedNet(self.ctx.create_model, name, stages, fanouts, len(self.ctx.group),
                               self.hp.reinit_branches, self.hp.branch_init, self.name)
        return self.net

    def optim_groups(self):
        return peer_optim_groups(self)

    def deployed_parameters(self) -> int:
        """One deployed network: the trunk once plus one branch."""
        return sum(p.numel() for p in self.peers[0].parameters())

    def parameter_breakdown(self) -> dict[str, int]:
        """Deployed network, the other branches, and extra modules (the gate), in parameters."""
        total = sum(p.numel() for p in self.peers.parameters())
        extra = sum(p.numel() for key, m in self.modules.items() if key != "peers" for p in m.parameters())
        deployed = self.deployed_parameters()
        return {"deployed": deployed, "other_branches": total - deployed, "extra_modules": extra}


# --- ONE ---------------------------------------------------------------------------------------------------
class ONEParams(HParams):
    temperature: PositiveFloat = 3.0
    branch_stage: NonNegativeInt | None = None
    reinit_branches: bool = True
    branch_init: Literal["model", "reset"] = "model"
    rampup_epochs: NonNegativeFloat = 80.0
    rampup_per_step: bool = False
    target_eps: NonNegativeFloat = 1e-7
    detach_teacher: bool = True
    # distillation zero for the first n epochs (TSB re-implements every baseline with its 20-epoch warm-up, Sec. 4.1)
    warmup_epochs: int = added_option(0, ge=0)


def sigmoid_rampup(epoch: float, length: float) -> float:
    """exp(-5 (1 - e/L)²) with e clipped to [0, L]; 1 when L is 0 (the official ``utils/ramps.py`` curve)."""
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(epoch, 0.0), length) / length
    return math.exp(-5.0 * phase * phase)


def gated_teacher(branch_logits: list[torch.Tensor], gate: torch.Tensor) -> torch.Tensor:
    """z_e = Σ_i g_i z_i: the gate (B × m) weights the branch logits per sample."""
    return sum(gate[:, i: i + 1] * z for i, z in enumerate(branch_logits))


def one_terms(branch_logits: list[torch.Tensor], teacher: torch.Tensor, y: torch.Tensor, weight: float,
              hp: ONEParams) -> dict[str, torch.Tensor]:
    """ONE's loss pieces: CE of every branch and of the teacher, and w · T² · KL(teacher ‖ branch i)."""
    t = hp.temperature
    source = teacher.detach() if hp.detach_teacher else teacher
    target = F.softmax(source / t, dim=1) + hp.target_eps
    terms = {f"ce/net{i + 1}": F.cross_entropy(z, y) for i, z in enumerate(branch_logits)}
    terms["ce/teacher"] = F.cross_entropy(teacher, y)
    for i, z in enumerate(branch_logits):
        terms[f"kl/net{i + 1}"] = weight * distill_kl(z, target, t)
    return terms


@register_method("one")
class ONE(BranchedMethod):
    """m branches on a shared trunk, distilled from their gated ensemble."""

    HParams = ONEParams

    def build(self) -> nn.ModuleDict:
        net = self.build_net(None if self.hp.branch_stage is None else (self.hp.branch_stage,), None)
        m = len(self.ctx.group)
        gate = nn.Sequential(nn.Linear(net.channels[0], m), nn.BatchNorm1d(m), nn.ReLU())
        return nn.ModuleDict({"peers": nn.ModuleList(net.paths), "gate": gate})

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """(branch logits, gate (B × m, rows sum to 1), teacher logits)."""
        trunk, logits = self.net.forward(x)
        gate = F.softmax(self.modules["gate"](trunk.mean((2, 3))), dim=1)
        return logits, gate, gated_teacher(logits, gate)

    def rampup(self, step) -> float:
        """The distillation weight: 0 during a warm-up, then the official sigmoid ramp-up."""
        epoch = step.progress if self.hp.rampup_per_step else step.epoch
        return warmup_gate(step, self.hp.warmup_epochs) * sigmoid_rampup(epoch, self.hp.rampup_epochs)

    def losses(self, batch, step):
        logits, _, teacher = self.forward(batch.x)
        return one_terms(logits, teacher, batch.y, self.rampup(step), self.hp)

    def predict(self, x):
        logits, _, teacher = self.forward(x)
        return {**{f"net{i + 1}": z for i, z in enumerate(logits)}, "teacher": teacher}
