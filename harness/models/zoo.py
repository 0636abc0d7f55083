"""The papers' network names and the timm names that build them, by kind of dataset.

CIFAR-style networks (3x3 stem, no max-pool) serve CIFAR-10/100 and CINIC-10; ImageNet-style networks
(timm's own) serve ImageNet and Tiny-ImageNet.  "ResNet-110" has two meanings in the literature: the basic
block network of the KD benchmarks (cifar_resnet110) and the bottleneck network of the ONE/OKDDip line of
code (cifar_resnet110_bottleneck); a suite names the one it means.
"""
from __future__ import annotations

from timm.models import generate_default_cfgs, register_model
from timm.models.efficientnet import _gen_mobilenet_v2

CIFAR_DATASETS = ("cifar10", "cifar100", "cinic10", "fashion_mnist", "fashion_mnist_mini", "synthetic_cifar100")
IMAGENET_DATASETS = ("imagenet", "tiny_imagenet")

PAPER_MODELS = {
    "cifar": {
        **{f"resnet{d}": f"cifar_resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)},
        "resnet8x4": "cifar_resnet8x4", "resnet32x4": "cifar_resnet32x4",
        **{f"wrn_{d}_{w}": f"cifar_wrn_{d}_{w}" for d, w in
           ((16, 1), (16, 2), (16, 4), (28, 2), (28, 4), (28, 10), (40, 1), (40, 2))},
        "mobilenetv2_x0_5": "cifar_mobilenetv2_x0_5", "mobilenetv2": "cifar_mobilenetv2_x1_0",
        "mobilenetv2_x1_4": "cifar_mobilenetv2_x1_4", "shufflenetv1": "cifar_shufflenetv1",
        "vgg8": "cifar_vgg8", "vgg13": "cifar_vgg13",
    },
    "imagenet": {
        "resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50", "resnet101": "resnet101",
        "mobilenetv2": "mobilenetv2_100", "mobilenetv2_x0_5": "mobilenetv2_050",
        "mobilenetv2_x1_2": "imagenet_mobilenetv2_120",
    },
}
RESOLUTION = {"cifar": (32, 32), "imagenet": (224, 224), "tiny_imagenet": (64, 64)}


def dataset_kind(dataset: str) -> str:
    return "imagenet" if dataset in IMAGENET_DATASETS else "cifar"


def init_notes(model: str) -> list[str]:
    """How the network ``model`` starts that differs from the torchvision networks the papers' code trained, in
    words for a report's Notes (one home: every report reads it here)."""
    from timm.models import is_model
    from timm.models._registry import model_entrypoint

    if not is_model(model) or model_entrypoint(model).__module__ != "timm.models.resnet":
        return []
    return [f"{display_name(model)} is timm's ResNet, whose last batch norm of every residual block starts at "
            "γ = 0 (zero_init_last; torchvision's default, which the papers' code used, starts it at 1)"]


def timm_name(paper_name: str, dataset: str) -> str | None:
    """The timm name of the table's network ``paper_name`` on ``dataset``, or None if there is none."""
    return PAPER_MODELS[dataset_kind(dataset)].get(paper_name)


default_cfgs = generate_default_cfgs({
    "imagenet_mobilenetv2_120.untrained": dict(
        num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875, interpolation="bicubic",
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), first_conv="conv_stem", classifier="classifier"),
})


@register_model
def imagenet_mobilenetv2_120(pretrained: bool = False, **kwargs):
    """MobileNetV2 with width 1.2 and the standard depth (KDCL Table 4); timm has only mobilenetv2_120d."""
    return _gen_mobilenet_v2("imagenet_mobilenetv2_120", 1.2, pretrained=pretrained, **kwargs)


def display_name(model: str) -> str:
    """How the papers print a network (ResNet-32, WRN-16-2, MobileNetV2 ×0.5, ResNet-8×4, VGG-13, ShuffleNetV1),
    for camera-ready tables; a name the table above does not know is left as it is."""
    import re

    paper = next((p for kind in PAPER_MODELS.values() for p, name in kind.items() if name == model), None)
    if paper is None:
        return model
    patterns = ((r"resnet(\d+)x(\d+)", r"ResNet-\1×\2"), (r"resnet(\d+)", r"ResNet-\1"),
                (r"wrn_(\d+)_(\d+)", r"WRN-\1-\2"), (r"mobilenetv2_x(\d)_(\d)", r"MobileNetV2 ×\1.\2"),
                (r"mobilenetv2", "MobileNetV2"), (r"shufflenetv1", "ShuffleNetV1"), (r"vgg(\d+)", r"VGG-\1"))
    for pattern, text in patterns:
        if re.fullmatch(pattern, paper):
            return re.sub(pattern, text, paper)
    return model
