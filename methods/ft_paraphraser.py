"""Factor Transfer's first stage: the paraphraser, an autoencoder trained on a frozen teacher's last feature map
before any student sees it (Kim et al., NeurIPS 2018; RepDistiller ``helper/pretrain.py::init``).

A cell of this method has one network, the teacher (group ``(teacher,)``), and is normally not written in a suite:
``methods/ft.py`` declares it as the stage ``paraphraser`` of every FT / FT+KD student, with the same teacher stage
as the student, so that the teacher is trained once and the paraphraser is trained once per (teacher, recipe,
seed) and cached by hash like any stage.

Loss: reconstruction_loss(P(f_t), f_t), f_t the teacher's last map before pooling (``adapter.extract(...).last``,
RepDistiller's ``feat[-2]``), P the :class:`methods.common.factor_transfer.Paraphraser`; ``mse`` (RepDistiller, default) or
``l1`` (the authors' ``train_Paraphraser.py``).  Only the paraphraser is trained; the teacher is frozen and in eval
mode.  The optimizer and schedule are the cell's recipe, which FT derives from the student's (see methods/ft.py:
RepDistiller's 30 epochs of SGD at a constant lr 0.01 with the student's momentum, weight decay and data).

Choices:
- ``rate`` k = 0.5, ``batch_norm`` false: RepDistiller's ``Paraphraser(t_shape)`` (the authors' has no BN either).
- ``teacher``: where the teacher comes from, written by FT so that it is the very cell (or checkpoint) FT's own
  ``teacher`` stage names: ``method``/``hparams``/``recipe``/``seed``/``stop_epoch`` of a teacher cell (on this
  cell's dataset and first network), or ``checkpoint``/``sha256``.  The default, None (a suite that runs this
  method on its own), is OfflineMethod's default teacher: ``ind`` with this cell's recipe and seed 0.
- Evaluated outputs: ``net1`` is the teacher's own logits (so the engine's ``ens``/``avg``, which need at least one
  peer output, are the teacher's accuracy too) and ``reconstructed`` is the teacher's head applied to the
  paraphraser's reconstruction of its last map: how much of the teacher's accuracy the paraphraser keeps.
- Nothing is deployed (``deployed_networks`` is empty, ``deployed_parameters`` 0); the trained paraphraser is saved
  as the extra module ``paraphraser`` (``saved_modules``), which FT loads with ``ctx.load_stage_modules``.
"""
from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from harness.config.recipe import Seed
from torch import nn

from harness.config.cell import Cell, hashed_recipe
from harness.models import adapter
from harness.training.method import HParams, Method, OptimGroup, register_method
from harness.training.stages import Stage
from methods.common.factor_transfer import Paraphraser, ReconstructionKind, reconstruction_loss


class TeacherSource(BaseModel):
    """The teacher stage as FT declared it: a cell (on this cell's dataset and network) or a checkpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = "ind"
    hparams: dict = {}
    recipe: dict | None = None  # None: this cell's recipe
    seed: Seed | None = 0  # None: this cell's seed
    stop_epoch: PositiveInt | None = None
    checkpoint: str | None = None
    sha256: str | None = None

    @classmethod
    def of(cls, stage: Stage) -> dict:
        """The plain mapping (for a cell's hparams) that :meth:`stage` turns back into ``stage``."""
        if stage.cell is None:
            return {"checkpoint": stage.checkpoint, "sha256": stage.sha256}
        teacher = stage.cell
        return {"method": teacher.method, "hparams": teacher.hparams,
                "recipe": hashed_recipe(teacher.recipe),  # the rest is not hashed anyway
                "seed": teacher.seed, "stop_epoch": teacher.stop_epoch}

    def stage(self, cell: Cell) -> Stage:
        if self.checkpoint:
            return Stage(checkpoint=self.checkpoint, sha256=self.sha256, models=(cell.group[0],))
        return Stage(cell=Cell(method=self.method, hparams=self.hparams, group=(cell.group[0],), dataset=cell.dataset,
                               recipe=cell.recipe if self.recipe is None else self.recipe,
                               seed=cell.seed if self.seed is None else self.seed, label="teacher",
                               suite=cell.suite, stop_epoch=self.stop_epoch))


class ParaphraserParams(HParams):
    teacher: TeacherSource | None = None  # None: TeacherSource()'s defaults, OfflineMethod's default teacher
    rate: float = Field(0.5, gt=0)
    batch_norm: bool = False
    reconstruction: ReconstructionKind = "mse"


def paraphraser_recipe(student_recipe: dict, epochs: int, lr: float) -> dict:
    """The student's recipe (batch size, data, augmentation, optimizer kind, momentum, weight decay) run for
    ``epochs`` at a constant ``lr``: RepDistiller's ``init`` uses the student's loader and SGD settings."""
    return {**student_recipe, "epochs": epochs, "optimizer": {**student_recipe["optimizer"], "lr": lr},
            "schedule": {"name": "constant"}, "warmup_epochs": 0, "peer_lr": {},
            "source": "FT paraphraser stage (RepDistiller helper/pretrain.py::init)"}


def paraphraser_stage(cell: Cell, teacher: Stage, hparams: dict, recipe: dict, seed: int) -> Stage:
    """The stage that trains the paraphraser of ``teacher`` (the student cell's own teacher stage)."""
    return Stage(cell=Cell(method="ft_paraphraser", hparams={"teacher": TeacherSource.of(teacher), **hparams},
                           group=(cell.group[0],), dataset=cell.dataset, recipe=recipe, seed=seed,
                           label="paraphraser", suite=cell.suite))


@register_method("ft_paraphraser")
class FTParaphraser(Method):
    """Trains FT's paraphraser on a frozen teacher's last feature map (a stage of methods/ft.py)."""

    HParams = ParaphraserParams
    min_peers = max_peers = 1

    @classmethod
    def stages(cls, hp, cell):
        return {"teacher": (hp.teacher or TeacherSource()).stage(cell)}

    def build(self) -> nn.ModuleDict:
        teacher = self.ctx.load_stage("teacher")[0]
        channels = adapter.shapes(teacher, (self.ctx.in_chans, *self.ctx.image_size))["last"][0]
        paraphraser = Paraphraser(channels, self.hp.rate, self.hp.batch_norm)
        return nn.ModuleDict({"peers": nn.ModuleList(), "teacher": teacher, "paraphraser": paraphraser})

    @property
    def teacher(self) -> nn.Module:
        return self.modules["teacher"]

    @property
    def paraphraser(self) -> Paraphraser:
        return self.modules["paraphraser"]

    def optim_groups(self):
        return {"peers": OptimGroup([{"params": list(self.paraphraser.parameters())}])}

    def on_epoch_start(self, epoch: int) -> None:
        self.teacher.eval()  # the engine puts every module in train mode; the teacher's BN statistics stay

    def losses(self, batch, step):
        with torch.no_grad():
            target = adapter.extract(self.teacher, batch.view(0)).last
        return {"reconstruction": reconstruction_loss(self.paraphraser(target), target, self.hp.reconstruction)}

    def predict(self, x):
        features = adapter.extract(self.teacher, x)
        return {"net1": features.logits, "reconstructed": self.teacher.forward_head(self.paraphraser(features.last))}

    def peer_outputs(self):
        return ["net1"]

    def deployed_networks(self):
        return []

    def deployed_parameters(self) -> int:
        return 0

    def saved_modules(self):
        return {"paraphraser": self.paraphraser}
