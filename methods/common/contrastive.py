"""Contrastive Representation Distillation (CRD; Tian, Krishnan and Isola, ICLR 2020): the reusable parts.

Nothing here knows who teaches whom: an online method (``methods/dml_crd.py``, every peer against every other) and an
offline one (``methods/crd.py``, a frozen teacher and a student) assemble the same pieces.

- :class:`Embed`: a network's pooled embedding → Linear(d, ``feat_dim``) → L2 normalisation (RepDistiller's
  ``Embed``; ``feat_dim`` 128 there).
- :class:`MemoryBank`: one network's embeddings, one row per training sample (N × ``feat_dim``, a persistent buffer,
  so checkpoints hold it).  Rows start uniform in [−s, s] with s = 1/√(feat_dim/3) (each coordinate of variance
  1/feat_dim, so rows of norm ≈ 1, not normalised: RepDistiller's initialisation).  After a step the rows of the
  batch move towards the network's current (detached) embedding and are renormalised:
  m_i ← (μ·m_i + (1 − μ)·v_i) / ‖μ·m_i + (1 − μ)·v_i‖₂, μ the momentum (0.5 in CRD).
- :meth:`MemoryBank.scores`: an anchor embedding v (B × d) of another network against the bank rows of its sample
  and of its negatives, s_ij = exp(⟨m_{idx_ij}, v_i⟩ / τ) / Z, τ = 0.07 in CRD.  Z is the normalisation constant of
  the NCE estimate, fixed on the first call as Z = N · mean_ij exp(⟨m, v⟩ / τ) (computed before the division,
  detached) and kept in a persistent buffer; a bank read by several anchor networks (online, K > 2) keeps one Z per
  reader (``readers``), as RepDistiller keeps one per direction.
- :func:`nce_loss`: the NCE loss of CRD's Eq. 18 on those scores, with m negatives and the uniform noise
  distribution P_n = 1/N:
      L = −(1/B) Σ_i [ log(s_i0 / (s_i0 + m·P_n + ε)) + Σ_{j≥1} log(m·P_n / (s_ij + m·P_n + ε)) ],  ε = 1e-7,
  a sum over the negatives and a mean over the batch (RepDistiller's ``ContrastLoss``).
- :class:`NegativeSampler`: for every sample of the batch, its own index (the positive, column 0) and m negative
  indices (columns 1..m).
  * ``rule`` "other_class" (RepDistiller's CIFAR and ImageNet loaders, mode "exact"): negatives are samples of
    another class than the anchor's.  The harness gives a method no table of training labels, so the sampler keeps
    one (a persistent int64 buffer, −1 = not seen yet) and fills it from the batches it observes
    (:meth:`NegativeSampler.observe`, called before :meth:`NegativeSampler.sample`).  Until a sample has been seen
    (the first epoch) its class is unknown and it may be drawn as a negative whatever its class; from the second
    epoch on the rule is RepDistiller's exactly.  A label table given at construction (``labels``) makes it exact
    from the first step.  "any": every sample but the anchor itself.
  * ``replacement``: RepDistiller's CIFAR loader draws without replacement (``np.random.choice(..., replace=False)``)
    unless a class's pool is smaller than m, its ImageNet loader with replacement.  None ("auto") draws without
    replacement when N ≤ ``WITHOUT_REPLACEMENT_MAX_SAMPLES`` (200,000: CIFAR, CINIC-10, Tiny-ImageNet) and with
    replacement above (ImageNet, where the B × N random keys of the exact draw would cost more than the network);
    True/False force one.  Without replacement, a row whose pool holds fewer than m samples is drawn with
    replacement (RepDistiller's rule ``replace = k > len(pool)``).  An anchor with an empty pool (every other sample
    of its class) is an error.  One draw per step serves every pair of networks.
  * the number of negatives must be fixed (tensors of B × (m + 1)); :func:`clamp_negatives` caps it at N − 1 for a
    dataset smaller than m + 1 samples (the embedded dataset: a few thousand images; tests: a few dozen).
  Draws use torch's default generator of the sampler's device, which the engine checkpoints, so a resume draws
  the same negatives.

Memory, per bank: N × ``feat_dim`` float32 = 512 bytes per sample at 128-d: CIFAR-10/100 (50,000) 25.6 MB
(24.4 MiB), ImageNet (1,281,167) 656 MB (626 MiB).  The label table adds 8 bytes per sample (0.4 MB / 10.2 MB).
Per step and per (anchor, bank) pair the gathered rows are B × (m + 1) × ``feat_dim`` floats, kept for the backward
pass: 537 MB for B = 64, m = 16,384 (2.1 GB for B = 256).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt
from torch import nn

from harness.training.method import HParams
from methods.common.losses import full_precision

NCE_EPS = 1e-7
WITHOUT_REPLACEMENT_MAX_SAMPLES = 200_000


def clamp_negatives(requested: int, num_samples: int) -> int:
    """The number of negatives used: ``requested``, at most N − 1 (every other sample once)."""
    if num_samples < 2:
        raise ValueError(f"CRD needs at least 2 training samples, got {num_samples}")
    return max(1, min(int(requested), num_samples - 1))


def bank_bytes(num_samples: int, feat_dim: int = 128, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of one memory bank."""
    return num_samples * feat_dim * torch.empty((), dtype=dtype).element_size()


class Embed(nn.Module):
    """Linear(in_dim, feat_dim) then L2 normalisation of every row."""

    def __init__(self, in_dim: int, feat_dim: int = 128):
        super().__init__()
        self.linear = nn.Linear(in_dim, feat_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


def momentum_update(rows: torch.Tensor, embedding: torch.Tensor, momentum: float) -> torch.Tensor:
    """(μ·rows + (1 − μ)·embedding), each row L2-normalised."""
    return F.normalize(rows * momentum + embedding * (1.0 - momentum), dim=1)


@full_precision
def contrast_scores(anchor: torch.Tensor, rows: torch.Tensor, temperature: float) -> torch.Tensor:
    """exp(⟨rows_ij, anchor_i⟩ / τ): anchor (B, d), rows (B, m + 1, d) → (B, m + 1), not yet divided by Z."""
    return torch.exp(torch.bmm(rows, anchor.unsqueeze(2)).squeeze(2) / temperature)


@full_precision
def nce_loss(scores: torch.Tensor, num_samples: int, eps: float = NCE_EPS) -> torch.Tensor:
    """CRD's NCE loss on normalised scores (B, m + 1), column 0 the positive: batch mean, sum over negatives."""
    negatives = scores.shape[1] - 1
    noise = negatives / float(num_samples)  # m · P_n with the uniform noise distribution P_n = 1/N
    positive, negative = scores[:, 0], scores[:, 1:]
    log_d1 = torch.log(positive / (positive + noise + eps))
    log_d0 = torch.log(noise / (negative + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / scores.shape[0]


class MemoryBank(nn.Module):
    """One network's L2-normalised embeddings, one row per training sample, updated with momentum.

    Buffers (persistent, saved in checkpoints): ``memory`` (N × feat_dim) and ``z`` (one NCE normalisation constant
    per reader, −1 until its first read).
    """

    def __init__(self, num_samples: int, feat_dim: int = 128, momentum: float = 0.5, readers: int = 1,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"memory momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        bound = 1.0 / math.sqrt(feat_dim / 3.0)
        memory = torch.rand(num_samples, feat_dim, generator=generator) * (2 * bound) - bound
        self.register_buffer("memory", memory)
        self.register_buffer("z", torch.full((readers,), -1.0))

    @property
    def num_samples(self) -> int:
        return self.memory.shape[0]

    def read(self, index: torch.Tensor) -> torch.Tensor:
        """A copy of the rows of ``index`` (any shape), shape index.shape + (feat_dim,)."""
        return self.memory[index.to(self.memory.device)]

    def scores(self, anchor: torch.Tensor, index: torch.Tensor, temperature: float, reader: int = 0) -> torch.Tensor:
        """exp(⟨m_idx, v⟩ / τ) / Z for anchor v (B, d) and index (B, m + 1); sets this reader's Z on its first call."""
        rows = self.read(index).to(anchor.dtype)
        raw = contrast_scores(anchor, rows, temperature)
        with torch.no_grad():
            current = self.z[reader]
            first = raw.detach().mean().to(self.z.dtype) * self.num_samples
            self.z[reader] = torch.where(current < 0, first, current)  # no host sync
            z = self.z[reader].clone()  # a copy: later writes to the buffer must not touch the autograd graph
        return raw / z.to(raw.dtype)

    @torch.no_grad()
    def update(self, index: torch.Tensor, embedding: torch.Tensor) -> None:
        """Rows of ``index`` ← normalise(μ·row + (1 − μ)·embedding) (the embedding detached)."""
        index = index.to(self.memory.device)
        rows = momentum_update(self.memory[index], embedding.detach().to(self.memory), self.momentum)
        self.memory.index_copy_(0, index, rows)


class NegativeSampler(nn.Module):
    """The positive (the sample's own index) and ``num_negatives`` negative indices for every sample of a batch."""

    def __init__(self, num_samples: int, num_negatives: int, rule: Literal["other_class", "any"] = "other_class",
                 replacement: bool | None = None, labels: torch.Tensor | None = None, num_classes: int = 0):
        """``num_classes`` (0: not known): the per-class counts of the "other_class" rule are then a fixed-size
        scatter, without the host syncs of a masked selection and a maximum."""
        super().__init__()
        self.num_classes = num_classes
        if rule not in ("other_class", "any"):
            raise ValueError(f"negative rule must be 'other_class' or 'any', got {rule!r}")
        if not 1 <= num_negatives <= num_samples - 1:
            raise ValueError(f"{num_negatives} negatives cannot be drawn from {num_samples} samples "
                             "(at most N − 1; see clamp_negatives)")
        self.num_samples, self.num_negatives, self.rule = num_samples, int(num_negatives), rule
        self.replacement = num_samples > WITHOUT_REPLACEMENT_MAX_SAMPLES if replacement is None else bool(replacement)
        table = torch.full((num_samples if rule == "other_class" else 0,), -1, dtype=torch.long)
        if labels is not None and rule == "other_class":
            table.copy_(torch.as_tensor(labels, dtype=torch.long))
        self.register_buffer("labels", table)

    @torch.no_grad()
    def observe(self, index: torch.Tensor, y: torch.Tensor) -> None:
        """Remember the labels of a batch's samples (rule "other_class")."""
        if self.rule == "other_class":
            self.labels[index.to(self.labels.device)] = y.to(self.labels.device, torch.long)

    def _excluded(self, candidates: torch.Tensor, index: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Whether each candidate (B, n) may not serve as a negative of its row's anchor."""
        bad = candidates == index[:, None]
        if self.rule == "other_class":
            bad |= self.labels[candidates] == y[:, None]
        return bad

    def pool_sizes(self, index: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """How many samples each anchor may draw its negatives from."""
        if self.rule == "any":
            return torch.full_like(index, self.num_samples - 1)
        if self.num_classes:  # unknown labels (−1) counted in bin 0, dropped
            counts = torch.zeros(self.num_classes + 1, dtype=torch.long, device=self.labels.device)
            counts = counts.scatter_add_(0, self.labels + 1, torch.ones_like(self.labels))[1:]
        else:
            known = self.labels[self.labels >= 0]
            counts = torch.bincount(known, minlength=int(y.max()) + 1)
        anchor_in_class = self.labels[index] == y  # the anchor is already counted with its class
        return self.num_samples - counts[y] - (~anchor_in_class).long()

    def _with_replacement(self, index: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Uniform draws over each anchor's pool, with replacement, by rejection."""
        out = torch.randint(0, self.num_samples, (len(index), self.num_negatives), device=index.device)
        bad = self._excluded(out, index, y)
        while bool(bad.any()):
            out[bad] = torch.randint(0, self.num_samples, (int(bad.sum()),), device=index.device)
            bad = self._excluded(out, index, y)
        return out

    def _without_replacement(self, index: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A uniform subset of each anchor's pool: the top-m of random keys, excluded samples keyed −1."""
        everyone = torch.arange(self.num_samples, device=index.device).expand(len(index), -1)
        keys = torch.rand(len(index), self.num_samples, device=index.device)
        keys.masked_fill_(self._excluded(everyone, index, y), -1.0)
        return keys.topk(self.num_negatives, dim=1).indices

    @torch.no_grad()
    def sample(self, index: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, 1 + m) dataset indices: column 0 the anchor's own index, then its negatives."""
        device = self.labels.device if self.rule == "other_class" else index.device
        index, y = index.to(device), y.to(device, torch.long)
        pools = self.pool_sizes(index, y)
        short = pools < self.num_negatives
        # one host sync for both questions (the rejection loop of draws with replacement adds one per round)
        empty, any_short = torch.stack([(pools < 1).any(), short.any()]).tolist()
        if empty:
            raise ValueError("a CRD anchor has no possible negative: every other training sample shares its class")
        if self.replacement:
            negatives = self._with_replacement(index, y)
        else:
            negatives = self._without_replacement(index, y)
            if any_short:  # RepDistiller: replace = k > len(pool)
                negatives[short] = self._with_replacement(index[short], y[short])
        return torch.cat([index[:, None], negatives], dim=1)


class ContrastParams(HParams):
    """CRD's hyper-parameters, shared by the online and the offline method (RepDistiller's defaults)."""

    beta: NonNegativeFloat = 0.8
    feat_dim: PositiveInt = 128
    num_negatives: PositiveInt = 16384
    nce_temperature: PositiveFloat = 0.07
    momentum: float = Field(0.5, ge=0.0, lt=1.0)
    negatives: Literal["other_class", "any"] = "other_class"
    replacement: bool | None = None


class ContrastiveModules:
    """Named access to a CRD method's modules: ``embed`` heads, ``memory`` banks and the ``negatives`` sampler."""

    @property
    def embeds(self):
        return self.modules["embed"]

    @property
    def banks(self):
        return self.modules["memory"]

    @property
    def sampler(self) -> NegativeSampler:
        return self.modules["negatives"]
