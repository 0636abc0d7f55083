"""KD, Distilling the Knowledge in a Neural Network (Hinton et al., 2015): a student learns from the
softened predictions of a frozen teacher trained in an earlier stage (``methods/common/offline.py``).

Loss: ce_weight · CE(z_s, y) + kd_weight · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)), batch mean.

Choices (the papers using KD as a baseline do not agree):
- ``temperature`` 4, ``ce_weight`` 0.1, ``kd_weight`` 0.9: RepDistiller's KD run (``docs/notes/baselines.md#kd``), the
  CRD benchmark that ACKD says its baselines follow.  KDCL's offline rows (Table 7 "2 distill 1") use T = 2 and CE + KL
  with weight 1: set ``temperature: 2, ce_weight: 1, kd_weight: 1``.
- ``t2_scaling`` True (Hinton's gradient-scale argument; RepDistiller multiplies by T² too).
- The teacher: see ``methods/common/offline.py`` (``teacher_recipe``, ``teacher_seed`` 0, ``teacher_checkpoint``,
  ``teacher_stop_epoch``).
"""
from __future__ import annotations

import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat

from harness.training.method import register_method
from methods.common.offline import OfflineMethod, TeacherParams


class KDParams(TeacherParams):
    temperature: PositiveFloat = 4.0
    ce_weight: NonNegativeFloat = 0.1
    kd_weight: NonNegativeFloat = 0.9
    t2_scaling: bool = True


@register_method("kd")
class KD(OfflineMethod):
    """Hinton's KD from a frozen teacher trained in an earlier stage."""

    HParams = KDParams

    def losses(self, batch, step):
        x = batch.view(0)
        teacher_logits = self.teacher_logits(x)
        logits = self.student(x)
        return {"ce": self.hp.ce_weight * F.cross_entropy(logits, batch.y),
                "kd": self.hp.kd_weight * self.hinton_kd(logits, teacher_logits)}
