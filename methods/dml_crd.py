"""Online CRD on DML (TSB Table 4, "CRD"): DML's logit terms plus contrastive representation distillation between
every ordered pair of peers, for K ≥ 2 peers.

TSB (Sec. 4.2.3) adapts CRD "into its online version, built upon the scheme of DML" and gives nothing more.  Here
(``docs/notes/feature_methods.md#online-on-top-of-dml``; the CRD pieces are ``methods/common/contrastive.py``), with
v_k = normalise(W_k e_k + b_k) peer k's embedding (e_k its pooled penultimate feature, ``adapter.extract``'s
``embedding``; one Linear head per peer to ``feat_dim`` dimensions), M_l the memory bank of peer l and i the dataset
indices of the batch, the loss of peer k is

    CE(z_k, y) + g(t)·w·T²·R_{l≠k} KL(p_l ‖ p_k) + g(t)·β·R_{l≠k} NCE(v_k ; M_l[i], M_l[negatives of i]),

p = softmax(z / T) detached as a target (methods/dml.py's ``dml_terms``), NCE the CRD loss of ``methods.common.contrastive.nce_loss``
on s = exp(⟨m, v_k⟩ / τ) / Z_kl: peer k's embedding is the anchor, the positive is peer l's bank row of the same
sample, the negatives are peer l's bank rows of other samples.  R is the mean over the K − 1 partners
(``peer_reduction`` "mean") or the sum.  After the loss, every bank M_l takes peer l's detached embedding of the batch:
M_l[i] ← normalise(μ·M_l[i] + (1 − μ)·v_l).  With K = 2 the CRD part is RepDistiller's symmetric CRD loss
(student anchor against the teacher's bank plus teacher anchor against the student's bank) with both networks trained.

Logged terms per peer: ``ce/netk``, ``kl/netk`` and ``crd/netk`` (β, the gate and R included).

The memory-bank question (TSB does not say whose embeddings a network's bank holds;
``docs/notes/feature_methods.md#online-crd-memory-banks``): one bank per network, holding that network's own
embeddings per sample (K banks, not K(K−1)).  A bank is what a network's partners contrast against; this is
RepDistiller's layout, where ``memory_v1`` holds the student's embeddings (read by the teacher anchor) and
``memory_v2`` the teacher's (read by the student anchor), so each network of a pair learns from the other's detached
embeddings (through its bank) in both directions.  Separate banks per ordered pair would hold identical rows.  Each
reader of a bank keeps its own normalisation constant Z_kl (fixed on the first step), as RepDistiller keeps one per
direction.

Choices, with their defaults and the hyper-parameters that change them:
- ``temperature`` 4 (TSB's τ, Sec. 4.1), ``kl_weight`` 1, ``t2_scaling`` true, ``peer_reduction`` "mean": DML under
  TSB's recipe (methods/dml.py), as for the other online feature methods of Table 4 (methods/common/online_feature.py).
- ``beta`` 0.8 (RepDistiller ``-b 0.8``), ``feat_dim`` 128, ``num_negatives`` 16,384, ``nce_temperature`` 0.07,
  ``momentum`` 0.5: RepDistiller's CRD defaults (``docs/notes/official_code.md#repdistiller``).
- ``num_negatives`` is clamped to N − 1 when the training set has fewer than ``num_negatives`` + 1 samples (the
  number used is ``self.num_negatives``); with ``negatives`` "other_class" an anchor whose other-class pool is still
  smaller than that draws with replacement.  No error and no warning: a tiny dataset is a smoke test.
- ``negatives`` "other_class": negatives are samples of another class (RepDistiller's loaders, mode "exact"); the
  labels are learnt from the batches, so in the first epoch a not-yet-seen sample may be drawn whatever its class
  (``methods.common.contrastive.NegativeSampler``).  "any": every other sample.  ``replacement`` None: without replacement up to
  200,000 training samples (RepDistiller's CIFAR loader), with replacement above (its ImageNet loader); true/false
  force one.  One draw per step is shared by every pair.
- ``warmup_epochs`` 0: as in methods/common/online_feature.py; with n > 0 the KL and CRD terms are zero in the first n
  epochs (g(t) = 0, then 1).  The banks are updated during the warm-up too.
- Embedding heads (``self.modules["embed"]``, one per peer) are trained by their peer's loss only and sit in their
  peer's parameter group of the recipe's optimizer (its learning rate, ``Recipe.peer_lr`` included): RepDistiller
  trains ``embed_s``/``embed_t`` with the student's optimizer.  They are not deployed; ``parameter_counts`` reports
  them as "embed".
- Bank updates happen inside ``losses`` (after every score has been read, before the backward pass), as in
  RepDistiller's ``ContrastMemory.forward``; each bank is updated once per step, not once per reader.
- One joint update of every peer and head on the summed loss (DML's "joint" update).
- Evaluated outputs: the peers, net1..netK (and the engine's ensemble).

State (``self.modules``, saved with every checkpoint): ``memory`` (K banks, each N × ``feat_dim`` float32 plus its
K − 1 constants Z) and ``negatives`` (the label table, N int64 with "other_class").  Memory per bank: 512 bytes per
sample at 128-d, CIFAR-100 (N = 50,000) 25.6 MB, ImageNet (N = 1,281,167) 656 MB; K = 2 doubles it.  The label
table adds 0.4 MB / 10.2 MB.  Per step, each of the K(K − 1) (anchor, bank) pairs gathers B × (m + 1) × 128 floats
that the backward pass keeps: 537 MB for B = 64 and m = 16,384 (TSB's CIFAR batch), so about 1.1 GB for K = 2.
"""
from __future__ import annotations

import torch
from torch import nn

from harness.models import adapter
from harness.training.method import Method, OptimGroup, register_method
from methods.common.contrastive import (ContrastiveModules, ContrastParams, Embed, MemoryBank, NegativeSampler,
                                        clamp_negatives, nce_loss)
from methods.common.losses import soft_targets, warmup_gate
from methods.common.online_feature import OnlineFeatureParams
from methods.dml import dml_terms


class DMLCRDParams(ContrastParams, OnlineFeatureParams):
    """The DML part of every online feature method (methods/common/online_feature.py) and CRD's settings (β 0.8)."""


def reader_slot(anchor: int, bank: int) -> int:
    """Which of bank ``bank``'s K − 1 normalisation constants belongs to anchor peer ``anchor`` (0-based, ≠ bank)."""
    return anchor if anchor < bank else anchor - 1


@register_method("dml_crd")
class DMLCRD(ContrastiveModules, Method):
    HParams = DMLCRDParams
    min_peers = 2

    # --- structure ---------------------------------------------------------------------------------------
    def build(self) -> nn.ModuleDict:
        modules = super().build()
        hp, ctx = self.hp, self.ctx
        k, n = len(ctx.group), ctx.num_train
        input_size = (ctx.in_chans, *ctx.image_size)
        widths = [adapter.shapes(peer, input_size)["embedding"][0] for peer in modules["peers"]]
        self.num_negatives = clamp_negatives(hp.num_negatives, n)
        modules["embed"] = nn.ModuleList(Embed(w, hp.feat_dim) for w in widths)
        modules["memory"] = nn.ModuleList(MemoryBank(n, hp.feat_dim, hp.momentum, readers=k - 1) for _ in range(k))
        modules["negatives"] = NegativeSampler(n, self.num_negatives, hp.negatives, hp.replacement,
                                               num_classes=self.ctx.num_classes)
        return modules

    def optim_groups(self) -> dict[str, OptimGroup]:
        """The recipe's optimizer; peer k's parameter group also holds peer k's embedding head."""
        groups = [{"params": list(peer.parameters()) + list(head.parameters()), "model": name}
                  for name, peer, head in zip(self.ctx.group, self.peers, self.embeds)]
        return {"peers": OptimGroup(groups)}

    # --- training ------------------------------------------------------------------------------------------
    def gate(self, step) -> float:
        """g(t): 0 during the first ``warmup_epochs`` epochs, then 1 (1 when no step is given)."""
        return warmup_gate(step, self.hp.warmup_epochs)

    def contrast_index(self, batch) -> torch.Tensor:
        """(B, 1 + m): each sample's own index, then its negatives (the batch's labels are remembered first)."""
        self.sampler.observe(self.ctx.gather(batch.index), self.ctx.gather(batch.y))  # every worker's samples
        return self.sampler.sample(batch.index, batch.y)

    def crd_term(self, k: int, embeddings: list[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        """R over l ≠ k of NCE(peer k's embedding against bank l), unweighted."""
        hp, n = self.hp, self.ctx.num_train
        losses = [nce_loss(self.banks[l].scores(embeddings[k], index, hp.nce_temperature, reader_slot(k, l)), n)
                  for l in range(len(embeddings)) if l != k]
        total = torch.stack(losses).sum()
        return total / len(losses) if hp.peer_reduction == "mean" else total

    def losses(self, batch, step):
        hp = self.hp
        feats = [adapter.extract(peer, batch.view(k)) for k, peer in enumerate(self.peers)]
        logits = [f.logits for f in feats]
        targets = [soft_targets(z, hp.temperature) for z in logits]
        embeddings = [head(f.embedding) for head, f in zip(self.embeds, feats)]
        index = self.contrast_index(batch)
        gate = self.gate(step)
        terms = {}
        for k in range(len(self.peers)):
            dml = dml_terms(logits, targets, batch.y, k, hp)
            terms[f"ce/net{k + 1}"] = dml[f"ce/net{k + 1}"]
            terms[f"kl/net{k + 1}"] = gate * dml[f"kl/net{k + 1}"]
            terms[f"crd/net{k + 1}"] = gate * hp.beta * self.crd_term(k, embeddings, index)
        for bank, v in zip(self.banks, embeddings):  # after every read: this step's scores use the old rows
            bank.update(self.ctx.gather(batch.index), self.ctx.gather(v))
        return terms
