"""How much accelerator memory one training step of a cell needs on each worker, before it is trained.

Activations dominate: autograd keeps tensors of every layer for the backward pass, in proportion to the batch.
Each network runs once on the meta device (shapes only, nothing allocated, well under a second for a ResNet-50:
``harness.models.meta``) while a saved-tensor hook adds up what autograd keeps; that figure per image, times the
worker's micro-batch (the recipe's batch / workers / gradient-accumulation steps), plus the weights, gradients and
optimizer state of every network, is the estimate.  Modules a method adds (discriminators, memory banks) are left
out: they are small beside the networks in the shipped suites (``tests/test_added_modules.py``)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from harness.config.cell import Cell
from harness.data.facts import network_input

# fp32 weight, gradient and momentum buffer, and one more copy for the optimizer's temporaries
BYTES_PER_TRAINED_PARAMETER = 16
BYTES_PER_FROZEN_PARAMETER = 4  # a teacher from an earlier stage: its weights only
GIB = 2**30
CONTEXT_GIB = 0.5  # what each process's CUDA context takes before any tensor (an assumption: no GPU measured it)


@lru_cache(maxsize=None)
def _network_figures(model: str, input_shape: tuple[int, int, int], num_classes: int) -> tuple[int, int]:
    """(bytes autograd saves per training image, parameters) of timm network ``model``."""
    import timm

    import harness.models  # noqa: F401  (the CIFAR networks)
    from harness.models.meta import ShapesOnly

    with torch.device("meta"), ShapesOnly():
        net = timm.create_model(model, num_classes=num_classes, in_chans=input_shape[0])
        net.train()
        # autograd also keeps the weights (already counted as state): the difference of two batch sizes is per image
        small, large = (_saved_bytes(net, images, input_shape) for images in (2, 4))
    return (large - small) // 2, sum(p.numel() for p in net.parameters())


def _saved_bytes(net: torch.nn.Module, images: int, input_shape: tuple[int, int, int]) -> int:
    saved: dict[int, torch.UntypedStorage] = {}  # by storage: views of one tensor are counted once

    def keep(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        saved[storage._cdata] = storage  # held, so that no address is reused while counting
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        net(torch.zeros(images, *input_shape, device="meta"))
    return sum(s.nbytes() for s in saved.values())


@dataclass(frozen=True)
class MemoryEstimate:
    micro_batch: int  # images per worker per forward pass
    activation_bytes: int
    state_bytes: int  # weights, gradients, optimizer state (and frozen teachers' weights)

    @property
    def total_bytes(self) -> int:
        return self.activation_bytes + self.state_bytes

    def describe(self) -> str:
        return (f"{self.total_bytes / GIB:.1f} GiB per worker ({self.activation_bytes / GIB:.1f} GiB of activations "
                f"for {self.micro_batch} images, {self.state_bytes / GIB:.1f} GiB of weights and optimizer state)")


def cell_memory(cell: Cell, workers: int = 1, grad_accumulation: int = 1) -> MemoryEstimate | None:
    """The estimate for one worker of ``cell``; None where its dataset's shape is not known before loading it."""
    from harness.training.stages import stages_of

    shape = network_input(cell.dataset, cell.recipe)
    if shape is None:
        return None
    input_shape, classes = shape
    micro = max(cell.recipe["batch_size"] // (workers * grad_accumulation), 1)
    figures = [_network_figures(m, input_shape, classes) for m in cell.group]
    frozen = [_network_figures(m, input_shape, classes)[1] for s in stages_of(cell).values() for m in s.models]
    # under bf16/fp16 autocast most saved activations are 2-byte (batch norm's statistics and the losses stay fp32)
    half = 0.5 if cell.recipe.get("precision", "fp32") != "fp32" else 1.0
    return MemoryEstimate(
        micro_batch=micro,
        activation_bytes=int(half * micro * sum(per_image for per_image, _ in figures)),
        state_bytes=BYTES_PER_TRAINED_PARAMETER * sum(p for _, p in figures) + BYTES_PER_FROZEN_PARAMETER * sum(frozen),
    )
