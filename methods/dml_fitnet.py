"""Online FitNet on DML (TSB Table 4, "FitNet"): DML's logit terms plus a hint loss between every ordered pair.

Loss of peer k (methods/common/online_feature.py gives the DML part and the pair reduction):

    CE(z_k) + w·T²·mean_{l≠k} KL(p_l ‖ p_k) + β · mean_{l≠k} MSE(r_kl(h_k), sg(h_l)),

h the hint map (the output of stage ``hint_layer`` of ``adapter.extract``'s ``stages``, 0 = the stem), r_kl a
convolutional regressor from peer k's hint to peer l's map (``methods.common.feature_losses.ConvRegressor``: conv, BN,
ReLU), MSE the mean over every element.  Peer l's hint is detached: each peer learns from the other's hint and
trains its own regressors; K(K−1) regressors in ``self.modules["connectors"]`` (``net{k}_from_net{l}``).

Choices where TSB is silent (it gives no layer, weight or regressor), with defaults from RepDistiller
(``hint_layer=2``, ``ConvReg``; ``docs/notes/feature_methods.md#features-and-weights``,
``docs/notes/official_code.md#repdistiller``) except for the weight
(``docs/notes/feature_methods.md#online-fitnet-weight``):
- ``hint_layer`` 2: RepDistiller's ``feat[2]``, the output of the second stage (the middle stage of a CIFAR
  ResNet/WRN); a single hint, not the original FitNet's two-stage training (no separate hint pre-training stage).
- ``beta`` 1, not RepDistiller's offline 100 (TSB gives no β).  Offline, the student regresses to a frozen
  teacher's map; online, the target is the other peer's map, whose scale nothing anchors (a stage output before
  any normalisation), so the two regressions can feed each other.  Measured at TSB's recipe (batch 64, SGD lr
  0.05) on the embedded data for 3 epochs (benchmarks/online_feature_stability.py): β = 100 diverged on both TSB
  Table 4 pairs (WRN-16-2: hint loss 304 → ∞ in 11 steps, NaN at step 12; ResNet-32: 342 → 1.6e5 in 48 steps);
  β = 10 went NaN on the WRN-16-2 pair within 64 steps; β = 1 trained on both (hint loss 3.4 → 1.8 and
  3.0 → 5.5, bounded over 320 steps; top-1 47 / 52 % after 3 epochs against DML's 54 / 52 %).  Every other
  online feature method trained at its RepDistiller weight in the same probe.
- ``regressor`` "always": every pair gets a regressor, even between maps of equal shape (RepDistiller always uses
  ``ConvReg``; for equal sizes it is a 1×1 conv + BN + ReLU); "when_shapes_differ" uses the identity between
  maps of the same shape (possible for peers of one architecture) and a regressor otherwise.
- ``regressor_relu`` true: RepDistiller's ``ConvReg`` for FitNet ends with a ReLU.
- Peers of different architectures: the regressor maps the student's hint to the partner's channels and size
  (3×3 stride-2 conv when the student's map is twice as large, 4×4 stride-2 transposed conv when half as large,
  a valid conv of kernel 1 + ΔH for any larger map, a transposed conv of kernel 1 + ΔH for any smaller one); the
  sizes come from a probe forward pass at build time.
- The regressors are trained by the recipe's optimizer in their student's parameter group (RepDistiller trains
  ``ConvReg`` with the student's SGD), and are not deployed.
- DML part: ``temperature`` 4 (TSB's τ), ``kl_weight`` 1, T² scaling, mean over the other peers, joint update,
  ``warmup_epochs`` 0; see methods/common/online_feature.py.
"""
from __future__ import annotations

from typing import Literal

from pydantic import NonNegativeFloat, NonNegativeInt
from torch import nn

from harness.models import adapter
from harness.training.method import register_method
from methods.common.feature_losses import ConvRegressor, hint_loss
from methods.common.online_feature import OnlineFeatureKD, OnlineFeatureParams, pair_key


class FitNetParams(OnlineFeatureParams):
    beta: NonNegativeFloat = 1.0
    hint_layer: NonNegativeInt = 2
    regressor: Literal["always", "when_shapes_differ"] = "always"
    regressor_relu: bool = True


@register_method("dml_fitnet")
class DMLFitNet(OnlineFeatureKD):
    display = "DML+FitNet"
    HParams = FitNetParams
    term = "hint"

    @classmethod
    def group_error(cls, hp, group):
        import timm

        import harness.models  # noqa: F401  (registers the CIFAR networks)

        for name in dict.fromkeys(group):
            try:
                stages = len(adapter.stage_info(timm.create_model(name)))
            except Exception:  # an unknown name is reported by the model checks
                continue
            if hp.hint_layer >= stages:
                return f"hint_layer {hp.hint_layer} is past the last stage of {name} (stages 0..{stages - 1})"
        return None

    def build_connectors(self, peers):
        hint = self.hp.hint_layer
        probes = self.probe(peers)
        for name, probe in zip(self.ctx.group, probes):
            if hint >= len(probe.stages):
                raise ValueError(f"dml_fitnet: hint_layer {hint} is past the last stage of {name} "
                                 f"(stages 0..{len(probe.stages) - 1})")
        shapes = [tuple(p.stages[hint].shape[1:]) for p in probes]
        connectors = nn.ModuleDict()
        for k in range(len(peers)):
            for l in range(len(peers)):
                if l != k and (self.hp.regressor == "always" or shapes[k] != shapes[l]):
                    connectors[pair_key(k, l)] = ConvRegressor(shapes[k], shapes[l], relu=self.hp.regressor_relu)
        return connectors if len(connectors) else None

    def select(self, features):
        return features.stages[self.hp.hint_layer]

    def pair_loss(self, student, partner, student_features, partner_features):
        regressor = self.connector(student, partner)
        hint = regressor(student_features) if regressor is not None else student_features
        return hint_loss(hint, partner_features)
