"""AMLN, Adversarial-based Mutual Learning Network (Zhang, Lu, Gong, Luo, Liu; ECCV 2020) for K ≥ 2 peers.

Loss of peer j (Eq. 9 = Eq. 3 + Eq. 8) with partner l (l = 3 − j for two peers), blocks b = 1..B:

    L_j   = CE(z_j, y) + T² · KL(ρ_l ‖ ρ_j) + L_D^j + β · L_F^j
    L_D^j = Σ_b CE(D_{j←l}^b(f_j^b), "partner")                   generator side of Eq. 1 (non-saturating)
    L_F^j = Σ_b d(C_{j←l}^b(f_j^b), sg(f_l^last))                  Eq. 2

with ρ = softmax(z / T), T = 3, ρ_l and f_l detached (sg), f^b the block outputs (``adapter.extract(...).blocks``:
the stage outputs after the stem, three on a CIFAR ResNet/WRN) and f^last the final feature map the classifier
pools (``Features.last``; the last block's output on ResNets/WRNs).  The discriminators D_{j←l}^b are trained
apart, alternately with the peers, on

    L_disc^j = Σ_b CE(D_{j←l}^b(sg f_j^b), "own") + CE(D_{j←l}^b(sg f_l^b), "partner")      (D's side of Eq. 1).

Every CE, KL and distance is a batch mean.  Logged terms per peer k: ``ce/netk``, ``kl/netk`` (T² included),
``adv/netk`` (L_D^k), ``feat/netk`` (β · L_F^k) and ``disc/netk`` (the discriminators' own loss, not part of L_k).

Modules (keys of ``self.modules``; per ordered pair ``net{j}_from_net{l}``, one entry per block):
- ``discriminators``: D_{j←l}^b = σ, then three convolutions with ReLU between them, the last with two outputs,
  averaged over positions into two logits (0 = peer j's own feature, 1 = the partner's).  The two features first
  get a common shape: when their widths or sizes differ (different architectures), each is average-pooled
  (adaptive, over channels and positions, no parameters) to the smaller width and the smaller size; σ is then a
  1×1 convolution from that width c to max(1, c // ``disc_reduction``), followed by 3×3 conv + ReLU, 3×3 conv
  with stride 2 + ReLU, 1×1 conv to 2 channels.  σ belongs to the discriminator (its optimizer) and is shared by
  both inputs.  [guess] A learned σ per network owned by D would let D tell the sources apart by its own weights,
  which no generator can fool; owned by the generators it could collapse both features to a constant.
- ``containers``: C_{j←l}^b = depthwise 3×3 conv (stride max(1, ⌊H_in / H_target⌋), padding 1, no bias) → BN →
  ReLU → pointwise 1×1 conv to the partner's final width, mapping f_j^b onto the shape of f_l^last.  [guess]
  (the paper names only the depthwise and pointwise convs.)  A size the stride does not reach exactly is closed
  by adaptive average pooling (larger) or bilinear interpolation (smaller).  Shapes come from one probe forward
  pass at build time.  Containers belong to peer j: its parameter group of the recipe's optimizer.

Choices where the paper is silent or ambiguous (``docs/notes/amln.md#open-questions-and-choices``; there is no
reference code):
- ``adversarial_loss`` "ce": D is a two-class classifier ("two neurons") trained with CE, and generator j is trained
  so that D labels its feature as the partner's (``docs/notes/amln.md#adversarial-loss``).  "linear" is Eq. 1 literally
  with D(x) = softmax(D logits)[partner]: D maximises mean(1 − D(f_j)) + mean(D(f_l)) (its loss is the negative),
  generator j minimises mean(1 − D(f_j)).  Either way the generator's term has weight 1 (Eq. 3).
- ``feature_distance`` "mse": d = mean over all elements of the squared difference; "l2": the Euclidean norm of
  the difference per sample, batch mean.  The target f_l^last is detached.
- ``beta`` 1: β of Eq. 3 is never given.
- ``kl_direction`` "forward": KL(ρ_l ‖ ρ_j) with ρ_l detached, as every public DML/ONE/FFL code;
  "reverse" is Eq. 7 literally, KL(ρ_j ‖ ρ_l) (ρ_l still detached).  T² scaling always (Eq. 8).
- ``temperature`` 3 (Sec. 3.3).
- Different architectures (Table 3, 5): blocks are paired by position from the first; when one network has more
  blocks the extra deepest ones are not discriminated (L_F still targets the partner's final map).  Widths and
  sizes differ: the discriminator pools both features to a common shape and the container is strided/pooled onto
  the partner's final map, as above.
- K ≥ 2 peers: the paper has two.  Here every ordered pair (j, l) has its own discriminator and container per
  block, so peer j learns from every other peer in both directions; L_KL^j, L_D^j, L_F^j (and the discriminators'
  loss) are averaged over the K − 1 partners (``peer_reduction`` "mean", like DML's KL) or summed ("sum").  For
  K = 2 this is exactly the paper's 6 discriminators and 6 containers.
- Updates (``update`` "joint"): each step runs every peer once; then (1) a discriminator step on the detached
  features (only discriminator weights change) and (2) a generator step of the peers and containers on Σ_j L_j,
  through the just-updated discriminators, whose weights are frozen for it.  "sequential" follows Alg. 1: peer
  by peer, each turn re-runs every peer (the others without gradient, so later peers see the earlier peers'
  updated outputs), updates peer k's discriminators, then peer k.  The joint default matches this harness's DML
  (Table 6 case B).
- Discriminator optimizer (never stated): Adam, ``disc_lr`` 2e-4, betas (0.5, 0.999), no weight decay, constant
  learning rate (``disc_follow_schedule`` False; the recipe's batch-size scaling of learning rates still
  applies); the DCGAN setting.  The peers and containers use the recipe's optimizer (AMLN: SGD, Nesterov).
- Ablation (Table 6): ``use_kl``, ``use_adversarial`` (L_D) and ``use_feature`` (L_F) switch the terms; L_C is
  always on.  ``case`` presets them (setting a switch against the case is an error):
  A = L_C (vanilla), B = L_C + L_KL (DML), C = B + L_F (no L_D), D = B + L_D (no L_F), E = all four (AMLN).
  Modules of a switched-off term are not built (no discriminators without L_D, no containers without L_F).
- Evaluated outputs: the peers, net1..netK (and the engine's ensemble).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt, model_validator
from torch import nn

from harness.models import adapter
from harness.training.method import HParams, Method, OptimGroup, added_option, register_method
from methods.common.losses import distill_kl, full_precision, soft_targets

OWN, PARTNER = 0, 1  # the discriminator's two classes

# Table 6: which of the switchable terms each case trains with (L_C is always on).
CASES: dict[str, dict[str, bool]] = {
    "A": {"use_kl": False, "use_adversarial": False, "use_feature": False},
    "B": {"use_kl": True, "use_adversarial": False, "use_feature": False},
    "C": {"use_kl": True, "use_adversarial": False, "use_feature": True},
    "D": {"use_kl": True, "use_adversarial": True, "use_feature": False},
    "E": {"use_kl": True, "use_adversarial": True, "use_feature": True},
}


class AMLNParams(HParams):
    case: Literal["A", "B", "C", "D", "E"] | None = None
    use_kl: bool = True
    use_adversarial: bool = True
    use_feature: bool = True
    temperature: PositiveFloat = 3.0
    kl_direction: Literal["forward", "reverse"] = "forward"
    beta: NonNegativeFloat = 1.0
    adversarial_loss: Literal["ce", "linear"] = "ce"
    feature_distance: Literal["mse", "l2"] = "mse"
    disc_reduction: PositiveInt = 2
    # the number of blocks B (AMLN: b = 1, 2, 3): the last B stage outputs, the earlier stages joining block 1; None:
    # every stage after the stem (3 on the CIFAR networks; AMLN Table 4 cuts ResNet-34's 4 stages into 3)
    blocks: int | None = added_option(None, ge=1)
    disc_lr: PositiveFloat = 2e-4
    disc_betas: tuple[float, float] = (0.5, 0.999)
    disc_weight_decay: NonNegativeFloat = 0.0
    disc_follow_schedule: bool = False
    peer_reduction: Literal["mean", "sum"] = "mean"
    update: Literal["joint", "sequential"] = "joint"

    @model_validator(mode="before")
    @classmethod
    def apply_case(cls, data):
        """A Table 6 case sets the three switches; an explicit switch that disagrees with it is an error."""
        if not isinstance(data, dict) or data.get("case") not in CASES:
            return data
        preset = CASES[data["case"]]
        clash = {k: data[k] for k in preset if k in data and data[k] != preset[k]}
        if clash:
            raise ValueError(f"case {data['case']} sets {preset}; it contradicts {clash}")
        return {**data, **preset}


# --- loss pieces ---------------------------------------------------------------------------------------------
def outcome_kl(student: torch.Tensor, partner: torch.Tensor, temperature: float,
               direction: str = "forward") -> torch.Tensor:
    """T² · KL between softened predictions, batch mean, the partner detached.

    "forward": KL(ρ_partner ‖ ρ_student); "reverse": KL(ρ_student ‖ ρ_partner) (AMLN Eq. 7 as printed).
    """
    if direction == "forward":
        return distill_kl(student, soft_targets(partner, temperature), temperature)
    log_s = F.log_softmax(student / temperature, dim=1)
    log_p = F.log_softmax(partner.detach() / temperature, dim=1)
    return temperature**2 * (log_s.exp() * (log_s - log_p)).sum(1).mean()


def _labels(logits: torch.Tensor, cls: int) -> torch.Tensor:
    return torch.full((logits.shape[0],), cls, dtype=torch.long, device=logits.device)


@full_precision
def discriminator_loss(own_logits: torch.Tensor, partner_logits: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """D's loss on its two-logit outputs for the own network's and the partner's features (Eq. 1, D's side)."""
    if kind == "ce":
        return F.cross_entropy(own_logits, _labels(own_logits, OWN)) + \
            F.cross_entropy(partner_logits, _labels(partner_logits, PARTNER))
    own = F.softmax(own_logits, dim=1)[:, PARTNER]
    partner = F.softmax(partner_logits, dim=1)[:, PARTNER]
    return -((1 - own).mean() + partner.mean())


@full_precision
def generator_loss(own_logits: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """The own network's adversarial loss: make D take its feature for the partner's (Eq. 1, min side)."""
    if kind == "ce":
        return F.cross_entropy(own_logits, _labels(own_logits, PARTNER))
    return (1 - F.softmax(own_logits, dim=1)[:, PARTNER]).mean()


@full_precision
def feature_distance(a: torch.Tensor, b: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """d of Eq. 2: mean squared difference ("mse") or per-sample Euclidean distance, batch mean ("l2")."""
    if kind == "mse":
        return F.mse_loss(a, b)
    return (a - b).flatten(1).norm(dim=1).mean()


# --- modules -------------------------------------------------------------------------------------------------
def pool_to(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Adaptive average pooling of an (N, C, H, W) map over channels and positions down to ``shape`` (C, H, W)."""
    if tuple(x.shape[1:]) == tuple(shape):
        return x
    return F.adaptive_avg_pool3d(x.unsqueeze(1), shape).squeeze(1)


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Average-pool a larger map, bilinearly interpolate a smaller one, to spatial ``size``."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    if x.shape[2] >= size[0] and x.shape[3] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class BlockDiscriminator(nn.Module):
    """D_{j←l}^b: common shape, σ (1×1 channel reduction), three convs with ReLU → two logits (own, partner)."""

    def __init__(self, own_shape: tuple[int, int, int], partner_shape: tuple[int, int, int], reduction: int = 2):
        super().__init__()
        self.common = tuple(min(a, b) for a, b in zip(own_shape, partner_shape))
        width = max(1, self.common[0] // reduction)
        self.sigma = nn.Conv2d(self.common[0], width, 1)
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2, 1),
        )

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.body(self.sigma(pool_to(feature, self.common))).mean((2, 3))


class AlignmentContainer(nn.Module):
    """C_{j←l}^b: depthwise conv (strided) + BN + ReLU + pointwise conv onto the partner's final map's shape."""

    def __init__(self, in_shape: tuple[int, int, int], target_shape: tuple[int, int, int]):
        super().__init__()
        channels, h, w = in_shape
        target_channels, th, tw = target_shape
        stride = max(1, min(h // th, w // tw))
        self.size = (th, tw)
        self.depthwise = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.pointwise = nn.Conv2d(channels, target_channels, 1)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return resize_to(self.pointwise(F.relu(self.bn(self.depthwise(feature)))), self.size)


def pair_key(student: int, partner: int) -> str:
    """Key of the modules through which peer ``student`` (0-based) learns from peer ``partner``."""
    return f"net{student + 1}_from_net{partner + 1}"


@contextmanager
def frozen(module: nn.Module | None):
    """Stop gradients into ``module``'s parameters for the block (the discriminators during a generator step)."""
    params = [p for p in module.parameters() if p.requires_grad] if module is not None else []
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _shape(x: torch.Tensor) -> tuple[int, int, int]:
    return tuple(int(s) for s in x.shape[1:])


@register_method("amln")
class AMLN(Method):
    """AMLN: mutual KL + block-wise adversarial (discriminators) and block-to-final (containers) distillation."""

    HParams = AMLNParams
    min_peers = 2

    @classmethod
    def report_notes(cls, hp: AMLNParams, cell) -> list[str]:
        if hp.update != "joint":
            return []
        return ["AMLN updates its peers jointly (every peer once per step, then one discriminator step and one step "
                "of the peers on the sum of their losses), where the paper's Algorithm 1 updates S1, then S2; "
                "update: sequential follows the algorithm"]

    # --- structure -------------------------------------------------------------------------------------
    def block_maps(self, features: adapter.Features) -> list[torch.Tensor]:
        """f^1..f^B: the last ``blocks`` stage outputs (every stage after the stem by default)."""
        return features.blocks[-self.hp.blocks:] if self.hp.blocks else features.blocks

    def build(self) -> nn.ModuleDict:
        modules = super().build()
        hp, peers = self.hp, modules["peers"]
        if not (hp.use_adversarial or hp.use_feature):
            return modules
        feats = self._probe(peers)
        for net, f in zip(self.ctx.group, feats):
            if hp.blocks and hp.blocks > len(f.blocks):
                raise ValueError(f"amln: blocks {hp.blocks} is more than the {len(f.blocks)} stages of {net} after its "
                                 f"stem; valid: 1..{len(f.blocks)}")
        pairs = [(j, l) for j in range(len(peers)) for l in range(len(peers)) if j != l]
        maps = [self.block_maps(f) for f in feats]
        depth = {(j, l): min(len(maps[j]), len(maps[l])) for j, l in pairs}
        if hp.use_adversarial:
            modules["discriminators"] = nn.ModuleDict({
                pair_key(j, l): nn.ModuleList(
                    BlockDiscriminator(_shape(maps[j][b]), _shape(maps[l][b]), hp.disc_reduction)
                    for b in range(depth[j, l]))
                for j, l in pairs})
        if hp.use_feature:
            modules["containers"] = nn.ModuleDict({
                pair_key(j, l): nn.ModuleList(
                    AlignmentContainer(_shape(maps[j][b]), _shape(feats[l].last)) for b in range(depth[j, l]))
                for j, l in pairs})
        return modules

    def _probe(self, peers: nn.ModuleList) -> list[adapter.Features]:
        """Every peer's features on a zero batch (``adapter.probe``): the real map shapes."""
        return [adapter.probe(peer, (self.ctx.in_chans, *self.ctx.image_size)) for peer in peers]

    def _modules(self, key: str) -> nn.ModuleDict | None:
        return self.modules[key] if key in self.modules else None

    @property
    def discriminators(self) -> nn.ModuleDict | None:
        return self._modules("discriminators")

    @property
    def containers(self) -> nn.ModuleDict | None:
        return self._modules("containers")

    def optim_groups(self) -> dict[str, OptimGroup]:
        """The recipe's optimizer for peer k together with its containers; the discriminators' own Adam."""
        hp, K = self.hp, len(self.peers)
        groups = []
        for k, (name, peer) in enumerate(zip(self.ctx.group, self.peers)):
            params = list(peer.parameters())
            if self.containers is not None:
                params += [p for l in range(K) if l != k for p in self.containers[pair_key(k, l)].parameters()]
            groups.append({"params": params, "model": name})
        out = {"peers": OptimGroup(groups)}
        if self.discriminators is not None:
            spec = {"name": "adam", "lr": hp.disc_lr, "betas": list(hp.disc_betas),
                    "weight_decay": hp.disc_weight_decay}
            out["discriminators"] = OptimGroup(list(self.discriminators.parameters()), optimizer=spec,
                                               follow_schedule=hp.disc_follow_schedule)
        return out

    # --- loss terms --------------------------------------------------------------------------------------
    def features(self, batch, learners: list[int]) -> list[adapter.Features]:
        """Every peer's features on the batch; peers not in ``learners`` run without gradient."""
        feats = []
        for k, peer in enumerate(self.peers):
            if k in learners:
                feats.append(adapter.extract(peer, batch.view(k)))
            else:
                with torch.no_grad():
                    feats.append(adapter.extract(peer, batch.view(k)))
        return feats

    def _reduce(self, values: list[torch.Tensor]) -> torch.Tensor:
        total = torch.stack(values).sum()
        return total / len(values) if self.hp.peer_reduction == "mean" else total

    def _partners(self, j: int) -> list[int]:
        return [l for l in range(len(self.peers)) if l != j]

    def discriminator_terms(self, feats: list[adapter.Features], learners: list[int]) -> dict[str, torch.Tensor]:
        """``disc/netj``: the loss of peer j's discriminators on detached features, summed over blocks."""
        kind, terms = self.hp.adversarial_loss, {}
        maps = [self.block_maps(f) for f in feats]
        for j in learners:
            per_partner = []
            for l in self._partners(j):
                ds = self.discriminators[pair_key(j, l)]
                per_partner.append(torch.stack([
                    discriminator_loss(d(maps[j][b].detach()), d(maps[l][b].detach()), kind)
                    for b, d in enumerate(ds)]).sum())
            terms[f"disc/net{j + 1}"] = self._reduce(per_partner)
        return terms

    def peer_terms(self, feats: list[adapter.Features], learners: list[int],
                   y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each learner's terms of Eq. 9 (the switched-on ones), partners' outputs detached."""
        hp, terms = self.hp, {}
        maps = [self.block_maps(f) for f in feats] if hp.use_adversarial or hp.use_feature else []
        for j in learners:
            z, partners = feats[j].logits, self._partners(j)
            terms[f"ce/net{j + 1}"] = F.cross_entropy(z, y)
            if hp.use_kl:
                terms[f"kl/net{j + 1}"] = self._reduce(
                    [outcome_kl(z, feats[l].logits, hp.temperature, hp.kl_direction) for l in partners])
            if hp.use_adversarial:
                terms[f"adv/net{j + 1}"] = self._reduce([
                    torch.stack([generator_loss(d(maps[j][b]), hp.adversarial_loss)
                                 for b, d in enumerate(self.discriminators[pair_key(j, l)])]).sum()
                    for l in partners])
            if hp.use_feature:
                terms[f"feat/net{j + 1}"] = hp.beta * self._reduce([
                    torch.stack([feature_distance(c(maps[j][b]), feats[l].last.detach(), hp.feature_distance)
                                 for b, c in enumerate(self.containers[pair_key(j, l)])]).sum()
                    for l in partners])
        return terms

    def losses(self, batch, step):
        """The peers' terms (Eq. 9) with the discriminators as they are; training uses :meth:`train_step`."""
        learners = list(range(len(self.peers)))
        with frozen(self.discriminators):
            return self.peer_terms(self.features(batch, learners), learners, batch.y)

    # --- training ----------------------------------------------------------------------------------------
    def _update(self, optimizer: torch.optim.Optimizer, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        self.backward(torch.stack(list(terms.values())).sum())
        optimizer.step()
        return {name: value.detach() for name, value in terms.items()}

    def discriminator_step(self, feats: list[adapter.Features], learners: list[int]) -> dict[str, torch.Tensor]:
        """One update of the learners' discriminators on detached features; the peers are not touched."""
        return self._update(self.optimizers["discriminators"], self.discriminator_terms(feats, learners))

    def generator_step(self, feats: list[adapter.Features], learners: list[int],
                       y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One update of the learners (and their containers) on Eq. 9; the discriminators are frozen."""
        with frozen(self.discriminators):
            terms = self.peer_terms(feats, learners, y)
        return self._update(self.optimizers["peers"], terms)

    def train_step(self, batch, step):
        K = len(self.peers)
        turns = [list(range(K))] if self.hp.update == "joint" else [[k] for k in range(K)]
        terms = {}
        for learners in turns:
            feats = self.features(batch, learners)
            if self.discriminators is not None:
                terms.update(self.discriminator_step(feats, learners))
            terms.update(self.generator_step(feats, learners, batch.y))
        return terms
