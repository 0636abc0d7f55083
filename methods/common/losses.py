"""Loss pieces shared by several methods."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(z / T), detached: a target that receives no gradient."""
    return F.softmax(logits.detach() / temperature, dim=1)


def distill_kl(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float,
               t2_scaling: bool = True) -> torch.Tensor:
    """KL(target ‖ softmax(student / T)), averaged over the batch, times T² when ``t2_scaling`` (Hinton)."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    kl = F.kl_div(log_student, target_probs, reduction="batchmean")
    return kl * temperature**2 if t2_scaling else kl


def warmup_gate(step, warmup_epochs: int) -> float:
    """0 during the first ``warmup_epochs`` epochs of training, then 1 (1 without a step: evaluation, costs); the
    weight of the distillation terms that TSB and its re-implemented baselines switch off at the start."""
    return 0.0 if step is not None and step.epoch < warmup_epochs else 1.0
