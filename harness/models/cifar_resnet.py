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

This module also holds :class:`CifarNet`, the small base class that implements timm's model protocol
(``feature_info``, ``forward_features``, ``forward_head``, ``forward_intermediates``,
``prune_intermediate_layers``, ``get_classifier`` / ``reset_classifier``) for every CIFAR family in this
package.  A subclass registers its child modules in execution order and then calls :meth:`CifarNet._setup`
with the grouping of those children into "stem + stages".
"""
from __future__ import annotations

import torch
from torch import nn

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class CifarNet(nn.Module):
    """timm model protocol shared by the CIFAR networks of this package.

    A subclass creates its children in the order they run (timm's ``features_only`` wrapper relies on
    that order), then calls ``_setup`` with ``stages``: one tuple of direct-child names per feature index
    (index 0 is the stem), ``channels`` and ``reductions`` per index, and the head settings.  The output of
    the last child of a group is that index's feature map; the last index's map is what
    ``forward_features`` returns (the map right before global pooling).  The head is global average pooling,
    optional dropout (``drop_rate``) and one ``nn.Linear`` called ``fc``.
    """

    def _setup(
        self,
        stages: list[tuple[str, ...]],
        channels: list[int],
        reductions: list[int],
        num_classes: int,
        global_pool: str,
        drop_rate: float,
    ) -> None:
        if not len(stages) == len(channels) == len(reductions):
            raise ValueError("stages, channels and reductions must have one entry per feature index")
        self._stage_names = [tuple(group) for group in stages]
        self.feature_info = [
            dict(num_chs=c, reduction=r, module=group[-1])
            for group, c, r in zip(self._stage_names, channels, reductions)
        ]
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = channels[-1]
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _stages(self) -> list[nn.Module]:
        stages = []
        for group in self._stage_names:
            modules = [getattr(self, name) for name in group]
            stages.append(modules[0] if len(modules) == 1 else nn.Sequential(*modules))
        return stages

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
        """timm's protocol: index 0 is the stem, then one index per stage; returns (final map, [intermediates]).

        ``norm`` is accepted for compatibility and ignored: a final norm (WRN's BN-ReLU) already belongs to the
        last stage.
        """
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
        take, max_index = feature_take_indices(len(self._stage_names), indices)
        for group in self._stage_names[max_index + 1:]:
            for name in group:
                setattr(self, name, nn.Identity())
        if prune_head:
            self.reset_classifier(0, "")
        return take


def cifar_cfg(**kwargs) -> dict:
    """Default (untrained) cfg for a 32×32 CIFAR-100 network; override ``pool_size`` / ``first_conv``."""
    cfg = dict(num_classes=100, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0,
               mean=CIFAR100_MEAN, std=CIFAR100_STD, first_conv="conv1", classifier="fc")
    cfg.update(kwargs)
    return cfg


def build_cifar(cls, variant: str, pretrained: bool, num_feature_indices: int, **kwargs):
    """``build_model_with_cfg`` with a ``features_only`` default of every stage (indices 1..n, not the stem)."""
    return build_model_with_cfg(
        cls, variant, pretrained,
        feature_cfg=dict(out_indices=tuple(range(1, num_feature_indices)), flatten_sequential=False),
        **kwargs,
    )


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
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def _cfg(**kwargs):
    return cifar_cfg(**kwargs)


default_cfgs = generate_default_cfgs({
    **{f"cifar_resnet{d}.untrained": _cfg() for d in (8, 14, 20, 32, 44, 56, 110)},
    "cifar_resnet8x4.untrained": _cfg(),
    "cifar_resnet32x4.untrained": _cfg(),
    "cifar_resnet110_bottleneck.untrained": _cfg(),
})


def _create(variant: str, pretrained: bool = False, **kwargs) -> CifarResNet:
    return build_cifar(CifarResNet, variant, pretrained, 4, **kwargs)


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


@register_model
def cifar_resnet8x4(pretrained: bool = False, **kwargs) -> CifarResNet:
    """RepDistiller ``resnet8x4``: stem 32, stages 64/128/256, one basic block per stage."""
    return _create("cifar_resnet8x4", pretrained, depth=8, stem_width=32, widths=(64, 128, 256), **kwargs)


@register_model
def cifar_resnet32x4(pretrained: bool = False, **kwargs) -> CifarResNet:
    """RepDistiller ``resnet32x4``: stem 32, stages 64/128/256, five basic blocks per stage."""
    return _create("cifar_resnet32x4", pretrained, depth=32, stem_width=32, widths=(64, 128, 256), **kwargs)


@register_model
def cifar_resnet110_bottleneck(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ONE / OKDDip ResNet-110: 12 bottleneck blocks per stage, outputs 64/128/256 channels."""
    return _create("cifar_resnet110_bottleneck", pretrained, depth=110, block="bottleneck", **kwargs)
