"""Online feature distillation on top of DML: the base of TSB Table 4's online FitNet, AT, NST, SP, RKD and PKT.

TSB (Sec. 4.2.3) adapts classic feature KD methods "into their online versions, built upon the scheme of DML"; no
formula, layer or weight is given.  Here (``docs/notes/feature_methods.md#online-on-top-of-dml``), for K ≥ 2 peers, the
loss of peer k is

    CE(z_k, y) + w · T² · R_{l≠k} KL(p_l ‖ p_k) + g(t) · β · R_{l≠k} L_m(φ_kl(f_k), sg(f_l)),

with p = softmax(z / T) detached as a target, f the method's features of each peer (one forward pass of every
peer through ``harness.models.adapter.extract``), φ_kl an optional per-pair module (FitNet's regressor from peer k's hint
to peer l's map), sg the stop-gradient: every peer learns from every other peer's detached features, in both
directions, so K(K−1) ordered pairs.  R is the mean over the K−1 partners (``peer_reduction`` "mean") or the sum.

Terms logged per peer: ``ce/netk``, ``kl/netk`` and ``<term>/netk`` (the method's feature term, β and R included).

Choices, with defaults (hyper-parameters of every subclass):
- ``temperature`` 4: TSB's τ (Sec. 4.1), under whose recipe every Table 4 baseline was re-implemented.
- ``kl_weight`` 1, T² scaling (``t2_scaling``), KL(peer ‖ self) with the peer detached, batch mean: the DML of
  this harness (methods/dml.py) with TSB's temperature.
- ``peer_reduction`` "mean": both the KL and the feature term are averaged over the K − 1 partners, as DML's
  equation averages its KL ("sum" sums both).  With K = 2, as in Table 4, the two agree.
- ``beta``: the feature weight β, RepDistiller's value for each method (each subclass's default).
- ``warmup_epochs`` 0: the KL and feature terms are on from the first step.  TSB zeroes its own KL terms for the
  first 20 epochs (Sec. 4.1); whether the re-implemented baselines share that warm-up is not stated.  With n > 0,
  g(t) = 0 in the first n epochs (the KL term too), then 1.
- One joint update of every peer (and every per-pair module) on the summed loss (DML's "joint" update).
- Per-pair modules (``self.modules["connectors"]``, key ``net{k}_from_net{l}``) belong to the student peer k: they
  are trained only by peer k's loss, in peer k's parameter group of the recipe's optimizer (its learning rate,
  ``Recipe.peer_lr`` included), as RepDistiller trains the regressor with the student's optimizer.
- Evaluated outputs: the peers, net1..netK (and the engine's ensemble).
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat
from torch import nn

from harness.models import adapter
from harness.training.method import HParams, Method, OptimGroup, Step
from methods.common.feature_terms import FeatureTerm
from methods.common.losses import distill_kl, soft_targets, warmup_gate


class OnlineFeatureParams(HParams):
    temperature: PositiveFloat = 4.0
    kl_weight: NonNegativeFloat = 1.0
    t2_scaling: bool = True
    peer_reduction: Literal["mean", "sum"] = "mean"
    beta: NonNegativeFloat = 1.0
    warmup_epochs: NonNegativeInt = 0


def pair_key(student: int, partner: int) -> str:
    """Key of the per-pair module through which peer ``student`` (0-based) learns from peer ``partner``."""
    return f"net{student + 1}_from_net{partner + 1}"


def detach_features(value: Any) -> Any:
    """A tensor or a (nested) list/tuple of tensors, detached."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    return type(value)(detach_features(v) for v in value)


def mutual_kl(logits: list[torch.Tensor], targets: list[torch.Tensor], k: int, temperature: float,
              t2_scaling: bool, reduction: str) -> torch.Tensor:
    """DML's KL of peer ``k``: Σ or mean over l ≠ k of T²·KL(target_l ‖ softmax(z_k / T)), batch mean."""
    kl = torch.stack([distill_kl(logits[k], targets[l], temperature, t2_scaling)
                      for l in range(len(logits)) if l != k]).sum()
    return kl / (len(logits) - 1) if reduction == "mean" else kl


class OnlineFeatureKD(Method):
    """DML plus a feature term between every ordered pair of peers; subclasses choose the features and the loss.

    A subclass sets ``term`` (the logged name of its feature term) and either ``feature_term`` (the features and loss
    it shares with its offline version) or :meth:`select` (which features of ``adapter.extract``'s output it uses)
    and :meth:`pair_loss` (the loss of one student against one detached partner); it may build per-pair modules in
    :meth:`build_connectors`.
    """

    HParams: ClassVar[type[HParams]] = OnlineFeatureParams
    min_peers = 2
    term: ClassVar[str] = "feat"
    feature_term: ClassVar[FeatureTerm | None] = None  # the features and loss, unless select/pair_loss are written

    # --- structure ---------------------------------------------------------------------------------------
    def build(self) -> nn.ModuleDict:
        modules = super().build()
        connectors = self.build_connectors(modules["peers"])
        if connectors is not None:
            modules["connectors"] = connectors
        return modules

    def build_connectors(self, peers: nn.ModuleList) -> nn.ModuleDict | None:
        """Per-pair modules keyed by :func:`pair_key`; None when the method has none."""
        return None

    def probe(self, peers: nn.ModuleList) -> list[adapter.Features]:
        """Every peer's features on a zero batch (``adapter.probe``): the real map shapes for per-pair modules."""
        return [adapter.probe(peer, (self.ctx.in_chans, *self.ctx.image_size)) for peer in peers]

    def connector(self, student: int, partner: int) -> nn.Module | None:
        connectors = self.modules["connectors"] if "connectors" in self.modules else None
        key = pair_key(student, partner)
        return connectors[key] if connectors is not None and key in connectors else None

    def optim_groups(self) -> dict[str, OptimGroup]:
        """One recipe optimizer; peer k's parameter group also holds the per-pair modules peer k learns through."""
        groups = []
        owned = set()
        for k, (name, peer) in enumerate(zip(self.ctx.group, self.peers)):
            params = list(peer.parameters())
            for l in range(len(self.peers)):
                module = self.connector(k, l) if l != k else None
                if module is not None:
                    params += list(module.parameters())
            owned.update(id(p) for p in params)
            groups.append({"params": params, "model": name})
        extra = [p for key, module in self.modules.items() if key != "peers"
                 for p in module.parameters() if id(p) not in owned]
        return {"peers": OptimGroup(groups + ([self.extra_group(extra)] if extra else []))}

    # --- the subclass's part ----------------------------------------------------------------------------------
    def select(self, features: adapter.Features) -> Any:
        """The features the method matches (a tensor or a list of maps): its ``feature_term``'s by default."""
        return self.feature_term.select(features)

    def pair_loss(self, student: int, partner: int, student_features: Any, partner_features: Any) -> torch.Tensor:
        """Unweighted feature loss of peer ``student`` against the detached features of peer ``partner``: its
        ``feature_term``'s by default."""
        return self.feature_term(student_features, partner_features, self.hp)

    # --- training ------------------------------------------------------------------------------------------
    def gate(self, step: Step | None) -> float:
        """g(t): 0 during the first ``warmup_epochs`` epochs, then 1 (1 when no step is given)."""
        return warmup_gate(step, self.hp.warmup_epochs)

    def losses(self, batch, step):
        hp = self.hp
        feats = [adapter.extract(peer, batch.view(k)) for k, peer in enumerate(self.peers)]
        logits = [f.logits for f in feats]
        targets = [soft_targets(z, hp.temperature) for z in logits]
        selected = [self.select(f) for f in feats]
        partners = [detach_features(s) for s in selected]
        gate = self.gate(step)
        K = len(self.peers)
        terms = {}
        for k in range(K):
            kl = mutual_kl(logits, targets, k, hp.temperature, hp.t2_scaling, hp.peer_reduction)
            feat = torch.stack([self.pair_loss(k, l, selected[k], partners[l]) for l in range(K) if l != k]).sum()
            if hp.peer_reduction == "mean":
                feat = feat / (K - 1)
            terms[f"ce/net{k + 1}"] = F.cross_entropy(logits[k], batch.y)
            terms[f"kl/net{k + 1}"] = gate * hp.kl_weight * kl
            terms[f"{self.term}/net{k + 1}"] = gate * hp.beta * feat
        return terms
