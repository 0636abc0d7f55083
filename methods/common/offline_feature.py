"""Offline feature distillation from a frozen teacher: the loss every such method minimises, and the CC and VID pieces.

:class:`OfflineFeatureKD` is RepDistiller's ``train_distill`` step (``docs/notes/official_code.md#repdistiller``) for a
student and a frozen teacher trained in an earlier stage (``methods/common/offline.py``):

    ce_weight · CE(z_s, y) + kd_weight · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) + beta · L_m(φ(f_s), sg(f_t)),

RepDistiller's ``-r``, ``-a`` and ``-b`` with its ``kd_T`` = 4 (batch-mean KL, T² scaling).  The teacher runs in
eval mode under ``no_grad``; its features are detached, so no gradient ever reaches it.  A subclass names the
features it matches (:meth:`OfflineFeatureKD.select`) and the loss L_m (:meth:`OfflineFeatureKD.feature_loss`), and
may add trainable modules φ (embeddings, regressors) under their own keys of ``modules``: ``OfflineMethod``'s
optimizer groups put them in the student's optimizer, as RepDistiller's ``trainable_list`` does.

Loss functions not in ``methods/common/feature_losses.py``:

- CC (Peng et al., ICCV 2019), :func:`cc_loss`, in three forms (``correlation``):
  ``"consecutive_difference"``, what RepDistiller's ``Correlation`` computes (code the CC authors sent to
  RepDistiller): Δ = |e_s − e_t| per sample, loss = mean over the B − 1 consecutive pairs (i, i + 1) of the batch of
  Σ_d Δ_i,d · Δ_{i+1},d.  It compares no correlation matrix at all;
  ``"gaussian_rbf_taylor"``, the paper's correlation congruence: the embeddings L2-normalised, the B × B correlation
  matrix of a Gaussian RBF kernel exp(−γ‖x − y‖²) = e^{−2γ} exp(2γ xᵀy) (unit vectors) expanded to Taylor order P,
  K = Σ_{p=0..P} e^{−2γ} (2γ)^p / p! · (xᵀy)^p, and the loss the mean over the B² entries of (K_s − K_t)²;
  ``"bilinear"``, the paper's plain correlation K = xᵀy of the L2-normalised embeddings, the same mean square.
  :class:`LinearEmbedding` is RepDistiller's ``LinearEmbed`` (flatten, one linear layer to ``embed_dim``).
- VID (Ahn et al., CVPR 2019), :class:`VIDRegressor` and :func:`vid_loss`: the student map regressed to the
  teacher's channels by 1×1 conv → ReLU → 1×1 conv → ReLU → 1×1 conv (no biases; mid width the teacher's channels;
  PyTorch's default init), one learned variance per teacher channel σ²_c = softplus(v_c) + ε, v initialised so that
  σ² starts at 5; loss = mean over (batch, channels, positions) of ½ ((μ − t)² / σ²_c + log σ²_c), RepDistiller's
  ``VIDLoss`` (from the VID authors' code).  A map larger than the other is average-pooled to the smaller size first
  (RepDistiller pools the same way), the student's before the regressor.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat
from torch import nn

from harness.models import adapter
from methods.common.feature_losses import pool_to_common_size
from methods.common.feature_terms import FeatureTerm
from methods.common.offline import OfflineMethod, TeacherParams
from methods.common.online_feature import detach_features

Correlation = Literal["consecutive_difference", "gaussian_rbf_taylor", "bilinear"]


# --- the offline feature method ---------------------------------------------------------------------------------

class OfflineFeatureParams(TeacherParams):
    beta: NonNegativeFloat = 1.0
    ce_weight: NonNegativeFloat = 1.0
    kd_weight: NonNegativeFloat = 0.0
    temperature: PositiveFloat = 4.0
    t2_scaling: bool = True


class OfflineFeatureKD(OfflineMethod):
    """A student trained on CE, optional Hinton KD and a feature loss against a frozen teacher's detached features.

    Terms logged: ``ce``, ``kd`` (only when ``kd_weight`` > 0) and the subclass's ``term``, each with its weight.
    """

    HParams = OfflineFeatureParams
    term: ClassVar[str] = "feat"
    feature_term: ClassVar[FeatureTerm | None] = None  # the features and loss, unless select/feature_loss are written

    def build(self) -> nn.ModuleDict:
        modules = super().build()
        modules.update(self.build_connectors(modules["peers"][0], modules["teacher"]))
        return modules

    def build_connectors(self, student: nn.Module, teacher: nn.Module) -> dict[str, nn.Module]:
        """Trainable modules between student and teacher features, by key; none by default."""
        return {}

    def feature_shapes(self, model: nn.Module) -> dict:
        """Per-sample shapes of ``model``'s features at the cell's input size (``adapter.shapes``)."""
        return adapter.shapes(model, (self.ctx.in_chans, *self.ctx.image_size))

    def select(self, features: adapter.Features) -> Any:
        """The features matched (a tensor or a list of maps): the ``feature_term``'s by default."""
        return self.feature_term.select(features)

    def feature_loss(self, student: Any, teacher: Any) -> torch.Tensor:
        """Unweighted loss of the student's selected features against the teacher's (detached): the
        ``feature_term``'s by default."""
        return self.feature_term(student, teacher, self.hp)

    def losses(self, batch, step):
        hp = self.hp
        student, teacher = self.features(batch.view(0))
        terms = {"ce": hp.ce_weight * F.cross_entropy(student.logits, batch.y)}
        if hp.kd_weight > 0:
            terms["kd"] = hp.kd_weight * self.hinton_kd(student.logits, teacher.logits)
        terms[self.term] = hp.beta * self.feature_loss(self.select(student), detach_features(self.select(teacher)))
        return terms


# --- CC ---------------------------------------------------------------------------------------------------------

class LinearEmbedding(nn.Module):
    """RepDistiller's ``LinearEmbed``: the features flattened per sample, then one linear layer."""

    def __init__(self, in_features: int, out_features: int = 128):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def taylor_rbf_correlation(e: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    """B × B: Σ_{p=0..order} e^{−2γ} (2γ)^p / p! · (x_iᵀx_j)^p for the L2-normalised rows x of e."""
    x = F.normalize(e, dim=1)
    similarity = x @ x.t()
    return sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * similarity.pow(p)
               for p in range(order + 1))


def _consecutive_difference(s: torch.Tensor, t: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    delta = (s - t).abs()
    return (delta[:-1] * delta[1:]).sum(1).mean()


def _gaussian_rbf_taylor(s: torch.Tensor, t: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    return (taylor_rbf_correlation(s, gamma, order) - taylor_rbf_correlation(t, gamma, order)).pow(2).mean()


def _bilinear(s: torch.Tensor, t: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
    return (s @ s.t() - t @ t.t()).pow(2).mean()


CORRELATIONS = {"consecutive_difference": _consecutive_difference, "gaussian_rbf_taylor": _gaussian_rbf_taylor,
                "bilinear": _bilinear}


def cc_loss(student: torch.Tensor, target: torch.Tensor, correlation: Correlation = "consecutive_difference",
            gamma: float = 0.4, order: int = 2) -> torch.Tensor:
    """CC between the embedded student and target vectors (B, D); see the module docstring for the forms.

    The target is not detached: its embedding is trained too (RepDistiller trains ``embed_t``); detach the teacher's
    features before embedding them.
    """
    if correlation not in CORRELATIONS:
        raise ValueError(f"unknown correlation {correlation!r}; valid: {', '.join(CORRELATIONS)}")
    return CORRELATIONS[correlation](student.flatten(1), target.flatten(1), gamma, order)


# --- VID --------------------------------------------------------------------------------------------------------

def softplus_inverse(y: float) -> float:
    """v with softplus(v) = y."""
    return math.log(math.expm1(y))


class VIDRegressor(nn.Module):
    """VID's Gaussian q(t | s): mean μ(s) by three 1×1 convolutions, one learned variance per target channel."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None,
                 init_variance: float = 5.0, eps: float = 1e-5):
        super().__init__()
        mid = mid_channels or out_channels
        self.mean = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=1, bias=False), nn.ReLU(),
            nn.Conv2d(mid, mid, kernel_size=1, bias=False), nn.ReLU(),
            nn.Conv2d(mid, out_channels, kernel_size=1, bias=False),
        )
        # σ² = softplus(v) + eps, so v starts at the softplus pre-image of init_variance − eps (σ² = init_variance)
        self.variance_preimage = nn.Parameter(torch.full((out_channels,), softplus_inverse(init_variance - eps)))
        self.eps = eps

    def variance(self) -> torch.Tensor:
        return F.softplus(self.variance_preimage) + self.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mean(x)


def vid_loss(regressor: VIDRegressor, student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean over (batch, channels, positions) of ½((μ(f_s) − f_t)² / σ²_c + log σ²_c), larger map pooled first."""
    student, target = pool_to_common_size(student, target.detach())
    mean = regressor(student)
    variance = regressor.variance().view(1, -1, 1, 1)
    return (0.5 * ((mean - target).pow(2) / variance + variance.log())).mean()
