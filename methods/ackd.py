"""ACKD, Improved Knowledge Distillation via Adversarial Collaboration (Liu, Huang and Liu; seed 001, Sec. 3).

Offline (``methods/common/offline.py``): the group is ``[teacher, student]``; the teacher is trained in an earlier stage
and frozen.  The student ("target learner") gets M auxiliary learners for training only.  Auxiliary learner k
("DnBm", Table 7) branches off the target learner before its n-th stage and holds fresh copies of the m stages
that follow, with its own classifier (``harness.models.adapter.split``), so with n + m − 1 = S (the network's number of
stages) it ends with the target learner's structure ("the auxiliary learners have same structure with the target
learner"): h^(k) its last feature map, z^(k) its logits.  With z_s the target learner's logits, z_t the
teacher's, p(z) = softmax(z / τ):

- Attention (Eq. 3): a = softmax(MLP(pool(Concat(h^(1), …, h^(M))))) ∈ R^M per sample, a two-layer perceptron
  (Linear, ReLU, Linear); the group logit z_g = Σ_k a_k z^(k).
- L_kd^a (Eq. 2) = τ² · KL(p(z_t) ‖ p(z_g)), batch mean, the teacher constant: it trains the auxiliary
  learners, the attention MLP and the shared trunk.
- L_kd^s (Eq. 6) = τ² · KL(p(z_g) ‖ p(z_s)), the group prediction detached: the target learner learns from the
  auxiliary group.
- L_ad (Eq. 4-5) = (1/M) Σ_i (1/(M−1)) Σ_{j≠i} [E log D_i(h^(i)) + E log(1 − D_i(h^(j)))]: discriminator D_i
  (a stack of 1×1 convolutions with ReLU) tells learner i's maps (label 1) from the other learners' (label 0).
- L_ce = CE(z_s, y) + Σ_k CE(z^(k), y).
- Eq. 7: L = λ1 L_kd^a + λ2 L_kd^s + λ3 L_adv + λ4 L_ce, every λ = 1 (the paper's setting), where the
  learners' adversarial term L_adv is −L_ad (``adversarial`` "diverse", see below).

One training step alternates (``train_step``): (1) the discriminators step on the batch's maps, detached,
maximising L_ad (minimising its binary cross-entropy −L_ad) with their own optimizer; (2) the target learner,
the auxiliary learners and the attention MLP step on Eq. 7 with the discriminators frozen (the updated ones).
The teacher never changes.  Only the target learner is evaluated (``net1``, beside the frozen ``teacher``),
deployed, counted and saved; the auxiliary learners (``auxiliary``), the MLP (``attention``) and the
discriminators (``discriminators``) are parameters added for training and reported apart.

Where the equations contradict the text, the reading that matches the stated intent:
- Eq. 6 reads Σ p^s log(p^a / p^s) = −KL(p^s ‖ p^a); minimising it would push the target learner *away* from the
  auxiliaries, against "minimizing the distribution divergence between the target learner and auxiliary
  learners".  Here the sign is corrected (a KL, ≥ 0).
- Eq. 4 with Eq. 7 (which adds λ3 L_ad to a minimised loss) and "each auxiliary learner tries to fool the
  discriminator" make a minimax game in which learner j's maps are pushed to look like learner i's: the
  learners become *less* diverse, against the module's stated purpose ("force auxiliary learners to learn
  diverse feature distribution", "promote the diversification").  ``adversarial`` "diverse" (default): the
  learners minimise −L_ad, the discriminators' own cross-entropy, i.e. each learner keeps its maps recognisable
  to its discriminator and unlike the others'; the discriminators are still trained on Eq. 4 alone, in their
  own step.  "fool": the literal Eq. 7 sign, the learners minimise +L_ad (the saturating minimax generator).
- Eq. 2 and Eq. 6 write the KL with the learner first, KL(p^a, p^t); ``kl_direction`` "forward" (default, every public
  KD code; ``docs/notes/conventions.md#kl-direction``) uses KL(target ‖ learner); "reverse" the literal argument
  order, KL(p^a ‖ p^t) and KL(p^s ‖ p^a) (sign corrected); the target is constant either way.

Choices where the paper is silent (there is no code; ``docs/notes/ackd.md#open-questions-and-choices``):
- ``learners``: "DnBm" strings, n the stage (1-based; stage 1 reads the stem's output) before which the branch
  leaves the target learner, m the number of stages it copies; n + m − 1 must equal the target learner's
  number of stages, so every learner ends like the target learner (Table 7's D3B1, D2B2, D1B3 all satisfy it
  on 3-stage CIFAR networks).  M = the number of entries.  None (default) = (D_S B1, D_{S−1} B2): D3B1 + D2B2
  on CIFAR ResNets and WRNs, the best row of Table 7 and the setting of Tables 2 and 6.  Each learner's stages
  and classifier come from a newly created network of the student's architecture (its own initialisation).
  "Stage" is a feature_info entry of the model: for this zoo's CIFAR MobileNetV2 (4 stages, the last one the
  final 1×1 convolution) the default D4B1 copies only that convolution; D3B2 + D2B3 copy more.
- ``temperature`` τ = 4 (not given; the RepDistiller/CRD benchmark the paper's baselines follow) and
  ``t2_scaling`` True (τ² on both KL terms; the paper has none: set False for the literal form).
- L_kd^s's target (``self_distill_from``): "group" (default), the attention-fused prediction p(z_g); "each",
  the mean over k of the KL to each auxiliary learner's own prediction.  The target is detached in both.
- L_ce is "for the target learner and auxiliary learners": one CE per learner, summed; no CE on z_g.
- Attention input (``attention_input``): g flattens the maps spatially and the MLP's width is not given.
  "pool" (default): each h^(k) globally average-pooled, M·C inputs; "flatten": the literal g, M·C·H·W inputs
  (the training image size fixes H×W).  ``attention_hidden`` None = C (one learner's channels).
  ``attention`` "uniform" replaces the MLP by a = 1/M (Table 6's collaboration-only row).  The MLP's inputs are
  not detached: L_kd^a reaches the learners through the weights too.
- Discriminators: ``disc_layers`` 1×1 convolutions (default 3) with ReLU between them, width ``disc_width``
  (None = C), the last one to a single channel; the per-position logits are averaged into one logit per sample
  and D_i = sigmoid of it.  They read the learners' last stage maps h^(k) (the attention reads them too:
  RepDistiller's last feature, which for MobileNetV2 is before its 1280-channel conv).  With M = 1 (nothing to tell
  apart) or λ3 = 0 no discriminator is built and L_adv is absent.
- Discriminator optimizer (``disc_optimizer``): Adam, lr 2e-4, betas (0.5, 0.999), no weight decay, a constant
  learning rate (``disc_follow_schedule`` False): the common GAN setting; None = the recipe's optimizer.  The
  recipe's batch-size learning-rate scaling applies to it as to every optimizer.
- Table 6's rows: collaboration only = ``attention: uniform, adversarial_weight: 0``; + attention =
  ``adversarial_weight: 0``; + adversarial = ``attention: uniform``; all = the defaults.
- One discriminator step per training step, before the learners' step, both on the same forward pass.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Literal

import timm
import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt, StringConstraints, field_validator
from torch import nn

from harness.config.recipe import OptimizerSpec
from harness.models import adapter
from harness.training.method import OptimGroup, register_method
from methods.common.losses import distill_kl, full_precision, soft_targets
from methods.common.offline import OfflineMethod, TeacherParams

LearnerSpec = Annotated[str, StringConstraints(pattern=r"^D[1-9][0-9]*B[1-9][0-9]*$")]
GAN_ADAM = {"name": "adam", "lr": 2e-4, "betas": (0.5, 0.999), "weight_decay": 0.0}


class ACKDParams(TeacherParams):
    learners: tuple[LearnerSpec, ...] | None = None
    temperature: PositiveFloat = 4.0
    t2_scaling: bool = True
    kl_direction: Literal["forward", "reverse"] = "forward"
    self_distill_from: Literal["group", "each"] = "group"
    attention: Literal["mlp", "uniform"] = "mlp"
    attention_input: Literal["pool", "flatten"] = "pool"
    attention_hidden: PositiveInt | None = None
    adversarial: Literal["diverse", "fool"] = "diverse"
    disc_layers: PositiveInt = 3
    disc_width: PositiveInt | None = None
    # the learners' map h^(k) that the attention and the discriminators read: the last stage's output (RepDistiller's
    # last feature), or "last", the map right before pooling (differs only where a network has a neck: MobileNetV2)
    learner_map: Literal["last_stage", "last"] = "last_stage"
    disc_optimizer: dict | None = GAN_ADAM
    disc_follow_schedule: bool = False
    kd_aux_weight: NonNegativeFloat = 1.0  # λ1, L_kd^a
    kd_target_weight: NonNegativeFloat = 1.0  # λ2, L_kd^s
    adversarial_weight: NonNegativeFloat = 1.0  # λ3, L_ad
    ce_weight: NonNegativeFloat = 1.0  # λ4, L_ce

    @field_validator("learners")
    @classmethod
    def _some_learners(cls, value):
        if value is not None and not value:
            raise ValueError("give at least one auxiliary learner, e.g. ['D3B1', 'D2B2'], or null for the default")
        return value

    @field_validator("disc_optimizer")
    @classmethod
    def _valid_optimizer(cls, value):
        if value is not None:
            OptimizerSpec.model_validate(value)
        return value


# --- the auxiliary learners' layout ----------------------------------------------------------------------------
def resolve_learners(learners: tuple[str, ...] | None, stages: int) -> list[tuple[int, int]]:
    """(n, m) of every "DnBm" learner for a network with ``stages`` stages; None = (D_S B1, D_{S−1} B2)."""
    if learners is None:
        if stages < 2:
            raise ValueError(f"the default learners D{stages}B1 + D{stages - 1}B2 need at least 2 stages")
        return [(stages, 1), (stages - 1, 2)]
    specs = []
    for text in learners:
        n, m = (int(v) for v in re.fullmatch(r"D(\d+)B(\d+)", text).groups())
        if n + m - 1 != stages:
            raise ValueError(f"learner {text}: branching before stage {n} and copying {m} stages must end at the "
                             f"last of the network's {stages} stages (n + m - 1 = {stages}); e.g. "
                             + ", ".join(f"D{k}B{stages - k + 1}" for k in range(stages, 0, -1)))
        specs.append((n, m))
    return specs


def stage_count(model: nn.Module) -> int:
    """Stages after the stem (feature_info index 0)."""
    return len(adapter.stage_info(model)) - 1


# --- the modules -------------------------------------------------------------------------------------------------
class LearnerAttention(nn.Module):
    """Eq. 3: the learners' concatenated maps (pooled or flattened) → Linear, ReLU, Linear → softmax over M."""

    def __init__(self, in_features: int, hidden: int, learners: int, pool: bool):
        super().__init__()
        self.pool = pool
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, learners))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat([h.mean((2, 3)) if self.pool else h.flatten(1) for h in maps], dim=1)
        return F.softmax(self.mlp(x), dim=1)


class FeatureDiscriminator(nn.Module):
    """A stack of 1×1 convolutions with ReLU between them, one logit per position averaged into one per sample."""

    def __init__(self, channels: int, width: int, layers: int):
        super().__init__()
        convs: list[nn.Module] = []
        for _ in range(layers - 1):
            convs += [nn.Conv2d(channels, width, 1), nn.ReLU(inplace=True)]
            channels = width
        convs.append(nn.Conv2d(channels, 1, 1))
        self.net = nn.Sequential(*convs)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h).mean((1, 2, 3))


# --- the loss pieces -------------------------------------------------------------------------------------------
def fuse(weights: torch.Tensor, logits: list[torch.Tensor]) -> torch.Tensor:
    """z_g = Σ_k a_k z^(k) with the per-sample weights ``weights`` (B × M)."""
    return sum(weights[:, k: k + 1] * z for k, z in enumerate(logits))


@full_precision
def kd_loss(learner: torch.Tensor, target: torch.Tensor, temperature: float, t2_scaling: bool = True,
            direction: str = "forward") -> torch.Tensor:
    """KL(p(target) ‖ p(learner)) ("forward") or KL(p(learner) ‖ p(target)) ("reverse"), p = softmax(· / T),
    batch mean, times T² when ``t2_scaling``; the target is constant."""
    if direction == "forward":
        return distill_kl(learner, soft_targets(target, temperature), temperature, t2_scaling)
    log_p = F.log_softmax(learner / temperature, dim=1)
    log_q = F.log_softmax(target.detach() / temperature, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(1).mean()
    return kl * temperature**2 if t2_scaling else kl


def adversarial_value(scores: list[list[torch.Tensor]]) -> torch.Tensor:
    """L_ad of Eq. 4-5 from ``scores[i][j]``, D_i's logits (B,) on learner j's maps:
    (1/M) Σ_i (1/(M−1)) Σ_{j≠i} [mean log σ(s_ii) + mean log(1 − σ(s_ij))] (a log-likelihood, ≤ 0)."""
    m = len(scores)
    per_discriminator = []
    for i in range(m):
        own = F.logsigmoid(scores[i][i]).mean()
        others = [F.logsigmoid(-scores[i][j]).mean() for j in range(m) if j != i]
        per_discriminator.append(own + torch.stack(others).mean())
    return torch.stack(per_discriminator).mean()


@contextmanager
def frozen(module: nn.Module):
    """Parameters of ``module`` take no gradient inside the block (the learners' step through the discriminators)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


@dataclass
class ACKDOutputs:
    """One forward pass: teacher, target learner, auxiliary learners, attention weights and group logit."""

    teacher: torch.Tensor
    target: torch.Tensor
    aux_logits: list[torch.Tensor]
    aux_maps: list[torch.Tensor]
    weights: torch.Tensor  # B × M, rows sum to 1
    group: torch.Tensor


@register_method("ackd")
class ACKD(OfflineMethod):
    """A student whose training-only auxiliary branches learn the teacher together, then teach the student.

    The branches are fused by attention and kept diverse by discriminators; only the student is kept."""

    HParams = ACKDParams

    @classmethod
    def group_error(cls, hp, group):
        if not timm.is_model(group[1]):
            return None  # reported by the suite check
        try:
            resolve_learners(hp.learners, stage_count(timm.create_model(group[1], num_classes=10)))
        except ValueError as error:
            return str(error)
        return None

    # --- structure -------------------------------------------------------------------------------------------
    def build(self) -> nn.ModuleDict:
        modules = super().build()  # the student (peers[0]) is created before any auxiliary learner
        hp, ctx, student = self.hp, self.ctx, modules["peers"][0]
        self.specs = resolve_learners(hp.learners, stage_count(student))
        m = len(self.specs)
        auxiliary = nn.ModuleList(adapter.split(ctx.create_model(ctx.group[1]), n - 1)[1] for n, _ in self.specs)
        modules["auxiliary"] = auxiliary
        # a learner's map: its last stage's output (RepDistiller's last feature; before MobileNetV2's 1280-channel conv)
        shapes = adapter.shapes(student, (ctx.in_chans, *ctx.image_size))
        c, h, w = shapes["stages"][-1] if hp.learner_map == "last_stage" else shapes["last"]
        if hp.attention == "mlp":
            pool = hp.attention_input == "pool"
            modules["attention"] = LearnerAttention(m * c * (1 if pool else h * w), hp.attention_hidden or c, m, pool)
        if m > 1 and hp.adversarial_weight > 0:
            modules["discriminators"] = nn.ModuleList(
                FeatureDiscriminator(c, hp.disc_width or c, hp.disc_layers) for _ in range(m))
        return modules

    @property
    def auxiliary(self) -> nn.ModuleList:
        return self.modules["auxiliary"]

    @property
    def discriminators(self) -> nn.ModuleList | None:
        return self.modules["discriminators"] if "discriminators" in self.modules else None

    def optim_groups(self):
        learners = [p for key in ("auxiliary", "attention") if key in self.modules
                    for p in self.modules[key].parameters()]
        groups = {"peers": OptimGroup([{"params": list(self.student.parameters()), "model": self.ctx.group[1]},
                                       self.extra_group(learners, "learners")])}
        if self.discriminators is not None:
            groups["discriminators"] = OptimGroup(list(self.discriminators.parameters()),
                                                  optimizer=self.hp.disc_optimizer,
                                                  follow_schedule=self.hp.disc_follow_schedule)
        return groups

    # --- forward -----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> ACKDOutputs:
        features = adapter.extract(self.student, x)
        maps, logits = [], []
        for (n, _), head in zip(self.specs, self.auxiliary):
            final, stages = head.forward_intermediates(features.stages[n - 1])
            maps.append(stages[-1] if self.hp.learner_map == "last_stage" else final)
            logits.append(head.forward_head(final))
        if "attention" in self.modules:
            weights = self.modules["attention"](maps)
        else:
            weights = torch.full((len(x), len(maps)), 1.0 / len(maps), dtype=logits[0].dtype, device=x.device)
        return ACKDOutputs(self.teacher_logits(x), features.logits, logits, maps, weights, fuse(weights, logits))

    def discriminator_scores(self, maps: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """scores[i][j]: D_i's logits on learner j's maps (one pass of D_i over all learners' maps)."""
        every = torch.cat(maps)
        return [list(d(every).split([len(h) for h in maps])) for d in self.discriminators]

    # --- losses ------------------------------------------------------------------------------------------------
    def discriminator_loss(self, out: ACKDOutputs) -> torch.Tensor:
        """−L_ad on detached maps: the discriminators' binary cross-entropy (they maximise Eq. 4)."""
        return -adversarial_value(self.discriminator_scores([h.detach() for h in out.aux_maps]))

    def generator_terms(self, out: ACKDOutputs, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eq. 7's weighted terms for the target learner, the auxiliary learners and the attention MLP."""
        hp = self.hp
        t, t2, direction = hp.temperature, hp.t2_scaling, hp.kl_direction
        terms = {"kd/aux": hp.kd_aux_weight * kd_loss(out.group, out.teacher, t, t2, direction)}
        sources = [out.group] if hp.self_distill_from == "group" else out.aux_logits
        terms["kd/net1"] = hp.kd_target_weight * torch.stack(
            [kd_loss(out.target, s, t, t2, direction) for s in sources]).mean()
        if self.discriminators is not None:
            with frozen(self.discriminators):
                value = adversarial_value(self.discriminator_scores(out.aux_maps))
            terms["adv"] = hp.adversarial_weight * (-value if hp.adversarial == "diverse" else value)
        terms["ce/net1"] = hp.ce_weight * F.cross_entropy(out.target, y)
        for k, z in enumerate(out.aux_logits):
            terms[f"ce/aux{k + 1}"] = hp.ce_weight * F.cross_entropy(z, y)
        return terms

    def losses(self, batch, step):
        return self.generator_terms(self.forward(batch.view(0)), batch.y)

    # --- training ----------------------------------------------------------------------------------------------
    def discriminator_step(self, out: ACKDOutputs) -> dict[str, torch.Tensor]:
        if self.discriminators is None:
            return {}
        optimizer = self.optimizers["discriminators"]
        optimizer.zero_grad(set_to_none=True)
        loss = self.discriminator_loss(out)
        self.backward(loss)
        optimizer.step()
        return {"disc": loss.detach()}

    def generator_step(self, out: ACKDOutputs, y: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = self.generator_terms(out, y)
        optimizer = self.optimizers["peers"]
        optimizer.zero_grad(set_to_none=True)
        self.backward(torch.stack(list(terms.values())).sum())
        optimizer.step()
        return {name: value.detach() for name, value in terms.items()}

    def train_step(self, batch, step):
        out = self.forward(batch.view(0))
        logged = self.discriminator_step(out)
        return {**self.generator_step(out, batch.y), **logged}
