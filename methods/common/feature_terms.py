"""A feature-KD loss as its offline version (a student against a frozen teacher) and its online version (every peer
against every other, on top of DML) share it: which of ``adapter.extract``'s features it reads and the loss of one
network's features against a detached target's.  AT, NST, SP, RKD and PKT are one term each, used by both bases
(``offline_feature.OfflineFeatureKD``, ``online_feature.OnlineFeatureKD``); a method whose loss runs through its own
trainable modules (FitNet's regressors, CC's embeddings, VID's regressors) writes its own instead."""
from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Callable

import torch

from harness.models import adapter
from methods.common.feature_losses import at_loss, nst_loss, pkt_loss, rkd_loss, sp_loss


def last_stage(features: adapter.Features) -> torch.Tensor:
    """The last stage's output: RepDistiller's ``feat[-2]``, the map before pooling."""
    return features.stages[-1]


@dataclass(frozen=True)
class FeatureTerm:
    """``select``: the features matched; ``loss(mine, target, **hparams)``: the unweighted loss, with the named
    hyper-parameters of the method passed by name."""

    select: Callable[[adapter.Features], Any]
    loss: Callable[..., torch.Tensor]
    hparams: tuple[str, ...] = ()

    def __call__(self, mine: Any, target: Any, hp) -> torch.Tensor:
        return self.loss(mine, target, **{name: getattr(hp, name) for name in self.hparams})


AT = FeatureTerm(attrgetter("blocks"), at_loss, ("p",))  # every stage after the stem
NST = FeatureTerm(attrgetter("blocks"), nst_loss)
SP = FeatureTerm(last_stage, sp_loss)
RKD = FeatureTerm(attrgetter("embedding"), rkd_loss, ("distance_weight", "angle_weight"))
PKT = FeatureTerm(attrgetter("embedding"), pkt_loss, ("eps",))
