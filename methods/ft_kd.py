"""FT+KD: Factor Transfer (methods/ft.py) plus Hinton's KD term from the same frozen teacher, the hybrid of the
FT paper's Table 3 that AMLN Table 5 copies.

Loss: ce_weight · CE(z_s, y) + kd_weight · T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)) + beta · FT  (FT as in
methods/ft.py, with the same stages: teacher, then paraphraser).

Choices: the FT paper gives no weights for the hybrid that reach us; the defaults follow RepDistiller's way of
combining a feature loss with KD (its README: keep ``-b``, set ``-a`` non-zero, as ``-r 1 -a 1 -b 0.8`` for
CRD+KD): ``ce_weight`` 1, ``kd_weight`` 1, ``temperature`` 4 (RepDistiller's ``kd_T``), ``t2_scaling`` true, and
FT's own ``beta`` 200 and every other FT hyper-parameter (methods/ft.py).
"""
from __future__ import annotations

from pydantic import NonNegativeFloat, PositiveFloat

from harness.training.method import register_method
from methods.ft import FT, FTParams


class FTKDParams(FTParams):
    kd_weight: NonNegativeFloat = 1.0
    temperature: PositiveFloat = 4.0
    t2_scaling: bool = True


@register_method("ft_kd")
class FTKD(FT):
    """Factor Transfer plus KD from the same frozen teacher."""

    HParams = FTKDParams

    def losses(self, batch, step):
        terms, student_logits, teacher_logits = self.ft_terms(batch)
        return {**terms, "kd": self.hp.kd_weight * self.hinton_kd(student_logits, teacher_logits)}
