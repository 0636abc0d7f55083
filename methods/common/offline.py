"""Offline distillation: a student learns from a teacher trained in an earlier stage.

A cell's group is ``[teacher, student]``.  The teacher is, by default, the ``ind`` cell of the teacher network
on the same dataset with the recipe ``teacher_recipe`` (default: the student's) and seed ``teacher_seed``
(default 0: one teacher shared by every student seed, as RepDistiller's pretrained teachers are; ``null``
trains one teacher per student seed).  ``teacher_checkpoint`` points to a file instead (its SHA-256, when
``teacher_sha256`` gives it, is checked; it is always recorded).  ``teacher_stop_epoch`` stops the teacher's
run after that epoch of its unchanged schedule: a snapshot of the full run, as ESKD's early-stopped teacher.

The teacher is frozen and kept in eval mode; it is evaluated as the output ``teacher`` beside the student
(``net1``), so a table can show both.  Only the student is deployed, counted and saved.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from harness.config.recipe import Seed
from torch import nn

from harness.config.cell import Cell
from harness.config.recipe import Recipe, load_presets, resolve_recipe
from harness.models import adapter
from harness.training.method import HParams, Method, OptimGroup
from harness.training.stages import Stage
from methods.common.losses import distill_kl, soft_targets


class TeacherParams(HParams):
    teacher_recipe: str | dict | None = None
    teacher_seed: Seed | None = 0
    teacher_checkpoint: str | None = None
    teacher_sha256: str | None = None
    teacher_stop_epoch: int | None = Field(None, ge=1)


def teacher_recipe(cell: Cell, recipe: str | dict | None) -> dict:
    """A teacher's resolved recipe: ``recipe`` (a preset name or mapping), or None for the cell's own."""
    if recipe is None:
        return cell.recipe
    return Recipe.model_validate(resolve_recipe(recipe, load_presets(), "teacher_recipe")).model_dump(mode="json")


def teacher_cell(cell: Cell, group: tuple[str, ...], recipe: str | dict | None, seed: int | None,
                 stop_epoch: int | None = None, method: str = "ind", hparams: dict | None = None) -> Cell:
    """The cell that trains a teacher for ``cell``: ``method`` (``ind``; TAKD's assistant: ``kd``) on ``group``,
    the same dataset, ``recipe`` (None: the cell's own) and ``seed`` (None: the cell's own)."""
    resolved = teacher_recipe(cell, recipe)
    return Cell(method=method, hparams=hparams or {}, group=tuple(group), dataset=cell.dataset, recipe=resolved,
                seed=cell.seed if seed is None else seed, label="teacher", suite=cell.suite, stop_epoch=stop_epoch)


class OfflineMethod(Method):
    """A student (the group's second network) distilled from a frozen teacher (the first)."""

    HParams = TeacherParams
    min_peers = max_peers = 2
    teacher_stage: ClassVar[str] = "teacher"  # the stage whose network the student learns from (TAKD: "assistant")

    @classmethod
    def analysis_roles(cls, hp, cell) -> dict:
        """The networks that ``harness analyze`` compares with the student, by role (ACKD Table 1)."""
        return {"teacher": cls.stages(hp, cell)["teacher"]}

    @classmethod
    def stages(cls, hp, cell):
        teacher = cell.group[0]
        if hp.teacher_checkpoint:
            return {"teacher": Stage(checkpoint=hp.teacher_checkpoint, sha256=hp.teacher_sha256, models=(teacher,))}
        return {"teacher": Stage(cell=teacher_cell(cell, (teacher,), hp.teacher_recipe, hp.teacher_seed,
                                                   hp.teacher_stop_epoch))}

    def build(self) -> nn.ModuleDict:
        student = self.ctx.create_model(self.ctx.group[1])
        teacher = self.ctx.load_stage(self.teacher_stage)[0]
        return nn.ModuleDict({"peers": nn.ModuleList([student]), "teacher": teacher})

    @property
    def student(self) -> nn.Module:
        return self.peers[0]

    @property
    def teacher(self) -> nn.Module:
        return self.modules["teacher"]

    def optim_groups(self):
        groups = [{"params": list(self.student.parameters()), "model": self.ctx.group[1]}]
        extra = [p for key, m in self.modules.items() if key not in ("peers", "teacher") for p in m.parameters()]
        return {"peers": OptimGroup(groups + ([self.extra_group(extra)] if extra else []))}

    def extra_owner(self) -> str:
        """The student: every trainable module besides it (heads, regressors, learners) is the student's."""
        return self.ctx.group[1]

    def on_epoch_start(self, epoch: int) -> None:
        self.teacher.eval()  # the engine puts every module in train mode; the teacher's BN statistics stay

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(x)

    def features(self, x: torch.Tensor) -> tuple[adapter.Features, adapter.Features]:
        """The student's features and the frozen teacher's (computed without a graph)."""
        with torch.no_grad():
            teacher = adapter.extract(self.teacher, x)
        return adapter.extract(self.student, x), teacher

    def hinton_kd(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Unweighted KD term: T²·KL(softmax(teacher/T) ‖ softmax(student/T)) at the method's ``temperature``
        (T² only with ``t2_scaling``); for methods whose hyper-parameters have both."""
        target = soft_targets(teacher_logits, self.hp.temperature)
        return distill_kl(student_logits, target, self.hp.temperature, self.hp.t2_scaling)

    def predict(self, x):
        return {"net1": self.student(x), "teacher": self.teacher(x)}

    def peer_outputs(self):
        return ["net1"]

    def deployed_networks(self):
        return [(self.ctx.group[1], self.student)]

    def deployed_parameters(self) -> int:
        return sum(p.numel() for p in self.student.parameters())
