"""AFD, feature-map-level online adversarial KD (Chung, Park, Kim, Kwak; ICML 2020) for K ≥ 2 peers.

Each peer k has a discriminator D_k on last feature maps (``adapter.extract(...).last``, before global pooling).
Peers form a ring 1 → 2 → … → K → 1: peer k learns from its predecessor s(k) = k − 1 (peer 1 from peer K), so
D_k sees exactly two networks, peer s(k)'s map as **real** and peer k's own map as **fake**.  With K = 2 the ring
is the paper's pair: D_1 real = net2, fake = net1; D_2 real = net1, fake = net2.  Least-squares GAN losses
(LSGAN, Mao et al.; a = 0, b = c = 1), each a mean over the batch and D's output positions:

    L_D_k = mean((D_k(sg(f_s(k))) − 1)²) + mean(D_k(sg(φ_k(f_k)))²)       (D_k's own optimizer)
    L_G_k = adv_weight · mean((D_k(φ_k(f_k)) − 1)²)                       (peer k's feature extractor, φ_k)
    L_logit_k = CE(z_k, y) + kl_weight · T² · mean_{l ∈ S_k} KL(sg(p_l) ‖ p_k),   p = softmax(z / T)

with f the last map, sg the stop-gradient and φ_k the transfer layer below (the identity for equal shapes).
S_k = every other peer (DML's mutual KL, ``logit_peers`` "all") or {s(k)} ("ring").

One ``train_step`` on a mini-batch runs three updates in this order (the paper's alternating scheme as a
third-party summary describes it, ``docs/notes/afd.md#training-step``):
1. logit step: every peer forwards the batch; Σ_k L_logit_k; the recipe's optimizer ("peers") steps;
2. generator step: every (updated) peer forwards the batch again; Σ_k L_G_k; the "features" optimizer steps
   (the peers' parameters except their classifiers, and the transfer layers);
3. discriminator step: Σ_k L_D_k on the detached maps of step 2; the "discriminators" optimizer steps.
Each step zeroes its own parameters' gradients first, so no step uses gradients of another.  Logged terms:
``ce/netk``, ``kl/netk`` (step 1), ``adv/netk`` (step 2), ``disc/netk`` (step 3).

Choices where the paper (we have its abstract only) is silent; defaults from the third-party code
(``docs/notes/official_code.md#afd``) unless said otherwise:
- Wiring: the abstract's (own = fake, peer = real; the peer fools its D).  The third-party code's wiring is broken
  (its D and G push D(own) the same way) and is not followed.
- Cyclic direction for K > 2: peer k learns the map distribution of peer k − 1 (a one-directional ring, as the
  third-party summary describes it; ``docs/notes/afd.md#cyclic-scheme``).  ``self.sources[k]`` = s(k), 0-based.
- Logit part: ``temperature`` 3, T² scaling, ``kl_weight`` 1, the peer's probabilities detached (this harness's
  DML convention; the third-party code does not detach), mean over S_k.  ``logit_peers`` "all": the cyclic scheme
  is described for feature maps only, so the logits stay DML's all-pairs mutual KL; "ring" restricts it to s(k).
- Discriminator: Conv(C → C/2, k=2) → BN → LeakyReLU(0.01, torch's default, as the code) → Conv(C/2 → 1, k=2,
  stride 2) → Sigmoid (``disc_hidden`` None = C // 2, ``disc_slope``, ``disc_sigmoid``); PyTorch's default init.
  It outputs a patch map; the LSGAN losses average over it.  Real and fake batches pass through D separately
  (their own BN batch statistics).  L_D is the sum of the two means, no ½ (the code's form).  On maps under
  3 × 3 (MobileNetV2 on CIFAR) a kernel-2 convolution does not fit: along such an axis its kernel and stride are 1.
- Optimizers: "features" = Adam, lr ``feature_lr`` 2e-5, weight decay ``feature_weight_decay`` 0.1 (L2, torch's
  Adam), betas ``feature_betas`` (0.9, 0.999) (torch's default, as the code); "discriminators" = Adam with the
  ``disc_*`` values (same defaults; GAN practice would use betas (0.5, 0.999), which the code does not).  Both
  ignore the recipe's schedule: their learning rate is multiplied by ``adv_gamma`` 0.1 at each of
  ``adv_milestones`` (fractions of the run, default (0.25, 0.5): the code's feature milestones are half the
  logit ones, [75, 150] of 300 epochs against [150, 225]).  The rate set at the first step (after the engine's
  batch-size scaling) is kept in each parameter group ("afd_initial_lr") and so restored with the optimizer.
- The classifier gets no gradient from L_G and is left out of the "features" optimizer (its weight decay 0.1
  would otherwise shrink it); BN statistics of the peers are updated in both forward passes.  With
  ``adv_weight`` 0 the generator step still runs, so its Adam weight decay still acts on the feature extractors.
- Peers of different architectures (the paper's small/large pairs; how it matches shapes is not known): D_k is
  built for the real map's shape (peer s(k)'s channels and size), and peer k's map passes a transfer layer φ_k
  into that shape, FitNet-style (``methods.common.feature_losses.ConvRegressor``: conv chosen from the two sizes → BN →
  ReLU, so the fake map is non-negative like a post-ReLU real map).  φ_k belongs to the generator side: trained by
  L_G_k with the "features" optimizer, in ``self.modules["transfers"]`` (key ``net{k}_to_net{s(k)}``), not
  deployed.  ``transfer`` "when_shapes_differ" (default) uses the identity between equal shapes; "always" puts a
  transfer layer on every pair.  Shapes come from a probe forward pass at build time; a map larger than its
  target on one axis and smaller on the other has no transfer layer (ValueError at build).
- Evaluated outputs: the peers net1..netK (and the engine's ensemble).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt
from torch import nn

from harness.models import adapter
from harness.training.method import HParams, Method, OptimGroup, Step, register_method
from methods.common.feature_losses import ConvRegressor
from methods.common.losses import distill_kl, full_precision, soft_targets

class AFDParams(HParams):
    temperature: PositiveFloat = 3.0
    kl_weight: NonNegativeFloat = 1.0
    t2_scaling: bool = True
    logit_peers: Literal["all", "ring"] = "all"
    adv_weight: NonNegativeFloat = 1.0
    feature_lr: PositiveFloat = 2e-5
    feature_weight_decay: NonNegativeFloat = 0.1
    feature_betas: tuple[float, float] = (0.9, 0.999)
    disc_lr: PositiveFloat = 2e-5
    disc_weight_decay: NonNegativeFloat = 0.1
    disc_betas: tuple[float, float] = (0.9, 0.999)
    adv_milestones: tuple[NonNegativeFloat, ...] = (0.25, 0.5)
    adv_gamma: PositiveFloat = 0.1
    disc_hidden: PositiveInt | None = None
    disc_slope: NonNegativeFloat = 0.01
    disc_sigmoid: bool = True
    transfer: Literal["when_shapes_differ", "always"] = "when_shapes_differ"


def ring_sources(k_peers: int) -> list[int]:
    """s(k) for each 0-based peer k: its predecessor in the ring 1 → 2 → … → K → 1."""
    return [(k - 1) % k_peers for k in range(k_peers)]


def transfer_key(student: int, target: int) -> str:
    return f"net{student + 1}_to_net{target + 1}"


@full_precision
def lsgan_discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """mean((D(real) − 1)²) + mean(D(fake)²): real → 1, fake → 0."""
    return (real_scores - 1).pow(2).mean() + fake_scores.pow(2).mean()


@full_precision
def lsgan_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """mean((D(fake) − 1)²): the generator wants its map taken for real."""
    return (fake_scores - 1).pow(2).mean()


def adversarial_lr_factor(epoch: int, epochs: int, milestones, gamma: float) -> float:
    """gamma ** (number of milestones, as fractions of ``epochs``, that 0-based ``epoch`` has reached)."""
    return gamma ** sum(epoch >= m * epochs for m in milestones)


class Discriminator(nn.Module):
    """Conv(C → hidden, 2) → BN → LeakyReLU → Conv(hidden → 1, 2, stride 2) → optional sigmoid: a patch score map.

    Built for one map shape (C, H, W).  On an axis too short for a kernel of 2 (a map under 3 × 3: MobileNetV2's
    2 × 2 on CIFAR, 1 × 1 maps), that convolution's kernel and stride along the axis become 1.
    """

    def __init__(self, shape, hidden: int | None = None, slope: float = 0.01, sigmoid: bool = True):
        super().__init__()
        channels, *size = (int(v) for v in shape)
        hidden = hidden or max(channels // 2, 1)
        first = tuple(2 if n >= 2 else 1 for n in size)
        second = tuple(2 if n - k + 1 >= 2 else 1 for n, k in zip(size, first))
        self.conv1 = nn.Conv2d(channels, hidden, kernel_size=first)
        self.bn = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, 1, kernel_size=second, stride=second)
        self.slope, self.sigmoid = slope, sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.bn(self.conv1(x)), self.slope)
        x = self.conv2(x)
        return torch.sigmoid(x) if self.sigmoid else x


def last_map_shapes(peers: nn.ModuleList, in_chans: int, image_size: tuple[int, int]) -> list[tuple[int, ...]]:
    """(C, H, W) of each peer's last map from a 2-image zero batch (eval mode, no gradient, BN stats untouched)."""
    return [tuple(adapter.probe(peer, (in_chans, *image_size)).last.shape[1:]) for peer in peers]


@register_method("afd")
class AFD(Method):
    """K peers with DML's logit KL, each also fooling its discriminator into taking its map for its predecessor's."""

    HParams = AFDParams
    min_peers = 2

    # --- structure -------------------------------------------------------------------------------------
    def build(self) -> nn.ModuleDict:
        modules = super().build()
        peers, hp = modules["peers"], self.hp
        shapes = last_map_shapes(peers, self.ctx.in_chans, self.ctx.image_size)
        self.sources = ring_sources(len(peers))
        modules["discriminators"] = nn.ModuleList(
            Discriminator(shapes[s], hp.disc_hidden, hp.disc_slope, hp.disc_sigmoid) for s in self.sources)
        transfers = nn.ModuleDict()
        for k, s in enumerate(self.sources):
            if hp.transfer == "always" or shapes[k] != shapes[s]:
                transfers[transfer_key(k, s)] = ConvRegressor(shapes[k], shapes[s], relu=True)
        if len(transfers):
            modules["transfers"] = transfers
        return modules

    @property
    def discriminators(self) -> nn.ModuleList:
        return self.modules["discriminators"]

    def transfer(self, k: int) -> nn.Module | None:
        """φ_k, from peer k's map to its source's shape; None for the identity."""
        key = transfer_key(k, self.sources[k])
        transfers = self.modules["transfers"] if "transfers" in self.modules else None
        return transfers[key] if transfers is not None and key in transfers else None

    def feature_parameters(self) -> list[nn.Parameter]:
        """What L_G trains: every peer parameter outside its classifier, and the transfer layers."""
        params = []
        for peer in self.peers:
            head = {id(p) for p in peer.get_classifier().parameters()}
            params += [p for p in peer.parameters() if id(p) not in head]
        if "transfers" in self.modules:
            params += list(self.modules["transfers"].parameters())
        return params

    def optim_groups(self) -> dict[str, OptimGroup]:
        hp = self.hp
        peers = [{"params": list(peer.parameters()), "model": name} for name, peer in zip(self.ctx.group, self.peers)]
        return {
            "peers": OptimGroup(peers),
            "features": OptimGroup(self.feature_parameters(), follow_schedule=False, optimizer={
                "name": "adam", "lr": hp.feature_lr, "weight_decay": hp.feature_weight_decay,
                "betas": hp.feature_betas}),
            "discriminators": OptimGroup(list(self.discriminators.parameters()), follow_schedule=False, optimizer={
                "name": "adam", "lr": hp.disc_lr, "weight_decay": hp.disc_weight_decay, "betas": hp.disc_betas}),
        }

    # --- loss terms --------------------------------------------------------------------------------------
    def logit_terms(self, logits: list[torch.Tensor], y: torch.Tensor) -> dict[str, torch.Tensor]:
        """CE and the mean KL to the detached peers S_k, for every peer k."""
        hp = self.hp
        targets = [soft_targets(z, hp.temperature) for z in logits]
        terms = {}
        for k, z in enumerate(logits):
            teachers = [l for l in range(len(logits)) if l != k] if hp.logit_peers == "all" else [self.sources[k]]
            kl = torch.stack([distill_kl(z, targets[l], hp.temperature, hp.t2_scaling) for l in teachers]).mean()
            terms[f"ce/net{k + 1}"] = F.cross_entropy(z, y)
            terms[f"kl/net{k + 1}"] = hp.kl_weight * kl
        return terms

    def fakes(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """φ_k(f_k) for every peer k: what D_k sees as fake."""
        out = []
        for k, f in enumerate(maps):
            transfer = self.transfer(k)
            out.append(transfer(f) if transfer is not None else f)
        return out

    def generator_terms(self, fakes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """adv_weight · LSGAN generator loss of each peer against its own discriminator."""
        return {f"adv/net{k + 1}": self.hp.adv_weight * lsgan_generator_loss(d(fake))
                for k, (d, fake) in enumerate(zip(self.discriminators, fakes))}

    def discriminator_terms(self, maps: list[torch.Tensor], fakes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """LSGAN loss of each D_k: its source's map real, its peer's (transferred) map fake, both detached."""
        return {f"disc/net{k + 1}": lsgan_discriminator_loss(d(maps[s].detach()), d(fakes[k].detach()))
                for k, (d, s) in enumerate(zip(self.discriminators, self.sources))}

    # --- the three updates ----------------------------------------------------------------------------------
    def _minimise(self, optimizer: str, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        opt = self.optimizers[optimizer]
        opt.zero_grad(set_to_none=True)
        self.backward(torch.stack(list(terms.values())).sum())
        opt.step()
        return {name: value.detach() for name, value in terms.items()}

    def logit_step(self, batch) -> dict[str, torch.Tensor]:
        logits = [peer(batch.view(k)) for k, peer in enumerate(self.peers)]
        return self._minimise("peers", self.logit_terms(logits, batch.y))

    def generator_step(self, batch) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """The generator update; returns its terms and the detached maps and fakes it saw (for the D step)."""
        maps = [adapter.extract(peer, batch.view(k)).last for k, peer in enumerate(self.peers)]
        fakes = self.fakes(maps)
        terms = self._minimise("features", self.generator_terms(fakes))
        return terms, [m.detach() for m in maps], [f.detach() for f in fakes]

    def discriminator_step(self, maps: list[torch.Tensor], fakes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return self._minimise("discriminators", self.discriminator_terms(maps, fakes))

    def set_adversarial_lr(self, step: Step) -> None:
        factor = adversarial_lr_factor(step.epoch, step.epochs, self.hp.adv_milestones, self.hp.adv_gamma)
        for name in ("features", "discriminators"):
            for group in self.optimizers[name].param_groups:
                group["lr"] = group.setdefault("afd_initial_lr", group["lr"]) * factor

    def train_step(self, batch, step):
        self.set_adversarial_lr(step)
        terms = self.logit_step(batch)
        adv, maps, fakes = self.generator_step(batch)
        return {**terms, **adv, **self.discriminator_step(maps, fakes)}
