"""Factor Transfer's building blocks (Kim, Park and Kwak, "Paraphrasing Complex Network: Network Compression via
Factor Transfer", NeurIPS 2018), shared by the paraphraser stage (``methods/ft_paraphraser.py``) and the students
that learn from it (``methods/ft.py``, ``methods/ft_kd.py``).

- :class:`Paraphraser`: an autoencoder on the teacher's last feature map (C channels): encoder conv3×3 C→C,
  C→k·C, k·C→k·C; decoder transposed conv3×3 k·C→k·C, k·C→C, C→C; every layer stride 1, padding 1, with a bias,
  followed by an optional BatchNorm and LeakyReLU(0.1).  Its encoder output is the teacher's *factor*.
  The factor width is int(C·k) (RepDistiller; the authors' code rounds, the same for C = 64, k = 0.5).
- :class:`Translator`: the student's encoder, conv3×3 C_s→C_s, C_s→k·C_t, k·C_t→k·C_t, the same layer pattern.
- :func:`reconstruction_loss`: how the paraphraser is trained, MSE (RepDistiller's ``init``) or L1 (the authors'
  ``train_Paraphraser.py``) between the reconstruction and the (detached) teacher map.
- :func:`factor_loss`: mean |F(f_s) − F(f_t)| over batch and entries, F(f) L2-normalised per sample;
  F = ``channel_mean`` (RepDistiller: normalise(mean_c f²) over the positions, a spatial attention map) or
  ``flatten`` (the authors' ``utils.FT``: normalise(f) over channels × positions).  Factors of different spatial
  sizes: the larger is average-pooled to the smaller first (RepDistiller).  The teacher factor is detached.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from methods.common.feature_losses import attention_map, pool_to_common_size

FactorKind = Literal["channel_mean", "flatten"]
ReconstructionKind = Literal["mse", "l1"]


def factor_width(channels: int, rate: float) -> int:
    """Channels of a factor: int(C · k), at least one."""
    return max(1, int(channels * rate))


def _layers(convs: list[nn.Module], batch_norm: bool) -> nn.Sequential:
    """Each convolution followed by an optional BatchNorm and LeakyReLU(0.1), as in both reference codes."""
    layers: list[nn.Module] = []
    for conv in convs:
        layers.append(conv)
        if batch_norm:
            layers.append(nn.BatchNorm2d(conv.out_channels))
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """The teacher-side autoencoder; ``encode`` gives the teacher factor, ``forward`` the reconstruction."""

    def __init__(self, channels: int, rate: float = 0.5, batch_norm: bool = False):
        super().__init__()
        c, k = channels, factor_width(channels, rate)
        self.factor_channels = k
        self.encoder = _layers([nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, k, 3, 1, 1), nn.Conv2d(k, k, 3, 1, 1)],
                               batch_norm)
        self.decoder = _layers([nn.ConvTranspose2d(k, k, 3, 1, 1), nn.ConvTranspose2d(k, c, 3, 1, 1),
                                nn.ConvTranspose2d(c, c, 3, 1, 1)], batch_norm)

    def encode(self, f: torch.Tensor) -> torch.Tensor:
        return self.encoder(f)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(f))


class Translator(nn.Module):
    """The student-side encoder to the paraphraser's factor width."""

    def __init__(self, channels: int, factor_channels: int, batch_norm: bool = True):
        super().__init__()
        c, k = channels, factor_channels
        self.encoder = _layers([nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, k, 3, 1, 1), nn.Conv2d(k, k, 3, 1, 1)],
                               batch_norm)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.encoder(f)


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor,
                        kind: ReconstructionKind = "mse") -> torch.Tensor:
    """Mean squared (``mse``) or absolute (``l1``) error over every element; the target is detached."""
    loss = F.mse_loss if kind == "mse" else F.l1_loss
    return loss(reconstruction, target.detach())


def factor(f: torch.Tensor, kind: FactorKind = "channel_mean") -> torch.Tensor:
    """A factor map (B, C, H, W) as an L2-normalised vector per sample: (B, H·W) or (B, C·H·W)."""
    if kind == "channel_mean":
        return attention_map(f, 2.0)
    return F.normalize(f.flatten(1), dim=1)


def factor_loss(student_factor: torch.Tensor, teacher_factor: torch.Tensor,
                kind: FactorKind = "channel_mean") -> torch.Tensor:
    """FT: mean over batch and entries of |F(translated student) − F(paraphrased teacher)|."""
    s, t = pool_to_common_size(student_factor, teacher_factor.detach())
    return (factor(s, kind) - factor(t, kind)).abs().mean()
