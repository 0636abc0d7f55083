"""Online AT (attention transfer) on DML (TSB Table 4, "AT"): DML's logit terms plus AT between every ordered pair.

Loss of peer k (methods/common/online_feature.py gives the DML part and the pair reduction):

    CE(z_k) + w·T²·mean_{l≠k} KL(p_l ‖ p_k) + β · mean_{l≠k} Σ_s mean_{b,positions} (a(f_k,s) − a(sg(f_l,s)))²,

a(f) = L2-normalise over positions of mean_c f^p (``methods.common.feature_losses.at_loss``), s over the stage outputs
without the stem (``adapter.extract``'s ``blocks``).  Peer l's maps are detached.  No extra modules.

Choices where TSB is silent, with defaults from RepDistiller (``-b 1000``, ``feat[1:-1]``, p = 2; the author's code
also weights β·Σ over the groups; ``docs/notes/feature_methods.md#features-and-weights``,
``docs/notes/official_code.md#repdistiller``):
- the maps: every stage output after the stem (RepDistiller's ``feat[1:-1]``: three maps on a CIFAR ResNet/WRN).
- ``beta`` 1000; ``p`` 2; the per-stage terms are summed, each a mean over the batch and positions.
- Peers of different architectures: the channel mean makes the widths irrelevant; when two maps differ in size the
  larger map is average-pooled (adaptive) to the smaller one before the attention (RepDistiller pools the maps
  too); with different numbers of stages the maps are paired from the first stage on and the extra deeper stages
  of the longer network are left out (RepDistiller's ``zip``).
- DML part: ``temperature`` 4 (TSB's τ), ``kl_weight`` 1, T² scaling, mean over the other peers, joint update,
  ``warmup_epochs`` 0; see methods/common/online_feature.py.
"""
from __future__ import annotations

from pydantic import NonNegativeFloat, PositiveFloat

from harness.training.method import register_method
from methods.common import feature_terms
from methods.common.online_feature import OnlineFeatureKD, OnlineFeatureParams


class ATParams(OnlineFeatureParams):
    beta: NonNegativeFloat = 1000.0
    p: PositiveFloat = 2.0


@register_method("dml_at")
class DMLAT(OnlineFeatureKD):
    HParams = ATParams
    term = "at"
    feature_term = feature_terms.AT
