"""Online NST (neuron selectivity transfer) on DML (TSB Table 4, "NST"): DML's logit terms plus NST between pairs.

Loss of peer k (methods/common/online_feature.py gives the DML part and the pair reduction):

    CE(z_k) + w·T²·mean_{l≠k} KL(p_l ‖ p_k) + β · mean_{l≠k} Σ_s MMD²(f_k,s, sg(f_l,s)),

MMD² with the polynomial kernel k(a, b) = (aᵀb)² between the channels of two maps, each channel's map flattened and
L2-normalised over positions: mean k(t,t) + mean k(s,s) − 2 mean k(s,t), each mean over the batch and both channel
indices (``methods.common.feature_losses.nst_loss``); s over the stage outputs without the stem (``blocks``).  Peer l's
maps are detached (so its k(t,t) term is a constant, as RepDistiller detaches it).  No extra modules.

Choices where TSB is silent, with defaults from RepDistiller (``-b 50``, ``feat[1:-1]``, the "full" MMD with the
teacher term; ``docs/notes/feature_methods.md#features-and-weights``, ``docs/notes/official_code.md#repdistiller``):
- the maps: every stage output after the stem; ``beta`` 50; the per-stage terms are summed.
- the kernel: polynomial of degree 2 with c = 0 (RepDistiller's and the NST paper's best CIFAR choice).
- Peers of different architectures: the kernel compares channels pairwise, so widths may differ; the larger map is
  average-pooled (adaptive) to the smaller size first; maps are paired from the first stage on (``zip``), the extra
  deeper stages of the longer network left out.
- DML part: ``temperature`` 4 (TSB's τ), ``kl_weight`` 1, T² scaling, mean over the other peers, joint update,
  ``warmup_epochs`` 0; see methods/common/online_feature.py.
"""
from __future__ import annotations

from pydantic import NonNegativeFloat

from harness.training.method import register_method
from methods.common import feature_terms
from methods.common.online_feature import OnlineFeatureKD, OnlineFeatureParams


class NSTParams(OnlineFeatureParams):
    beta: NonNegativeFloat = 50.0


@register_method("dml_nst")
class DMLNST(OnlineFeatureKD):
    HParams = NSTParams
    term = "nst"
    feature_term = feature_terms.NST
