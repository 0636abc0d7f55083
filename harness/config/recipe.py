"""Training recipes: typed specs, named presets resolved by inheritance, and the learning-rate schedule."""
from __future__ import annotations

import copy
import fnmatch
import math
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import torch
import yaml
from pydantic import Field, BaseModel, ConfigDict, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from harness.registry import did_you_mean

PRESETS_FILE = Path(__file__).with_name("recipes.yaml")


class Strict(BaseModel):
    """A config section: unknown keys are errors, and so are infinite and NaN numbers.  Each key's docstring is its
    meaning in the suite file reference (docs/reference/suite.md, generated from these models)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True)


# A seed: an integer (not a boolean) that every generator we seed takes (numpy's legacy one stops at 2^32 − 1;
# the data order's generator multiplies it by 1,000,003)
Seed = Annotated[int, Field(strict=True, ge=0, le=2**32 - 1)]


class OptimizerSpec(Strict):
    """The optimizer of every network of a cell (a method's own modules may add their own)."""

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    """SGD (with momentum), Adam or AdamW."""
    lr: PositiveFloat
    """Initial learning rate, at ``reference_batch_size`` where ``lr_scaling`` scales it."""
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    """SGD's momentum."""
    nesterov: bool = False
    """SGD with Nesterov momentum."""
    weight_decay: NonNegativeFloat = 5e-4
    """L2 weight decay (decoupled for AdamW)."""
    betas: tuple[float, float] | None = Field(None, exclude_if=lambda v: v is None)
    """Adam/AdamW only (GAN discriminators use [0.5, 0.999]); unset: torch's default, left out of hashes."""


class ScheduleSpec(Strict):
    """The learning-rate schedule, per epoch after any warm-up."""

    name: Literal["multistep", "cosine", "constant"] = "multistep"
    """Step decay at ``milestones``, cosine annealing to zero, or constant."""
    milestones: list[PositiveInt] = []
    """Epochs after which a multistep schedule multiplies the rate by ``gamma``."""
    gamma: PositiveFloat = 0.1
    """A multistep schedule's factor at each milestone."""


class AugmentSpec(Strict):
    """Training augmentation, and the test-time resize / crop of ImageNet-style data.

    CIFAR-style: zero-pad and random crop (``crop_padding``), horizontal flip, Cutout (``cutout``: side of the
    zeroed square, KDCL Table 10).  ImageNet-style: random-resized crop to ``train_size`` (scale and aspect
    ratio), flip, photometric distortion (``color_jitter``: brightness, contrast and saturation strength;
    ``lighting``: AlexNet-style PCA lighting noise), and at test time resize to ``test_resize`` then centre
    crop ``test_crop``: a number resizes the shorter side to it (torchvision's ``Resize(256)``, the torchvision
    reference), ``[h, w]`` the whole image to h × w (KDCL and TSB: "resized to 256×256").
    """

    crop_padding: NonNegativeInt = Field(4, le=64)
    """Pixels of zeros around a CIFAR-style image before its random crop back to size (4 in every paper; 0: none)."""
    flip: bool = True
    """Random horizontal flip."""
    cutout: NonNegativeInt = 0
    """Side of the square Cutout zeroes at a random place (0: none)."""
    random_resized_crop: bool = False
    """ImageNet-style random crop of random scale and aspect ratio, resized to ``train_size``."""
    train_size: PositiveInt | None = None
    """Side of the training images fed to the networks (resized where no crop makes them so)."""
    color_jitter: NonNegativeFloat = 0.0
    """Strength of random brightness, contrast and saturation changes (0: none)."""
    lighting: NonNegativeFloat = 0.0
    """Standard deviation of AlexNet's PCA lighting noise (0: none)."""
    test_resize: PositiveInt | tuple[PositiveInt, PositiveInt] | None = None
    """Test images resized before the centre crop: a number sets the shorter side, [h, w] the whole image."""
    test_crop: PositiveInt | None = None
    """Side of the test images' centre crop."""


class Recipe(Strict):
    """Everything that defines how a cell is trained (and so enters its hash), except the method."""

    epochs: PositiveInt
    """Training epochs."""
    batch_size: PositiveInt
    """The global batch (all of a data-parallel cell's workers together)."""
    optimizer: OptimizerSpec
    """The optimizer (see its section)."""
    schedule: ScheduleSpec = ScheduleSpec()
    """The learning-rate schedule (see its section)."""
    warmup_epochs: NonNegativeInt = 0
    """Epochs over which the rate rises linearly, per step, from ``warmup_from`` × lr to lr."""
    warmup_from: NonNegativeFloat = 0.0
    """Where a warm-up starts, as a fraction of lr (KDCL: 0.1 → 0.8 is 0.125)."""
    peer_lr: dict[str, PositiveFloat] = {}
    """Networks whose timm name matches a pattern train at their own initial rate (TSB and ACKD lower it for
    MobileNetV2 / ShuffleNet); each peer is a parameter group of its own."""
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    """How lr follows a batch that differs from ``reference_batch_size``: linearly (Goyal et al.), by its square
    root, or not; the rate actually used is recorded with the result."""
    reference_batch_size: PositiveInt | None = None
    """The batch the paper's learning rate is for."""
    augment: AugmentSpec = AugmentSpec()
    """Augmentation and test-time resizing (see its section)."""
    source: str = ""
    """Where the numbers come from (paper section, official script), shown in reports; not hashed."""
    report_epoch: Literal["best", "last"] | None = None
    """Which epoch the paper's own numbers are (its code keeps the best test epoch, or the last); null: the paper
    does not say, and a report then shows the last, marked as assumed.  Not hashed: it changes no training."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """The networks' arithmetic: fp32, or bf16/fp16 autocast (fp16 with a gradient scaler); losses stay fp32.  It
    enters a cell's hash only where it is not fp32, so that no earlier cell changed its name."""
    sync_bn: bool = False
    """Batch norm over the global batch of a data-parallel cell (torch's SyncBatchNorm, on GPUs only) instead of
    each worker's share, the DDP default; hashed only where true."""

    def lr_scale(self) -> float:
        """Factor applied to every initial learning rate for the batch size actually used."""
        if self.lr_scaling == "none" or not self.reference_batch_size:
            return 1.0
        ratio = self.batch_size / self.reference_batch_size
        return ratio if self.lr_scaling == "linear" else math.sqrt(ratio)

    def peer_learning_rate(self, model_name: str) -> float:
        """Initial learning rate of a peer (before batch-size scaling): the first matching pattern, or lr."""
        for pattern, lr in self.peer_lr.items():
            if fnmatch.fnmatchcase(model_name, pattern):
                return lr
        return self.optimizer.lr


def load_presets() -> dict[str, dict]:
    """The named recipes (a copy: the caller may change it); the file is parsed once per process, since every
    teacher's recipe of a suite (ESKD, TAKD, ...) is resolved against it."""
    return copy.deepcopy(_parsed_presets())


@lru_cache(maxsize=1)
def _parsed_presets() -> dict[str, dict]:
    with open(PRESETS_FILE) as f:
        return yaml.safe_load(f)


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_recipe(spec, presets: dict[str, dict], path: str = "recipe") -> dict:
    """A preset name, or a mapping with an optional ``base`` preset and overrides → one plain mapping.

    Raises ``KeyError`` with a one-line message naming the key path when a preset does not exist.
    """
    seen = []
    if isinstance(spec, str):
        spec = {"base": spec}
    if not isinstance(spec, dict):
        raise KeyError(f"{path}: expected a preset name or a mapping, got {spec!r}")
    resolved = dict(spec)
    while "base" in resolved:
        name = resolved.pop("base")
        if not isinstance(name, str):
            raise KeyError(f"{path}.base: expected a preset name, got {name!r}; valid: {', '.join(sorted(presets))}")
        if not isinstance(presets.get(name, {}), dict):
            raise KeyError(f"{path}.base: the preset {name!r} is not a mapping of recipe keys")
        if name in seen:
            raise KeyError(f"{path}.base: presets inherit from each other in a loop: {' -> '.join(seen + [name])}")
        if name not in presets:
            raise KeyError(
                f"{path}.base: unknown recipe {name!r}{did_you_mean(name, presets)}; valid: {', '.join(sorted(presets))}"
            )
        seen.append(name)
        resolved = deep_merge(presets[name], resolved)
    return resolved


def lr_factor(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the initial learning rate at global step ``step`` (0-based).

    Warm-up rises linearly per step to 1 at the end of ``warmup_epochs``; multistep decays apply from the
    first step of each milestone epoch (as torch's per-epoch MultiStepLR); cosine decays per step.
    """
    epoch = step // steps_per_epoch
    warmup_steps = recipe.warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        return recipe.warmup_from + (1 - recipe.warmup_from) * (step + 1) / warmup_steps
    schedule = recipe.schedule
    if schedule.name == "multistep":
        return schedule.gamma ** sum(epoch >= m for m in schedule.milestones)
    if schedule.name == "cosine":
        span = max((recipe.epochs - recipe.warmup_epochs) * steps_per_epoch, 1)
        return 0.5 * (1 + math.cos(math.pi * min((step - warmup_steps) / span, 1.0)))
    return 1.0


def build_optimizer(spec: OptimizerSpec, params, lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """``params``: parameters, or parameter groups (dicts) that may carry their own ``lr``."""
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [{**g, "params": [p for p in g["params"] if p.requires_grad],
                   "lr": g.get("lr", spec.lr) * lr_scale} for g in params]
    else:
        params = [p for p in params if p.requires_grad]
    spec = spec.model_copy(update={"lr": spec.lr * lr_scale})
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov,
                               weight_decay=spec.weight_decay)
    optimizer = torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW
    return optimizer(params, lr=spec.lr, betas=spec.betas or (0.9, 0.999), weight_decay=spec.weight_decay)


def build_scheduler(recipe: Recipe, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """A LambdaLR stepped once per training step, following :func:`lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(recipe, step, steps_per_epoch))
