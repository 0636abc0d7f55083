"""AT, attention transfer (Zagoruyko & Komodakis, ICLR 2017), offline: a student matches the spatial attention maps
of a frozen teacher trained in an earlier stage (``methods/common/offline.py``); an offline baseline of ACKD Tables 2–5 and
AMLN Table 5.

Loss (methods/common/offline_feature.py gives the CE/KD part):

    ce_weight · CE(z_s, y) + kd_weight · T² · KL(p_t ‖ p_s) + β · Σ_l mean_{b, positions} (a(f_s,l) − a(sg(f_t,l)))²,

a(f) = L2-normalise over positions of mean_c f^p (``methods.common.feature_losses.at_loss``), l over the stage outputs after
the stem (``adapter.extract``'s ``blocks``: RepDistiller's ``feat[1:-1]``, three maps on a CIFAR ResNet/WRN).  The
teacher's maps are computed in eval mode without gradient.  No extra modules.

Choices, with RepDistiller's defaults (``--distill attention -a 0 -b 1000``;
``docs/notes/feature_methods.md#features-and-weights``, ``docs/notes/official_code.md#repdistiller``):
- ``beta`` 1000, ``p`` 2, the per-stage terms summed (the AT author's code also sums them, weighted by β).
- ``ce_weight`` 1, ``kd_weight`` 0 (RepDistiller's ``-r 1 -a 0``); ``temperature`` 4 and T² scaling for a KD term
  when ``kd_weight`` > 0 (``at_kd`` is that combination with KD's weights).
- Teacher and student of different architectures: layers are matched by position, as RepDistiller's ``zip`` does:
  the i-th stage of the student with the i-th stage of the teacher, the extra deeper stages of the longer network
  left out.  The channel mean makes the widths irrelevant; when two maps differ in size the larger one is
  average-pooled (adaptive) to the smaller before the attention (RepDistiller pools too).
- The teacher: see ``methods/common/offline.py`` (``teacher_recipe``, ``teacher_seed`` 0, ``teacher_checkpoint``,
  ``teacher_stop_epoch``).
"""
from __future__ import annotations

from pydantic import NonNegativeFloat, PositiveFloat

from harness.training.method import register_method
from methods.common import feature_terms
from methods.common.offline_feature import OfflineFeatureKD, OfflineFeatureParams


class ATParams(OfflineFeatureParams):
    beta: NonNegativeFloat = 1000.0
    p: PositiveFloat = 2.0


@register_method("at")
class AT(OfflineFeatureKD):
    """AT: the student matches the frozen teacher's attention maps at every stage (offline)."""

    HParams = ATParams
    term = "at"
    feature_term = feature_terms.AT
