"""ShuffleNetV1 for 32×32 images (RepDistiller / CRD ``ShuffleV1``), registered in timm.

Stem: 1×1 convolution to 24 channels + BN + ReLU (no stride, no pooling).  Three stages with 240 / 480 / 960
output channels and 4 / 8 / 4 units, group count 3.  A unit is: grouped 1×1 conv to a quarter of its output
width (BN, ReLU; ungrouped when its input is the 24-channel stem), channel shuffle, 3×3 depthwise conv (BN, ReLU;
this is where the stride sits), grouped 1×1 conv (BN).  The first unit of each stage has stride 2: its branch
produces ``out - in`` channels and is concatenated with a 3×3 stride-2 average-pooled shortcut; the other units
add an identity shortcut.  ReLU after the concatenation / sum.  Head: global average pooling (4×4) and one linear
layer.

Feature indices: 0 = stem (24 channels, reduction 1), 1..3 = the three stages (reductions 2, 4, 8), each after
its last unit's ReLU.
"""
from __future__ import annotations

import torch
from torch import nn

from harness.models.cifar_base import CifarNet, register_variants


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal groups: (g, C/g) → (C/g, g)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int, groups: int, first_groups: int):
        super().__init__()
        self.stride = stride
        branch_chs = out_chs - in_chs if stride == 2 else out_chs
        mid = branch_chs // 4
        self.shuffle_groups = first_groups
        self.conv1 = nn.Conv2d(in_chs, mid, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch_chs, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_chs)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.AvgPool2d(3, 2, 1) if stride == 2 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.shuffle_groups)
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = torch.cat([out, self.pool(x)], 1) if self.pool is not None else out + x
        return self.act(out)


class CifarShuffleNetV1(CifarNet):
    """ShuffleNetV1 for CIFAR; ``feature_info`` names the stem and the three stages."""

    def __init__(
        self,
        out_chs: tuple[int, int, int] = (240, 480, 960),
        num_blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
        stem_width: int = 24,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, stem_width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.act1 = nn.ReLU(inplace=True)
        channels, reductions = [stem_width], [1]
        in_chs, reduction = stem_width, 1
        for i, (width, blocks) in enumerate(zip(out_chs, num_blocks), start=1):
            units = []
            for b in range(blocks):
                # The unit reading the stem uses an ungrouped first 1×1 conv (the stem is too narrow to split).
                first_groups = 1 if in_chs == stem_width else groups
                units.append(ShuffleUnit(in_chs, width, 2 if b == 0 else 1, groups, first_groups))
                in_chs = width
            self.add_module(f"layer{i}", nn.Sequential(*units))
            reduction *= 2
            channels.append(width)
            reductions.append(reduction)
        self._setup([("conv1", "bn1", "act1"), ("layer1",), ("layer2",), ("layer3",)],
                    channels, reductions, num_classes, global_pool, drop_rate)
        # RepDistiller's ShuffleV1 keeps PyTorch's default initialisation; so does this one.


# RepDistiller ``ShuffleV1``: groups 3, stages 240 / 480 / 960 channels with 4 / 8 / 4 units.
register_variants(__name__, CifarShuffleNetV1, 4, {"cifar_shufflenetv1": {}}, pool_size=(4, 4))
