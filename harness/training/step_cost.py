"""What one training step of a method costs: multiply-adds per image of its forward computation (AMLN Table 4's
#FLOPs of ONE, FFL and AMLN), recorded with every trial."""
from __future__ import annotations

import copy

import torch
from torch.utils.flop_counter import FlopCounterMode

from harness.training.method import Method


def training_forward_macs(method, batch, step) -> float | None:
    """Multiply-adds per image of the forward computation of one training step: every network and module the
    method's ``losses`` runs (peers, a frozen teacher, branches, gates, fusion modules, discriminators).

    Counted by torch's FlopCounterMode on a deep copy of the method, under ``no_grad`` and a forked random state, so
    the run itself (weights, BN statistics, memories, random streams) is untouched.  None for a method whose
    training step does not go through ``losses`` (it alternates several updates).
    """
    if type(method).losses is Method.losses:
        return None
    clone = copy.deepcopy(method, memo={id(method.ctx): method.ctx, id(method.optimizers): {},
                                        id(method.reduced_losses): None})
    devices = [batch.y.device] if batch.y.device.type == "cuda" else []
    counter = FlopCounterMode(display=False)
    with torch.random.fork_rng(devices=devices), torch.no_grad(), counter:
        clone.modules.train()
        clone.losses(batch, step)
    return counter.get_total_flops() / 2 / len(batch)
