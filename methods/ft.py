"""FT, Factor Transfer (Kim, Park and Kwak, "Paraphrasing Complex Network: Network Compression via Factor
Transfer", NeurIPS 2018), in RepDistiller's form (``--distill factor``, ``docs/notes/feature_methods.md#ft-versions``):
the student learns the teacher's *factor*, the code of a paraphraser trained beforehand on the teacher's last feature
map.

Stages: ``teacher`` (methods/common/offline.py, shared with every other offline method of that teacher), then
``paraphraser`` (methods/ft_paraphraser.py: the same teacher stage, the student's recipe with
``paraphraser_epochs`` epochs at a constant ``paraphraser_lr``, seed ``paraphraser_seed``), then this cell.

Loss: ce_weight · CE(z_s, y) + beta · mean |F(T(f_s)) − F(P_enc(f_t))|  (methods/common/factor_transfer.py), with f the
last feature map before pooling (RepDistiller ``feat[-2]``), T the student's translator (trained with the student,
in its optimizer group), P_enc the paraphraser's encoder, frozen and in eval mode with the teacher (no gradient
reaches either), and F the normalised factor; the larger factor map is average-pooled to the smaller size.

Where RepDistiller's code, the authors' code (Jangho-Kim/Factor-Transfer-pytorch) and the paper differ, each is a
hyper-parameter with RepDistiller's default, the benchmark the ACKD/AMLN baselines cite:
- ``factor`` "channel_mean": RepDistiller's normalise(mean_c f²) over positions; "flatten" is the authors'
  ``utils.FT``, normalise(f) over channels × positions (the paper's F(x) = x/‖x‖).
- ``beta`` 200 (RepDistiller ``-b 200``; the authors use 500).
- ``reconstruction`` "mse" for the paraphraser (RepDistiller ``init``; the authors train it with L1).
- ``translator_bn`` true, ``paraphraser_bn`` false (RepDistiller's ``Translator``/``Paraphraser`` defaults; the
  authors' modules have no BatchNorm).
- ``paraphraser_epochs`` 30 and ``paraphraser_lr`` 0.01 (RepDistiller's ``init_epochs`` and its lr for the
  CIFAR ResNets/WRNs; the student's momentum, weight decay and batches; constant lr), never more epochs than the
  student's own run (a scaled-down or smoke run).
- ``rate`` k 0.5 (both codes and the paper).
- ``ce_weight`` 1, no KD term (RepDistiller ``-r 1 -a 0``); FT+KD is ``methods/ft_kd.py``.
- ``paraphraser_seed`` None: the student's seed, so each student seed has its own paraphraser, as each
  RepDistiller run trains one; an integer shares one paraphraser across student seeds (like ``teacher_seed``).
- The frozen paraphraser is in eval mode (RepDistiller leaves it in train mode, which changes nothing without
  BatchNorm, its default).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt

from harness.config.recipe import Seed
from torch import nn

from harness.models import adapter
from harness.training.method import register_method
from methods.common.factor_transfer import FactorKind, Paraphraser, ReconstructionKind, Translator, factor_loss
from methods.common.offline import OfflineMethod, TeacherParams
from methods.ft_paraphraser import paraphraser_recipe, paraphraser_stage


class FTParams(TeacherParams):
    beta: NonNegativeFloat = 200.0
    ce_weight: NonNegativeFloat = 1.0
    factor: FactorKind = "channel_mean"
    rate: float = Field(0.5, gt=0)
    translator_bn: bool = True
    paraphraser_bn: bool = False
    reconstruction: ReconstructionKind = "mse"
    paraphraser_epochs: PositiveInt = 30
    paraphraser_lr: PositiveFloat = 0.01
    paraphraser_seed: Seed | None = None


@register_method("ft")
class FT(OfflineMethod):
    """Factor Transfer from a frozen teacher through a paraphraser trained in an earlier stage."""

    HParams = FTParams

    @classmethod
    def stages(cls, hp, cell):
        stages = super().stages(hp, cell)
        stages["paraphraser"] = paraphraser_stage(
            cell, stages["teacher"],
            {"rate": hp.rate, "batch_norm": hp.paraphraser_bn, "reconstruction": hp.reconstruction},
            paraphraser_recipe(cell.recipe, min(hp.paraphraser_epochs, cell.recipe["epochs"]), hp.paraphraser_lr),
            cell.seed if hp.paraphraser_seed is None else hp.paraphraser_seed)
        return stages

    def build(self) -> nn.ModuleDict:
        modules = super().build()
        size = (self.ctx.in_chans, *self.ctx.image_size)
        student_channels = adapter.shapes(modules["peers"][0], size)["last"][0]
        teacher_channels = adapter.shapes(modules["teacher"], size)["last"][0]
        paraphraser = Paraphraser(teacher_channels, self.hp.rate, self.hp.paraphraser_bn)
        paraphraser.load_state_dict(self.ctx.load_stage_modules("paraphraser")["paraphraser"])
        modules["paraphraser"] = paraphraser.requires_grad_(False).eval()
        modules["translator"] = Translator(student_channels, paraphraser.factor_channels, self.hp.translator_bn)
        return modules

    @property
    def paraphraser(self) -> Paraphraser:
        return self.modules["paraphraser"]

    @property
    def translator(self) -> Translator:
        return self.modules["translator"]

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self.paraphraser.eval()

    def ft_terms(self, batch) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """The CE and FT terms, with the student's and the teacher's logits for terms added by subclasses."""
        x = batch.view(0)
        with torch.no_grad():
            teacher = adapter.extract(self.teacher, x)
            teacher_factor = self.paraphraser.encode(teacher.last)
        student = adapter.extract(self.student, x)
        terms = {"ce": self.hp.ce_weight * F.cross_entropy(student.logits, batch.y),
                 "ft": self.hp.beta * factor_loss(self.translator(student.last), teacher_factor, self.hp.factor)}
        return terms, student.logits, teacher.logits

    def losses(self, batch, step):
        return self.ft_terms(batch)[0]
