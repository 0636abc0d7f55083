"""Wide ResNets WRN-d-w for 32×32 images (Zagoruyko & Komodakis), as used by RepDistiller / CRD and the
online-KD papers, registered in timm's model registry.

Layout: a 3×3 stem convolution to 16 channels (no BN / ReLU: the blocks are pre-activation), three groups of
n = (d - 4) / 6 pre-activation basic blocks (BN-ReLU-conv3×3-BN-ReLU-conv3×3) with 16w / 32w / 64w channels
and strides 1 / 2 / 2, then a final BN-ReLU, global average pooling and one linear layer.  Where a block
changes the channel count its shortcut is a bias-free 1×1 convolution (carrying the stride) applied to the
block's pre-activated input; otherwise the shortcut is the identity on the raw input.  Dropout inside the
blocks is 0 (``drop_rate`` is timm's usual dropout before the classifier, also 0 by default).

Feature indices: 0 = stem convolution output (16 channels); 1, 2 = outputs of the first and second block
groups (raw residual sums, *before* any BN-ReLU); 3 = output of the third block group **followed by the final
BN-ReLU** (modules ``block3`` → ``norm`` → ``act``; ``feature_info`` names ``act``).  So ``forward_features``
returns the activated map that is globally pooled.
"""
from __future__ import annotations

import torch
from torch import nn

from harness.models.cifar_base import CifarNet, register_variants, repdistiller_init


class PreActBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Conv2d(in_chs, out_chs, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.bn1(x))
        out = self.conv2(self.act2(self.bn2(self.conv1(pre))))
        # Identity shortcut keeps the raw input; a projection shortcut sees the pre-activated one.
        return out + (x if self.shortcut is None else self.shortcut(pre))


class CifarWideResNet(CifarNet):
    """WRN-depth-widen: ``feature_info`` names the stem and the three block groups (last one incl. final BN-ReLU)."""

    def __init__(
        self,
        depth: int = 16,
        widen: int = 1,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        blocks = (depth - 4) // 6
        stem_width = 16
        self.conv1 = nn.Conv2d(in_chans, stem_width, 3, 1, 1, bias=False)
        channels, reductions = [stem_width], [1]
        in_chs, reduction = stem_width, 1
        for i, (width, stride) in enumerate(zip((16 * widen, 32 * widen, 64 * widen), (1, 2, 2)), start=1):
            layers = []
            for b in range(blocks):
                layers.append(PreActBlock(in_chs, width, stride if b == 0 else 1))
                in_chs = width
            self.add_module(f"block{i}", nn.Sequential(*layers))
            reduction *= stride
            channels.append(width)
            reductions.append(reduction)
        self.norm = nn.BatchNorm2d(in_chs)
        self.act = nn.ReLU(inplace=True)
        self._setup([("conv1",), ("block1",), ("block2",), ("block3", "norm", "act")],
                    channels, reductions, num_classes, global_pool, drop_rate)
        # RepDistiller's WRN init: He-normal (fan-out) convolutions, unit BN, zero classifier bias.
        repdistiller_init(self, zero_classifier_bias=True)


_VARIANTS = {
    "cifar_wrn_16_1": (16, 1), "cifar_wrn_16_2": (16, 2), "cifar_wrn_16_4": (16, 4),
    "cifar_wrn_28_2": (28, 2), "cifar_wrn_28_4": (28, 4), "cifar_wrn_28_10": (28, 10),
    "cifar_wrn_40_1": (40, 1), "cifar_wrn_40_2": (40, 2),
}
register_variants(__name__, CifarWideResNet, 4,
                  {name: dict(depth=depth, widen=widen) for name, (depth, widen) in _VARIANTS.items()})
