"""CRD, Contrastive Representation Distillation (Tian, Krishnan and Isola, ICLR 2020): a student learns from a frozen
teacher trained in an earlier stage (``methods/common/offline.py``) by contrasting embeddings against memory banks.  The
offline baseline of ACKD's tables ("CRD [38]", run with RepDistiller, the CRD authors' code).

With e_s, e_t the pooled penultimate features of student and teacher (``adapter.extract``'s ``embedding``; the
teacher's under no_grad), v_s = normalise(W_s e_s + b_s) and v_t = normalise(W_t e_t + b_t) their embeddings (one
Linear head each to ``feat_dim`` dimensions, ``methods.common.contrastive.Embed``), M_s and M_t the memory banks of the student's and
the teacher's embeddings (N rows each, ``methods.common.contrastive.MemoryBank``) and i the dataset indices of the batch:

    L = ce_weight · CE(z_s, y) + kd_weight · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T))
        + β · [ NCE(v_s ; M_t[i], M_t[negatives of i]) + NCE(v_t ; M_s[i], M_s[negatives of i]) ],

NCE the CRD loss of ``methods.common.contrastive.nce_loss`` on s = exp(⟨m, v⟩ / τ) / Z (one constant Z per bank, fixed on the
first step): the student's embedding is the anchor against the teacher's bank (its positive the teacher's row of
the same sample, its negatives the teacher's rows of other samples), and the teacher's embedding against the
student's bank, the two summed (RepDistiller's ``CRDLoss``: ``loss_v1 + loss_v2``).  The second term trains only the
teacher's head (the teacher is frozen); both give the heads their gradients.  After the loss each bank takes its
network's detached embedding of the batch: M[i] ← normalise(μ·M[i] + (1 − μ)·v).

Logged terms: ``ce``, ``kd`` (0 with the default weight), ``crd/student`` (student anchor, teacher bank) and
``crd/teacher`` (teacher anchor, student bank), each with its weight included.

Choices, with their defaults (RepDistiller's ``train_student.py`` and ``scripts/run_cifar_distill.sh``, CRD run
``--distill crd -r 1 -a 0 -b 0.8``; ``docs/notes/official_code.md#repdistiller``) and the hyper-parameters that change
them:
- ``ce_weight`` 1 (``-r 1``), ``kd_weight`` 0 (``-a 0``), ``beta`` 0.8 (``-b 0.8``).  CRD+KD (the CRD paper's
  "CRD+KD" row) is ``kd_weight: 1``; ``temperature`` 4 (RepDistiller's ``kd_T``) and ``t2_scaling`` true apply to
  that KD term only (RepDistiller's ``DistillKL``: batch mean · T²).
- ``feat_dim`` 128, ``num_negatives`` 16,384, ``nce_temperature`` 0.07, ``momentum`` 0.5: RepDistiller's CRD
  defaults.  ``num_negatives`` is clamped to N − 1 when the training set is smaller (``self.num_negatives``).
- ``negatives`` "other_class": negatives are training samples of another class than the anchor's (RepDistiller's
  CIFAR loader, mode "exact"); the method learns the labels from the batches, so in the first epoch a not-yet-seen
  sample may be drawn whatever its class (``methods.common.contrastive.NegativeSampler``).  "any": every other sample.
  ``replacement`` None: without replacement up to 200,000 training samples (RepDistiller's CIFAR loader), with
  replacement above (its ImageNet loader); true/false force one.  One draw per step serves both directions.
- The heads (``self.modules["embed"]``: ``student``, ``teacher``) are trained with the student, in the student's
  parameter group of the recipe's optimizer (its learning rate, ``Recipe.peer_lr`` included), as RepDistiller puts
  ``embed_s`` and ``embed_t`` in the student's ``trainable_list``.  They are not deployed; ``parameter_counts``
  reports them as "embed", the frozen teacher as "frozen".
- The teacher is in eval mode (BN running statistics) and its features are computed without a graph; one forward
  pass gives both its logits (for KD) and its embedding.
- Bank updates happen inside ``losses`` after both scores are read (RepDistiller's ``ContrastMemory.forward``).
- The teacher: see ``methods/common/offline.py`` (``teacher_recipe``, ``teacher_seed`` 0, ``teacher_checkpoint``,
  ``teacher_stop_epoch``).

State (``self.modules``, saved with every checkpoint): ``memory`` (two banks, each N × ``feat_dim`` float32 plus
its constant Z: 25.6 MB each for CIFAR-100, 656 MB each for ImageNet) and ``negatives`` (the label table, N int64).
Per step each direction gathers B × (m + 1) × 128 floats kept for the backward pass (537 MB at B = 64, m = 16,384).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from harness.models import adapter
from harness.training.method import OptimGroup, register_method
from methods.common.contrastive import (ContrastiveModules, ContrastParams, Embed, MemoryBank, NegativeSampler,
                                        clamp_negatives, nce_loss)
from methods.common.offline import OfflineMethod
from methods.common.offline_feature import OfflineFeatureParams


class CRDParams(ContrastParams, OfflineFeatureParams):
    """CRD's settings (β 0.8) and the offline feature methods' CE / KD part and teacher."""


ROLES = ("student", "teacher")


@register_method("crd")
class CRD(ContrastiveModules, OfflineMethod):
    """CRD from a frozen teacher: symmetric NCE between the two networks' embeddings and each other's memory bank."""

    HParams = CRDParams

    # --- structure ---------------------------------------------------------------------------------------
    def build(self) -> nn.ModuleDict:
        modules = super().build()
        hp, n = self.hp, self.ctx.num_train
        input_size = (self.ctx.in_chans, *self.ctx.image_size)
        networks = {"student": modules["peers"][0], "teacher": modules["teacher"]}
        self.num_negatives = clamp_negatives(hp.num_negatives, n)
        modules["embed"] = nn.ModuleDict(
            {role: Embed(adapter.shapes(networks[role], input_size)["embedding"][0], hp.feat_dim) for role in ROLES})
        modules["memory"] = nn.ModuleDict({role: MemoryBank(n, hp.feat_dim, hp.momentum) for role in ROLES})
        modules["negatives"] = NegativeSampler(n, self.num_negatives, hp.negatives, hp.replacement,
                                               num_classes=self.ctx.num_classes)
        return modules

    def optim_groups(self) -> dict[str, OptimGroup]:
        """The recipe's optimizer; the student's parameter group also holds both heads."""
        params = list(self.student.parameters()) + list(self.embeds.parameters())
        return {"peers": OptimGroup([{"params": params, "model": self.ctx.group[1]}])}

    # --- training ------------------------------------------------------------------------------------------
    def losses(self, batch, step):
        hp = self.hp
        student, teacher = self.features(batch.view(0))
        v = {"student": self.embeds["student"](student.embedding), "teacher": self.embeds["teacher"](teacher.embedding)}
        everyone = self.ctx.gather(batch.index)  # data-parallel workers write the rows of the whole batch
        self.sampler.observe(everyone, self.ctx.gather(batch.y))
        index = self.sampler.sample(batch.index, batch.y)
        n = self.ctx.num_train
        crd = {anchor: hp.beta * nce_loss(self.banks[bank].scores(v[anchor], index, hp.nce_temperature), n)
               for anchor, bank in (("student", "teacher"), ("teacher", "student"))}
        for role in ROLES:  # after both reads: this step's scores use the old rows
            self.banks[role].update(everyone, self.ctx.gather(v[role]))
        terms = {"ce": hp.ce_weight * F.cross_entropy(student.logits, batch.y)}
        if hp.kd_weight > 0:  # RepDistiller's CRD trains without KD (α 0): no term, as the feature methods
            terms["kd"] = hp.kd_weight * self.hinton_kd(student.logits, teacher.logits)
        return {**terms, "crd/student": crd["student"], "crd/teacher": crd["teacher"]}
