"""Online RKD (relational KD) on DML (TSB Table 4, "RKD"): DML's logit terms plus RKD between every ordered pair.

Loss of peer k (methods/common/online_feature.py gives the DML part and the pair reduction):

    CE(z_k) + w·T²·mean_{l≠k} KL(p_l ‖ p_k) + β · mean_{l≠k} [w_d·smoothL1(ψ_D(e_k), ψ_D(sg e_l))
                                                           + w_a·smoothL1(ψ_A(e_k), ψ_A(sg e_l))],

e the pooled penultimate embedding (``adapter.extract``'s ``embedding``), ψ_D the pairwise Euclidean distances of
the batch divided by their mean over the non-zero ones, ψ_A the cosines of the angle at every vertex of every triplet
(``methods.common.feature_losses.rkd_loss``), smooth-L1 with threshold 1, means over all entries.  No extra modules.

Choices where TSB is silent, with defaults from RepDistiller (``-b 1``, ``feat[-1]``, w_d = 25, w_a = 50;
``docs/notes/feature_methods.md#features-and-weights``, ``docs/notes/official_code.md#repdistiller``):
- the features: the pooled embedding before the classifier (RepDistiller's ``feat[-1]``).
- ``beta`` 1, ``distance_weight`` 25, ``angle_weight`` 50.
- Peers of different architectures: distances and angles are within one network's embedding space, so different
  widths need nothing.
- DML part: ``temperature`` 4 (TSB's τ), ``kl_weight`` 1, T² scaling, mean over the other peers, joint update,
  ``warmup_epochs`` 0; see methods/common/online_feature.py.
"""
from __future__ import annotations

from pydantic import NonNegativeFloat

from harness.training.method import register_method
from methods.common import feature_terms
from methods.common.online_feature import OnlineFeatureKD, OnlineFeatureParams


class RKDParams(OnlineFeatureParams):
    beta: NonNegativeFloat = 1.0
    distance_weight: NonNegativeFloat = 25.0
    angle_weight: NonNegativeFloat = 50.0


@register_method("dml_rkd")
class DMLRKD(OnlineFeatureKD):
    HParams = RKDParams
    term = "rkd"
    feature_term = feature_terms.RKD
