"""Ind: every peer trained alone with cross-entropy (the baseline row of every table)."""
from __future__ import annotations

import torch.nn.functional as F

from harness.training.method import Method, register_method


@register_method("ind")
class Independent(Method):
    """Each network of the group learns only from the labels; the group's ensemble is still evaluated."""

    display = "Ind"  # TSB's and KDCL's name; an offline table's rows say Teacher and Student
    trains_alone = True
    stackable = True

    def losses(self, batch, step):
        return {f"ce/net{k + 1}": F.cross_entropy(z, batch.y) for k, z in enumerate(self.peer_logits(batch))}
