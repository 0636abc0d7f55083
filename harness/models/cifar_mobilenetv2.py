"""MobileNetV2 for 32×32 images in the RepDistiller / CRD style (``mobile_half`` = width 0.5), registered in timm.

Differences from the ImageNet network, following RepDistiller: the stem 3×3 convolution has stride 2 (32 → 16)
and the second inverted-residual setting (24 channels) has stride 1 instead of 2, so the overall reduction is
16 and the last map is 2×2.  Expansion ratio 6 (1 for the first setting).  Channel counts are
``int(c * width_mult)`` (truncated, not rounded to a multiple of 8, as in RepDistiller); the final 1×1
convolution has 1280 channels, or ``int(1280 * width_mult)`` when ``width_mult > 1``.  Head: global average
pooling and one linear layer (no dropout unless ``drop_rate``).

Inverted-residual settings (t, c, n, s): (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
(6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1).

Feature indices follow RepDistiller's feature list: 0 = stem (conv-BN-ReLU, reduction 2); 1 = settings 1-2
(``layer1``, 24w channels, reduction 2); 2 = setting 3 (``layer2``, 32w, reduction 4); 3 = settings 4-5
(``layer3``, 96w, reduction 8); 4 = settings 6-7 (``layer4``, 320w channels, reduction 16: RepDistiller's ``f4``).
The final 1×1 conv-BN-ReLU to 1280 channels (``conv2``) runs after the last stage and before pooling, as in
RepDistiller, where it is in no feature (``f5`` is the pooled embedding): ``forward_features`` and the adapter's
``last`` map include it, the stage maps do not.  (Until 2026-12-01 stage 4 included it, which made the feature
methods' modules on a MobileNetV2 several times the network: ACKD's discriminators 6.6M on a 0.8M student.)
Stages 2-4 each start with the stride-2 block; stage 1 runs at the stem's resolution.
"""
from __future__ import annotations

import torch
from torch import nn

from harness.models.cifar_base import CifarNet, register_variants, repdistiller_init

# (expansion t, channels c, repeats n, first stride s), grouped into the four feature stages.
_SETTINGS = (
    ((1, 16, 1, 1), (6, 24, 2, 1)),
    ((6, 32, 3, 2),),
    ((6, 64, 4, 2), (6, 96, 3, 1)),
    ((6, 160, 3, 2), (6, 320, 1, 1)),
)


def _conv_bn_act(in_chs: int, out_chs: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1×1 expand (BN, ReLU) → 3×3 depthwise (BN, ReLU) → 1×1 linear projection (BN); identity add when
    the shapes match."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, expand: int):
        super().__init__()
        mid = in_chs * expand
        self.use_residual = stride == 1 and in_chs == out_chs
        self.conv = nn.Sequential(
            nn.Conv2d(in_chs, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_chs, 1, bias=False), nn.BatchNorm2d(out_chs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(CifarNet):
    """MobileNetV2 for CIFAR; ``feature_info`` names the stem and four stages (the last incl. the 1×1 head conv)."""

    def __init__(
        self,
        width_mult: float = 1.0,
        expand: int = 6,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ):
        super().__init__()
        in_chs = int(32 * width_mult)
        self.conv1 = _conv_bn_act(in_chans, in_chs, 3, stride=2)
        channels, reductions = [in_chs], [2]
        reduction = 2
        for i, stage in enumerate(_SETTINGS, start=1):
            blocks = []
            for t, c, n, s in stage:
                out_chs = int(c * width_mult)
                for b in range(n):
                    blocks.append(InvertedResidual(in_chs, out_chs, s if b == 0 else 1, expand if t != 1 else 1))
                    in_chs = out_chs
                reduction *= s
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            channels.append(in_chs)
            reductions.append(reduction)
        last_chs = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_act(in_chs, last_chs, 1)
        self._setup([("conv1",), ("layer1",), ("layer2",), ("layer3",), ("layer4",)],
                    channels, reductions, num_classes, global_pool, drop_rate, neck=("conv2",), num_features=last_chs)
        # RepDistiller's init: He-normal (fan-out) convolutions, unit BN, N(0, 0.01) classifier with zero bias.
        repdistiller_init(self, classifier_std=0.01, zero_classifier_bias=True)


_WIDTHS = {"cifar_mobilenetv2_x0_5": 0.5, "cifar_mobilenetv2_x1_0": 1.0, "cifar_mobilenetv2_x1_4": 1.4}  # 0.5: RepDistiller ``mobile_half``
register_variants(__name__, CifarMobileNetV2, 5, {name: dict(width_mult=width) for name, width in _WIDTHS.items()},
                  pool_size=(2, 2), first_conv="conv1.0")
