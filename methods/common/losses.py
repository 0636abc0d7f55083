"""Loss pieces shared by several methods."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def full_precision(loss):
    """Compute ``loss`` in float32 outside autocast, whatever precision the networks ran in: temperatures,
    exponentials and logarithms of small probabilities (KL at T = 4, NCE, squared GAN scores) lose too much in
    bf16/fp16.  Half-precision tensor arguments are cast to float32 (float64 stays float64); gradients flow back
    to them unchanged."""

    def up(x):
        if isinstance(x, (list, tuple)):  # feature maps of several stages
            return type(x)(up(v) for v in x)
        return x.float() if isinstance(x, torch.Tensor) and x.dtype in (torch.float16, torch.bfloat16) else x

    @functools.wraps(loss)
    def in_float32(*args, **kwargs):
        args = [up(a) for a in args]
        kwargs = {k: up(v) for k, v in kwargs.items()}
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return loss(*args, **kwargs)

    return in_float32


@full_precision
def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(z / T), detached: a target that receives no gradient."""
    return F.softmax(logits.detach() / temperature, dim=1)


@full_precision
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
