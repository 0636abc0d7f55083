"""CC, correlation congruence (Peng et al., ICCV 2019), offline, in RepDistiller's form by default: the student's
embedded features and a frozen teacher's (trained in an earlier stage, ``methods/common/offline.py``) are compared across
the samples of the batch; an offline baseline of ACKD's tables.

Loss (methods/common/offline_feature.py gives the CE/KD part and ``cc_loss``):

    ce_weight · CE(z_s, y) + kd_weight · T² · KL(p_t ‖ p_s) + β · L_CC(E_s(e_s), E_t(sg(e_t))),

e the pooled penultimate features (``adapter.extract``'s ``embedding``: RepDistiller's ``feat[-1]``), E_s and E_t
two linear embeddings to ``embed_dim`` (RepDistiller's ``LinearEmbed``), and with the default ``correlation``
"consecutive_difference" L_CC = mean_{i = 1..B−1} Σ_d |Δ_i,d| · |Δ_{i+1},d|, Δ = E_s(e_s) − E_t(e_t).

Choices:
- ``correlation`` "consecutive_difference": what RepDistiller's ``Correlation`` computes (the code the CC authors
  sent, which builds no correlation matrix; ``docs/notes/feature_methods.md#cc-forms``).  "gaussian_rbf_taylor" is the
  paper's correlation matrix of a Gaussian RBF kernel expanded to Taylor order ``taylor_order`` with ``rbf_gamma``, on
  L2-normalised embeddings, mean squared difference over the B² entries; "bilinear" the paper's plain correlation xᵀy
  of the normalised embeddings.  ``rbf_gamma`` 0.4 and ``taylor_order`` 2 are the values third-party re-implementations
  of the paper use [unverified against the paper].  β was tuned for the default form only.
- ``embed_dim`` 128 (RepDistiller's ``feat_dim``).  Both embeddings are trainable and trained with the student's
  optimizer, the teacher's too (RepDistiller puts ``embed_t`` in ``trainable_list``); the teacher network itself
  gets no gradient.  PyTorch's default init.
- ``beta`` 0.02, ``ce_weight`` 1, ``kd_weight`` 0: RepDistiller's ``--distill correlation -a 0 -b 0.02``.
  ``temperature`` 4 and T² for an optional KD term (the CC paper combines CC with KD).
- Teacher and student of different architectures: the embeddings map each network's own width to ``embed_dim``; the
  one layer pair (the pooled penultimate features) is matched by position from the end, as RepDistiller does.
- The consecutive pairs follow the batch order, which the data loader shuffles; the teacher sees the same images.
"""
from __future__ import annotations

from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from harness.training.method import register_method
from methods.common.offline_feature import Correlation, LinearEmbedding, OfflineFeatureKD, OfflineFeatureParams, cc_loss


class CCParams(OfflineFeatureParams):
    beta: NonNegativeFloat = 0.02
    embed_dim: PositiveInt = 128
    correlation: Correlation = "consecutive_difference"
    rbf_gamma: PositiveFloat = 0.4
    taylor_order: NonNegativeInt = 2


@register_method("cc")
class CC(OfflineFeatureKD):
    """CC: correlation congruence between linear embeddings of student and frozen teacher features (offline)."""

    HParams = CCParams
    term = "cc"

    def build_connectors(self, student, teacher):
        dim = self.hp.embed_dim
        return {"embed_student": LinearEmbedding(self.feature_shapes(student)["embedding"][0], dim),
                "embed_teacher": LinearEmbedding(self.feature_shapes(teacher)["embedding"][0], dim)}

    def select(self, features):
        return features.embedding

    def feature_loss(self, student, teacher):
        return cc_loss(self.modules["embed_student"](student), self.modules["embed_teacher"](teacher),
                       self.hp.correlation, self.hp.rbf_gamma, self.hp.taylor_order)
