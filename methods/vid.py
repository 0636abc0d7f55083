"""VID, variational information distillation (Ahn et al., CVPR 2019), offline: the student's stage maps predict a
frozen teacher's (trained in an earlier stage, ``methods/common/offline.py``) under a Gaussian with learned per-channel
variances; an offline baseline of ACKD's tables.

Loss (methods/common/offline_feature.py gives the CE/KD part, ``VIDRegressor`` and ``vid_loss``):

    ce_weight · CE(z_s, y) + kd_weight · T² · KL(p_t ‖ p_s)
        + β · Σ_l mean_{b, c, positions} ½ ((μ_l(f_s,l) − sg(f_t,l))² / σ²_l,c + log σ²_l,c),

l over the stage outputs after the stem (``adapter.extract``'s ``blocks``: RepDistiller's ``feat[1:-1]``), μ_l the
layer's regressor 1×1 conv → ReLU → 1×1 conv → ReLU → 1×1 conv (no biases) from the student's channels to the
teacher's, σ²_l,c = softplus(v_l,c) + ε one learned variance per teacher channel.  The teacher's maps are computed in
eval mode without gradient.  The regressors and their variances (``modules["regressors"]``) are trained with the
student's optimizer, as RepDistiller adds them to ``trainable_list``.

Choices, with RepDistiller's defaults (``--distill vid -a 0 -b 1``, ``VIDLoss(s, t, t)``, the VID authors' code;
``docs/notes/official_code.md#repdistiller``):
- ``init_variance`` 5 (σ² at the start, v = softplus⁻¹(5 − ε)), ``variance_eps`` 1e-5; ``mid_channels`` None = the
  teacher's channels (RepDistiller's middle width); PyTorch's default conv init.
- the loss of each layer is a mean over batch, channels and positions (constant ½ log 2π left out); layers summed.
- ``beta`` 1, ``ce_weight`` 1, ``kd_weight`` 0 (``-r 1 -a 0``); ``temperature`` 4, T² for an optional KD term.
- Teacher and student of different architectures: layers are matched by position, as RepDistiller's ``zip`` does
  (the i-th stage of the student with the i-th of the teacher; the extra deeper stages of the longer network get no
  regressor); the regressor maps the student's width to the teacher's; when two maps differ in size the larger is
  average-pooled (adaptive) to the smaller first (RepDistiller pools to the smaller height too).
"""
from __future__ import annotations

from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt
from torch import nn

from harness.training.method import register_method
from methods.common.offline_feature import OfflineFeatureKD, OfflineFeatureParams, VIDRegressor, vid_loss


class VIDParams(OfflineFeatureParams):
    beta: NonNegativeFloat = 1.0
    init_variance: PositiveFloat = 5.0
    variance_eps: PositiveFloat = 1e-5
    mid_channels: PositiveInt | None = None


@register_method("vid")
class VID(OfflineFeatureKD):
    """VID: per-stage Gaussian regressors from student to frozen teacher maps with learned variances (offline)."""

    HParams = VIDParams
    term = "vid"

    def build_connectors(self, student, teacher):
        hp = self.hp
        if hp.init_variance <= hp.variance_eps:
            raise ValueError(f"init_variance {hp.init_variance} must exceed variance_eps {hp.variance_eps}")
        pairs = zip(self.feature_shapes(student)["stages"][1:], self.feature_shapes(teacher)["stages"][1:])
        return {"regressors": nn.ModuleList(
            VIDRegressor(s[0], t[0], hp.mid_channels, hp.init_variance, hp.variance_eps) for s, t in pairs)}

    def select(self, features):
        return features.blocks

    def feature_loss(self, student, teacher):
        return sum(vid_loss(regressor, s, t) for regressor, s, t in zip(self.modules["regressors"], student, teacher))
