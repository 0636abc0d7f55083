"""VGG with batch norm for 32×32 images (RepDistiller / CRD ``vgg8_bn`` and ``vgg13_bn``), registered in timm.

Five groups of 3×3 convolutions (with bias) + BN + ReLU; 2×2 max-pooling after the first, second and third
group (32 → 16 → 8 → 4), none between the fourth and fifth (the RepDistiller network pools there only for 64×64
inputs), then global average pooling and a single ``Linear(512, num_classes)``; no fully connected hidden
layers.

* ``cifar_vgg8``:  groups [64], [128], [256], [512], [512] (5 convolutions + classifier).
* ``cifar_vgg13``: groups [64, 64], [128, 128], [256, 256], [512, 512], [512, 512].

Feature indices: 0 = first group (the "stem", 64 channels, 32×32), 1..4 = the other groups (each index
includes the max-pool that precedes its group), all after their final ReLU.
"""
from __future__ import annotations

from torch import nn

from harness.models.cifar_base import CifarNet, register_variants, repdistiller_init

_LAYOUTS = {
    "cifar_vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "cifar_vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
}
_POOL_BEFORE = (False, True, True, True, False)  # max-pool ahead of groups 1, 2, 3 at 32×32 input


def _conv_group(in_chs: int, widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_chs, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_chs = width
    return nn.Sequential(*layers)


class CifarVGG(CifarNet):
    """VGG-BN for CIFAR; ``feature_info`` names the five convolution groups."""

    def __init__(
        self,
        layout: tuple[tuple[int, ...], ...] = _LAYOUTS["cifar_vgg8"],
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ):
        super().__init__()
        stages, channels, reductions = [], [], []
        in_chs, reduction = in_chans, 1
        for i, (widths, pool) in enumerate(zip(layout, _POOL_BEFORE)):
            group: tuple[str, ...] = ()
            if pool:
                self.add_module(f"pool{i - 1}", nn.MaxPool2d(2, 2))
                group += (f"pool{i - 1}",)
                reduction *= 2
            self.add_module(f"block{i}", _conv_group(in_chs, widths))
            stages.append(group + (f"block{i}",))
            in_chs = widths[-1]
            channels.append(in_chs)
            reductions.append(reduction)
        self._setup(stages, channels, reductions, num_classes, global_pool, drop_rate)
        # RepDistiller's VGG init: He-normal (fan-out) convolutions with zero bias, unit BN, N(0, 0.01) classifier.
        repdistiller_init(self, classifier_std=0.01, zero_classifier_bias=True)


register_variants(__name__, CifarVGG, 5, {name: dict(layout=layout) for name, layout in _LAYOUTS.items()},
                  pool_size=(4, 4), first_conv="block0.0")
