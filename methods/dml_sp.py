"""Online SP (similarity-preserving KD) on DML (TSB Table 4, "SP"): DML's logit terms plus SP between every pair.

Loss of peer k (methods/common/online_feature.py gives the DML part and the pair reduction):

    CE(z_k) + w·T²·mean_{l≠k} KL(p_l ‖ p_k) + β · mean_{l≠k} ‖rownorm(G_l) − rownorm(G_k)‖²_F / b²,

G = F Fᵀ the b×b Gram matrix of the batch's flattened last-stage maps, each row L2-normalised, G_l from peer l's
detached map (``methods.common.feature_losses.sp_loss``).  No extra modules.

Choices where TSB is silent, with defaults from RepDistiller (``-b 3000``, ``feat[-2]``;
``docs/notes/feature_methods.md#features-and-weights``, ``docs/notes/official_code.md#repdistiller``):
- the map: the output of the last stage (``stages[-1]``: RepDistiller's ``feat[-2]``, the map before pooling;
  for the CIFAR WRN of this harness it includes the final BN-ReLU, which equals ``last``).
- ``beta`` 3000.
- Peers of different architectures: the Gram matrices are b×b whatever the channels and sizes, so nothing is needed.
- The relations are over the mini-batch: every peer sees the same images in the same order (with per-peer views,
  the same images under different augmentations).
- DML part: ``temperature`` 4 (TSB's τ), ``kl_weight`` 1, T² scaling, mean over the other peers, joint update,
  ``warmup_epochs`` 0; see methods/common/online_feature.py.
"""
from __future__ import annotations

from pydantic import NonNegativeFloat

from harness.training.method import register_method
from methods.common import feature_terms
from methods.common.online_feature import OnlineFeatureKD, OnlineFeatureParams


class SPParams(OnlineFeatureParams):
    beta: NonNegativeFloat = 3000.0


@register_method("dml_sp")
class DMLSP(OnlineFeatureKD):
    HParams = SPParams
    term = "sp"
    feature_term = feature_terms.SP
