"""DML, Deep Mutual Learning (Zhang et al., CVPR 2018) for K peers.

Loss of peer k: CE(z_k, y) + w · T² · (1/(K-1)) Σ_{l≠k} KL(p_l ‖ p_k), p = softmax(z / T).

Choices where the paper is silent (the defaults follow the common PyTorch reading, MCL-OKD's):
- ``temperature`` 1 as in the paper; AMLN's re-implementation uses 3 (its Table 6 case B), TSB's 4, KDCL's 2.
- the peer's prediction is a detached target (the official TF code restricts each update to net k's variables).
- KL(peer ‖ self), batch mean, times T² (``t2_scaling``; no effect at T = 1).
- ``peer_reduction`` "mean" divides by K-1 as the paper's equation does; the official code sums ("sum").
- ``update`` "joint": one step on the summed loss, every peer seeing the others' predictions of this batch.
  "sequential": as the official code, peer 1 steps first, then peer 2 learns from peer 1's updated
  prediction, and so on (each update re-runs the already-updated peers on the batch).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from pydantic import NonNegativeFloat, PositiveFloat

from harness.training.method import HParams, Method, added_option, register_method
from methods.common.losses import distill_kl, soft_targets, warmup_gate


class DMLParams(HParams):
    temperature: PositiveFloat = 1.0
    kl_weight: NonNegativeFloat = 1.0
    t2_scaling: bool = True
    peer_reduction: Literal["mean", "sum"] = "mean"
    update: Literal["joint", "sequential"] = "joint"
    # KL terms zero for the first n epochs (TSB re-implements every baseline with its 20-epoch warm-up, Sec. 4.1)
    warmup_epochs: int = added_option(0, ge=0)


def dml_terms(logits: list[torch.Tensor], targets: list[torch.Tensor], y: torch.Tensor, k: int,
              hp: DMLParams, gate: float = 1.0) -> dict[str, torch.Tensor]:
    """CE and mutual KL terms of peer ``k`` given every peer's logits and detached soft targets; ``gate`` scales the
    KL (0 during a warm-up)."""
    others = [targets[l] for l in range(len(targets)) if l != k]
    kl = torch.stack([distill_kl(logits[k], t, hp.temperature, hp.t2_scaling) for t in others]).sum()
    if hp.peer_reduction == "mean":
        kl = kl / len(others)
    return {f"ce/net{k + 1}": F.cross_entropy(logits[k], y), f"kl/net{k + 1}": gate * hp.kl_weight * kl}


@register_method("dml")
class DML(Method):
    HParams = DMLParams
    min_peers = 2
    stackable = True

    def gate(self, step) -> float:
        """0 during the first ``warmup_epochs`` epochs (no step: 1)."""
        return warmup_gate(step, self.hp.warmup_epochs)

    def losses(self, batch, step):
        logits = self.peer_logits(batch)
        targets = [soft_targets(z, self.hp.temperature) for z in logits]
        terms = {}
        for k in range(len(logits)):
            terms.update(dml_terms(logits, targets, batch.y, k, self.hp, self.gate(step)))
        return terms

    @classmethod
    def accumulates(cls, hp) -> bool:
        return hp.update == "joint"

    def train_step(self, batch, step):
        if self.hp.update == "joint":
            return super().train_step(batch, step)
        optimizer = self.optimizers["peers"]
        with torch.no_grad():
            targets = [soft_targets(peer(batch.view(k)), self.hp.temperature) for k, peer in enumerate(self.peers)]
        terms = {}
        for k, peer in enumerate(self.peers):
            logits = [None] * len(self.peers)
            logits[k] = peer(batch.view(k))
            step_terms = dml_terms(logits, targets, batch.y, k, self.hp, self.gate(step))
            optimizer.zero_grad(set_to_none=True)  # only peer k gets gradients, so only peer k moves
            self.backward(torch.stack(list(step_terms.values())).sum())
            optimizer.step()
            with torch.no_grad():
                targets[k] = soft_targets(peer(batch.view(k)), self.hp.temperature)
            terms.update({name: value.detach() for name, value in step_terms.items()})
        return terms
