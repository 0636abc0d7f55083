"""CIFAR-style ResNets (3×3 stem, three stages, no max-pool) registered in timm's model registry.

timm has only ImageNet-style ResNets.  These follow the network used by the KD literature's CIFAR code
(RepDistiller, CRD, the online-KD papers): basic blocks, a 1×1 convolution + BN shortcut where the shape
changes, stage widths 16/32/64 times a multiplier, depth = 6n + 2.
"""
from __future__ import annotations

import torch
from torch import nn

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False)
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


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images; ``feature_info`` names the stem and the three stages."""

    def __init__(
        self,
        depth: int = 32,
        widths: tuple[int, int, int] = (16, 32, 64),
        stem_width: int = 16,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.conv1 = nn.Conv2d(in_chans, stem_width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info = [dict(num_chs=stem_width, reduction=1, module="act1")]
        in_chs, reduction = stem_width, 1
        for i, (width, stride) in enumerate(zip(widths, (1, 2, 2)), start=1):
            layers = [BasicBlock(in_chs if b == 0 else width, width, stride if b == 0 else 1) for b in range(blocks)]
            self.add_module(f"layer{i}", nn.Sequential(*layers))
            in_chs, reduction = width, reduction * stride
            self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f"layer{i}"))
        self.num_features = self.head_hidden_size = in_chs
        self.global_pool = global_pool
        self.fc = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stages(self) -> list[nn.Module]:
        return [nn.Sequential(self.conv1, self.bn1, self.act1), self.layer1, self.layer2, self.layer3]

    def get_classifier(self, name_only: bool = False):
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self._stages():
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool:
            x = x.mean((2, 3))
        if self.drop_rate:
            x = nn.functional.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices=None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """timm's protocol: index 0 is the stem, 1..3 the stages; returns (final map, [intermediates])."""
        if output_fmt != "NCHW":
            raise ValueError("only NCHW output is supported")
        stages = self._stages()
        take, max_index = feature_take_indices(len(stages), indices)
        intermediates = []
        for i, stage in enumerate(stages[: max_index + 1] if stop_early else stages):
            x = stage(x)
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        take, max_index = feature_take_indices(4, indices)
        for i in range(max_index + 1, 4):
            setattr(self, f"layer{i}", nn.Identity())
        if prune_head:
            self.reset_classifier(0, "")
        return take


def _cfg(**kwargs):
    return dict(num_classes=100, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0,
                mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
                first_conv="conv1", classifier="fc", **kwargs)


default_cfgs = generate_default_cfgs(
    {f"cifar_resnet{d}.untrained": _cfg() for d in (8, 14, 20, 32, 44, 56, 110)}
)


def _create(variant: str, pretrained: bool = False, **kwargs) -> CifarResNet:
    return build_model_with_cfg(
        CifarResNet, variant, pretrained, feature_cfg=dict(out_indices=(1, 2, 3), flatten_sequential=False),
        **kwargs,
    )


@register_model
def cifar_resnet8(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create("cifar_resnet8", pretrained, depth=8, **kwargs)


@register_model
def cifar_resnet14(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create("cifar_resnet14", pretrained, depth=14, **kwargs)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create("cifar_resnet20", pretrained, depth=20, **kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create("cifar_resnet32", pretrained, depth=32, **kwargs)


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create("cifar_resnet44", pretrained, depth=44, **kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create("cifar_resnet56", pretrained, depth=56, **kwargs)


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create("cifar_resnet110", pretrained, depth=110, **kwargs)
