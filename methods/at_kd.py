"""AT+KD, offline: attention transfer plus Hinton's KD from a frozen teacher trained in an earlier stage (AMLN
Table 5's "AT+KD" column, whose numbers AMLN copies from the FT paper's Table 3).

Loss (the same as ``at``, methods/at.py, with the KD term on):

    ce_weight · CE(z_s, y) + kd_weight · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) + β · Σ_l AT_l(f_s,l, sg(f_t,l)),

KL batch mean, teacher detached; AT over the stage outputs after the stem, matched by position (see methods/at.py).

Choices (no source gives the weights of this combination; AMLN only copies the numbers;
``docs/notes/feature_methods.md#hybrid-offline-methods``):
- ``temperature`` 4, ``ce_weight`` 0.1, ``kd_weight`` 0.9, ``beta`` 1000: RepDistiller's KD weights
  (``-r 0.1 -a 0.9``, T = 4) with its AT weight (``-b 1000``), which are also the AT authors' KD (``--alpha 0.9``,
  T = 4) and AT (``--beta 1e+3``) flags.  The AT authors' ``distillation`` differs in scale: (1 − α)·CE +
  2α·T²·KL with PyTorch's old element-wise mean (KL / C); to reproduce it set ``kd_weight`` to 1.8 / C.
- β is constant; the AT paper decays it during training when combined with KD (no schedule is given), RepDistiller
  keeps it constant.
- Teacher and student of different architectures: stages matched by position, the larger map pooled (methods/at.py).
"""
from __future__ import annotations

from pydantic import NonNegativeFloat

from harness.training.method import register_method
from methods.at import AT, ATParams


class ATKDParams(ATParams):
    ce_weight: NonNegativeFloat = 0.1
    kd_weight: NonNegativeFloat = 0.9


@register_method("at_kd")
class ATKD(AT):
    """AT+KD: attention transfer plus Hinton KD from a frozen teacher (offline)."""

    HParams = ATKDParams
