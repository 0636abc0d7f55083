"""Online PKT (probabilistic knowledge transfer) on DML (TSB Table 4, "PKT"): DML's logit terms plus PKT per pair.

Loss of peer k (methods/common/online_feature.py gives the DML part and the pair reduction):

    CE(z_k) + w·T²·mean_{l≠k} KL(p_l ‖ p_k) + β · mean_{l≠k} mean_{i,j} P_l[i,j]·log((P_l[i,j] + ε) / (P_k[i,j] + ε)),

P[i, j] = K[i, j] / Σ_j K[i, j], K = (cos(e_i, e_j) + 1) / 2 over the batch's pooled embeddings e (each divided by
its norm + ε), P_l from peer l's detached embeddings (``methods.common.feature_losses.pkt_loss``).  No extra modules.

Choices where TSB is silent, with defaults from RepDistiller (``-b 30000``, ``feat[-1]``, ε = 1e-7;
``docs/notes/feature_methods.md#features-and-weights``, ``docs/notes/official_code.md#repdistiller``):
- the features: the pooled embedding before the classifier (RepDistiller's ``feat[-1]``).
- ``beta`` 30000; ``eps`` 1e-7; the mean is over all b² entries (RepDistiller's ``torch.mean``, not a per-row sum),
  the diagonal included.
- Peers of different architectures: the b×b kernels do not depend on the widths.
- DML part: ``temperature`` 4 (TSB's τ), ``kl_weight`` 1, T² scaling, mean over the other peers, joint update,
  ``warmup_epochs`` 0; see methods/common/online_feature.py.
"""
from __future__ import annotations

from pydantic import NonNegativeFloat, PositiveFloat

from harness.training.method import register_method
from methods.common import feature_terms
from methods.common.online_feature import OnlineFeatureKD, OnlineFeatureParams


class PKTParams(OnlineFeatureParams):
    beta: NonNegativeFloat = 30000.0
    eps: PositiveFloat = 1e-7


@register_method("dml_pkt")
class DMLPKT(OnlineFeatureKD):
    HParams = PKTParams
    term = "pkt"
    feature_term = feature_terms.PKT
