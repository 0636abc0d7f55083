"""SP, similarity-preserving KD (Tung & Mori, ICCV 2019), offline: the student's batch similarity matrix matches a
frozen teacher's (trained in an earlier stage, ``methods/common/offline.py``); an offline baseline of ACKD's tables.

Loss (methods/common/offline_feature.py gives the CE/KD part):

    ce_weight · CE(z_s, y) + kd_weight · T² · KL(p_t ‖ p_s) + β · ‖rownorm(G_t) − rownorm(G_s)‖²_F / b²,

G = F Fᵀ the b × b Gram matrix of the batch's flattened last-stage maps, each row L2-normalised, G_t from the
teacher's map computed in eval mode without gradient (``methods.common.feature_losses.sp_loss``).  No extra modules.

Choices, with RepDistiller's defaults (``--distill similarity -a 0 -b 3000``;
``docs/notes/feature_methods.md#features-and-weights``, ``docs/notes/official_code.md#repdistiller``):
- the map: the output of the last stage (``stages[-1]``: RepDistiller's ``feat[-2]``, the map before pooling; for
  the CIFAR WRN of this harness it includes the final BN-ReLU).
- ``beta`` 3000; ``ce_weight`` 1, ``kd_weight`` 0 (``-r 1 -a 0``); ``temperature`` 4, T² for an optional KD term.
- Teacher and student of different architectures: the last stage of each is matched (RepDistiller's single layer
  pair ``feat[-2]``, by position from the end); the Gram matrices are b × b whatever the channels and sizes.
- The relations are over the mini-batch: the teacher sees the student's very images.
"""
from __future__ import annotations

from pydantic import NonNegativeFloat

from harness.training.method import register_method
from methods.common import feature_terms
from methods.common.offline_feature import OfflineFeatureKD, OfflineFeatureParams


class SPParams(OfflineFeatureParams):
    beta: NonNegativeFloat = 3000.0


@register_method("sp")
class SP(OfflineFeatureKD):
    """SP: the student matches the frozen teacher's batch similarity matrix of the last stage (offline)."""

    HParams = SPParams
    term = "sp"
    feature_term = feature_terms.SP
