"""Feature-level distillation losses (FitNet, AT, NST, SP, RKD, PKT) as plain functions, plus FitNet's regressor.

Each loss takes the features of the network being trained (``student``) and of the network it learns from
(``target``) and returns a scalar; the target is detached inside every function, so no gradient ever reaches it
whoever calls them (an online peer or an offline teacher).  Nothing here knows about peers, pairs or temperatures.

The forms follow RepDistiller (HobbitLong/RepDistiller, ``distiller_zoo``), the benchmark whose positions and weights
the online and offline feature methods of this harness take (``docs/notes/feature_methods.md#features-and-weights``,
``docs/notes/official_code.md#repdistiller``):

- FitNet (Romero et al. 2015), :func:`hint_loss`: mean squared error between the regressed student hint and the
  target map, averaged over every element (batch, channels, positions).  :class:`ConvRegressor` maps the student's
  hint to the target's channels and size.
- AT (Zagoruyko & Komodakis 2017), :func:`at_loss`: per map pair, a(f) = L2-normalise(mean_c f^p) over the
  positions; mean over batch and positions of (a_s − a_t)²; summed over the map pairs.
- NST (Huang & Wang 2017), :func:`nst_loss`: per map pair, every channel's map flattened and L2-normalised over
  positions; MMD² with the polynomial kernel k(a, b) = (aᵀb)²: mean k(t, t) + mean k(s, s) − 2 mean k(s, t), each
  mean over the batch and both channel indices; summed over the map pairs.
- SP (Tung & Mori 2019), :func:`sp_loss`: G = F Fᵀ over the batch (F the flattened features), each row
  L2-normalised; ‖G_t − G_s‖²_F / b².
- RKD (Park et al. 2019), :func:`rkd_loss`: w_d · smoothL1 of the pairwise distances, each set divided by the mean
  of its non-zero distances, + w_a · smoothL1 of the cosines of the angles at every vertex of every triplet.
- PKT (Passalis & Tefas 2018), :func:`pkt_loss`: K = (cos + 1) / 2 between the L2-normalised features of every
  pair in the batch, each row divided by its sum; mean over all B² entries of P_t · log((P_t + ε) / (P_s + ε)).

Maps of different spatial sizes (AT, NST): the larger map is average-pooled (adaptive) to the smaller size, on each
axis separately, before the attention or the kernel (RepDistiller pools the maps the same way, to a square size).
Lists of maps of different lengths (AT, NST) are paired from the first map on (``zip``), as RepDistiller does.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from methods.common.losses import full_precision

Maps = torch.Tensor | Sequence[torch.Tensor]


def _as_list(maps: Maps) -> list[torch.Tensor]:
    return [maps] if isinstance(maps, torch.Tensor) else list(maps)


# --- FitNet ----------------------------------------------------------------------------------------------------

def hint_loss(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """FitNet: mean over every element of (regressed student hint − target)²."""
    return F.mse_loss(student, target.detach())


class ConvRegressor(nn.Module):
    """FitNet's convolutional regressor: a student map (C_s, H_s, W_s) to the target's (C_t, H_t, W_t).

    The layer is chosen from the two sizes as RepDistiller's ``ConvReg`` does, with one more case:
    - H_s = 2 H_t and W_s = 2 W_t: 3×3 convolution, stride 2, padding 1;
    - 2 H_s = H_t and 2 W_s = W_t: 4×4 transposed convolution, stride 2, padding 1;
    - H_s ≥ H_t and W_s ≥ W_t: a convolution with kernel (1 + H_s − H_t, 1 + W_s − W_t) and no padding
      (a 1×1 convolution for equal sizes);
    - H_s ≤ H_t and W_s ≤ W_t (any other smaller student map, which RepDistiller rejects): a transposed
      convolution with kernel (1 + H_t − H_s, 1 + W_t − W_s), stride 1, the mirror of the previous case.
    Then BatchNorm and, with ``relu`` (RepDistiller's default for FitNet), a ReLU.  PyTorch's default init.
    """

    def __init__(self, student_shape: Sequence[int], target_shape: Sequence[int], relu: bool = True):
        super().__init__()
        cs, hs, ws = (int(v) for v in student_shape)
        ct, ht, wt = (int(v) for v in target_shape)
        if (hs, ws) == (2 * ht, 2 * wt):
            self.conv = nn.Conv2d(cs, ct, kernel_size=3, stride=2, padding=1)
        elif (2 * hs, 2 * ws) == (ht, wt):
            self.conv = nn.ConvTranspose2d(cs, ct, kernel_size=4, stride=2, padding=1)
        elif hs >= ht and ws >= wt:
            self.conv = nn.Conv2d(cs, ct, kernel_size=(1 + hs - ht, 1 + ws - wt))
        elif hs <= ht and ws <= wt:
            self.conv = nn.ConvTranspose2d(cs, ct, kernel_size=(1 + ht - hs, 1 + wt - ws))
        else:
            raise ValueError(f"no regressor from a {hs}x{ws} map to a {ht}x{wt} map (larger on one axis only)")
        self.bn = nn.BatchNorm2d(ct)
        self.relu = relu
        self.student_shape, self.target_shape = (cs, hs, ws), (ct, ht, wt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


# --- spatial maps: AT and NST ----------------------------------------------------------------------------------

def pool_to_common_size(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool whichever map is larger (per axis) down to the smaller height and width."""
    size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
    a = a if tuple(a.shape[2:]) == size else F.adaptive_avg_pool2d(a, size)
    b = b if tuple(b.shape[2:]) == size else F.adaptive_avg_pool2d(b, size)
    return a, b


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """AT's spatial attention: mean over channels of f^p, flattened, L2-normalised per sample: (B, H·W)."""
    return F.normalize(f.pow(p).mean(1).flatten(1), dim=1)


def at_loss(student: Maps, target: Maps, p: float = 2.0) -> torch.Tensor:
    """AT: Σ over map pairs of mean_{batch, positions} (a(f_s) − a(f_t))²."""
    total = None
    for s, t in zip(_as_list(student), _as_list(target)):
        s, t = pool_to_common_size(s, t.detach())
        term = (attention_map(s, p) - attention_map(t, p)).pow(2).mean()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("at_loss needs at least one pair of maps")
    return total


def _poly2_kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean over the batch and every (channel of a, channel of b) of (aᵀb)²; a, b: (B, C, N)."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


@full_precision  # Gram matrices and products of embeddings overflow or round away in fp16/bf16
def nst_loss(student: Maps, target: Maps) -> torch.Tensor:
    """NST: Σ over map pairs of MMD² with the kernel (aᵀb)² between channel maps L2-normalised over positions."""
    total = None
    for s, t in zip(_as_list(student), _as_list(target)):
        s, t = pool_to_common_size(s, t.detach())
        s = F.normalize(s.flatten(2), dim=2)
        t = F.normalize(t.flatten(2), dim=2)
        term = _poly2_kernel_mean(t, t) + _poly2_kernel_mean(s, s) - 2 * _poly2_kernel_mean(s, t)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("nst_loss needs at least one pair of maps")
    return total


# --- batch relations: SP, RKD, PKT -----------------------------------------------------------------------------

@full_precision  # Gram matrices and products of embeddings overflow or round away in fp16/bf16
def sp_loss(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SP: ‖rownorm(F_t F_tᵀ) − rownorm(F_s F_sᵀ)‖²_F / b², F the features flattened per sample."""
    b = student.shape[0]
    s, t = student.flatten(1), target.detach().flatten(1)
    gs = F.normalize(s @ s.t(), dim=1)
    gt = F.normalize(t @ t.t(), dim=1)
    return (gt - gs).pow(2).sum() / (b * b)


def pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances between the rows of e (B, D), the diagonal exactly 0 (squared distances ≥ eps)."""
    sq = e.pow(2).sum(1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp_min(eps)
    off_diagonal = 1 - torch.eye(len(e), dtype=e.dtype, device=e.device)
    return d2.sqrt() * off_diagonal


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    d = pairwise_distances(e)
    # the mean of the positive distances without selecting them: a boolean selection has a data-dependent size,
    # which on a GPU waits for the device every step (d ≥ 0, so the zeros add nothing to the sum)
    return d / (d.sum() / (d > 0).sum())


def _triplet_cosines(e: torch.Tensor) -> torch.Tensor:
    """(B, B, B): entry [i, j, k] = cos of the angle at e_i between e_j − e_i and e_k − e_i (0 if j or k is i)."""
    directions = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)  # [i, j] = unit(e_j − e_i)
    return torch.bmm(directions, directions.transpose(1, 2))


@full_precision  # Gram matrices and products of embeddings overflow or round away in fp16/bf16
def rkd_loss(student: torch.Tensor, target: torch.Tensor, distance_weight: float = 25.0,
             angle_weight: float = 50.0) -> torch.Tensor:
    """RKD: w_d · smoothL1(distance potentials) + w_a · smoothL1(angle potentials), means over all entries."""
    s, t = student.flatten(1), target.detach().flatten(1)
    loss_d = F.smooth_l1_loss(_normalised_distances(s), _normalised_distances(t))
    loss_a = F.smooth_l1_loss(_triplet_cosines(s), _triplet_cosines(t))
    return distance_weight * loss_d + angle_weight * loss_a


def _cosine_conditional(e: torch.Tensor, eps: float) -> torch.Tensor:
    e = e / (e.norm(dim=1, keepdim=True) + eps)
    kernel = (e @ e.t() + 1) / 2
    return kernel / kernel.sum(1, keepdim=True)


@full_precision  # Gram matrices and products of embeddings overflow or round away in fp16/bf16
def pkt_loss(student: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """PKT: mean over the B² entries of P_t · log((P_t + ε) / (P_s + ε)), P the row-normalised cosine kernel."""
    ps = _cosine_conditional(student.flatten(1), eps)
    pt = _cosine_conditional(target.detach().flatten(1), eps)
    return (pt * torch.log((pt + eps) / (ps + eps))).mean()
