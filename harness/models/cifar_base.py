"""What every CIFAR family of this package shares: :class:`CifarNet`, the base class that implements timm's model
protocol (``feature_info``, ``forward_features``, ``forward_head``, ``forward_intermediates``,
``prune_intermediate_layers``, ``get_classifier`` / ``reset_classifier``), RepDistiller's weight initialisation,
and the registration of a family's variants as timm entry points (one per registry name, with its untrained cfg).

A subclass registers its child modules in execution order and then calls :meth:`CifarNet._setup` with the
grouping of those children into "stem + stages".
"""
from __future__ import annotations

import sys

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
        neck: tuple[str, ...] = (),
        num_features: int | None = None,
    ) -> None:
        """``neck``: children run after the last stage and before pooling that are no feature index of their own
        (MobileNetV2's final 1×1 convolution, outside RepDistiller's feature list); ``num_features``: their output
        channels (the last stage's by default)."""
        if not len(stages) == len(channels) == len(reductions):
            raise ValueError("stages, channels and reductions must have one entry per feature index")
        self._stage_names = [tuple(group) for group in stages]
        self._neck_names = tuple(neck)
        self.feature_info = [
            dict(num_chs=c, reduction=r, module=group[-1])
            for group, c, r in zip(self._stage_names, channels, reductions)
        ]
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = num_features or channels[-1]
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

    def _neck(self, x: torch.Tensor) -> torch.Tensor:
        for name in self._neck_names:
            x = getattr(self, name)(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self._stages():
            x = stage(x)
        return self._neck(x)

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
        run = stages[: max_index + 1] if stop_early else stages
        for i, stage in enumerate(run):
            x = stage(x)
            if i in take:
                intermediates.append(x)
        if len(run) == len(stages):
            x = self._neck(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        take, max_index = feature_take_indices(len(self._stage_names), indices)
        for group in self._stage_names[max_index + 1:] + ([self._neck_names] if max_index + 1 < len(
                self._stage_names) or prune_norm else []):
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


def repdistiller_init(model: nn.Module, classifier_std: float | None = None,
                      zero_classifier_bias: bool = False) -> None:
    """RepDistiller's initialisation: He-normal (fan-out) convolutions with any bias zero, unit BN; the classifier
    drawn from N(0, ``classifier_std``) where given (else PyTorch's default), its bias zeroed where asked.

    Modules are visited in ``model.modules()`` order, so the random draws are those of the per-family loops this
    replaces."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if classifier_std is not None:
                nn.init.normal_(m.weight, 0.0, classifier_std)
            if zero_classifier_bias:
                nn.init.zeros_(m.bias)


def _entrypoint(cls: type[CifarNet], name: str, num_feature_indices: int, arguments: dict):
    def create(pretrained: bool = False, **kwargs) -> CifarNet:
        return build_cifar(cls, name, pretrained, num_feature_indices, **arguments, **kwargs)

    create.__name__ = create.__qualname__ = name
    create.__doc__ = f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in arguments.items())}), untrained."
    return create


def register_variants(module_name: str, cls: type[CifarNet], num_feature_indices: int, variants: dict[str, dict],
                      **cfg) -> None:
    """Register ``variants`` (registry name -> the constructor's arguments) in timm's registry as entry points of
    ``module_name`` (timm files a model under the module its entry point lives in), each with an untrained
    :func:`cifar_cfg` (``cfg`` overrides, e.g. ``pool_size``); the entry points become attributes of that module."""
    module = sys.modules[module_name]
    module.default_cfgs = generate_default_cfgs({f"{name}.untrained": cifar_cfg(**cfg) for name in variants})
    for name, arguments in variants.items():
        entry = _entrypoint(cls, name, num_feature_indices, arguments)
        entry.__module__ = module_name
        setattr(module, name, register_model(entry))
