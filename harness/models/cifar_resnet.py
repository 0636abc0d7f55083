"""CIFAR-style ResNets (3×3 stem, three stages, no max-pool) registered in timm's model registry.

timm has only ImageNet-style ResNets.  These follow the network used by the KD literature's CIFAR code
(RepDistiller, CRD, the online-KD papers): basic blocks, a 1×1 convolution + BN shortcut where the shape
changes, stage widths 16/32/64 times a multiplier, depth = 6n + 2.

Variants:

* ``cifar_resnet{8,14,20,32,44,56,110}``: stem 16, stages 16/32/64, basic blocks (depth 6n + 2).
* ``cifar_resnet8x4`` / ``cifar_resnet32x4``: RepDistiller's ×4 networks, stem 32, stages 64/128/256.
* ``cifar_resnet110_bottleneck``: the ONE / OKDDip ResNet-110, bottleneck blocks (1×1, 3×3, 1×1, expansion 4),
  12 blocks per stage (depth 9n + 2), stem 16, stage widths 16/32/64 so the stage outputs have 64/128/256
  channels.
"""
from __future__ import annotations

import torch
from torch import nn

from harness.models.cifar_base import CifarNet, register_variants, repdistiller_init

class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_chs: int, width: int, stride: int = 1):
        super().__init__()
        out_chs = width * self.expansion
        self.conv1 = nn.Conv2d(in_chs, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, out_chs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act(x + shortcut)


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (carries the stride) → 1×1 expand to ``4 × width``; BN after each conv, ReLU after
    the first two and after the residual sum."""

    expansion = 4

    def __init__(self, in_chs: int, width: int, stride: int = 1):
        super().__init__()
        out_chs = width * self.expansion
        self.conv1 = nn.Conv2d(in_chs, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        return self.act(x + shortcut)


_BLOCKS = {"basic": (BasicBlock, 6), "bottleneck": (Bottleneck, 9)}


class CifarResNet(CifarNet):
    """ResNet for small images; ``feature_info`` names the stem and the three stages.

    ``block="basic"``: depth = 6n + 2; ``block="bottleneck"``: depth = 9n + 2 (three convolutions per block).
    Stage ``i`` has ``widths[i]`` inner channels and ``widths[i] * expansion`` output channels.
    """

    def __init__(
        self,
        depth: int = 32,
        widths: tuple[int, int, int] = (16, 32, 64),
        stem_width: int = 16,
        block: str = "basic",
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if block not in _BLOCKS:
            raise ValueError(f"block must be one of {sorted(_BLOCKS)}, got {block!r}")
        block_cls, layers_per_block = _BLOCKS[block]
        if (depth - 2) % layers_per_block:
            raise ValueError(f"CIFAR ResNet depth with {block} blocks must be {layers_per_block}n+2, got {depth}")
        blocks = (depth - 2) // layers_per_block
        self.conv1 = nn.Conv2d(in_chans, stem_width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.act1 = nn.ReLU(inplace=True)
        channels, reductions = [stem_width], [1]
        in_chs, reduction = stem_width, 1
        for i, (width, stride) in enumerate(zip(widths, (1, 2, 2)), start=1):
            layers = []
            for b in range(blocks):
                layers.append(block_cls(in_chs, width, stride if b == 0 else 1))
                in_chs = width * block_cls.expansion
            self.add_module(f"layer{i}", nn.Sequential(*layers))
            reduction *= stride
            channels.append(in_chs)
            reductions.append(reduction)
        self._setup([("conv1", "bn1", "act1"), ("layer1",), ("layer2",), ("layer3",)],
                    channels, reductions, num_classes, global_pool, drop_rate)
        repdistiller_init(self)


register_variants(__name__, CifarResNet, 4, {
    **{f"cifar_resnet{d}": dict(depth=d) for d in (8, 14, 20, 32, 44, 56, 110)},
    "cifar_resnet8x4": dict(depth=8, stem_width=32, widths=(64, 128, 256)),  # RepDistiller resnet8x4
    "cifar_resnet32x4": dict(depth=32, stem_width=32, widths=(64, 128, 256)),  # RepDistiller resnet32x4
    "cifar_resnet110_bottleneck": dict(depth=110, block="bottleneck"),  # ONE / OKDDip ResNet-110
})
