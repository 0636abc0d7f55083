"""Cost figures of a network at its dataset's resolution: parameters, FLOPs (torch's own counter) and
inference time per image (AMLN Table 4 reports all three).  The forward cost of a whole training step is
``harness.training.step_cost``; how a report reads costs from a record is ``harness.reporting.frames``."""
from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def flops(model: torch.nn.Module, input_size: tuple[int, int, int]) -> int:
    """FLOPs of one forward pass of one image, as torch counts them (a multiply-add is 2 FLOPs).

    Papers usually print multiply-adds under the name 'FLOPs': that is this number divided by 2.
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, *input_size))
    model.train(was_training)
    return counter.get_total_flops()


@torch.no_grad()
def seconds_per_image(model: torch.nn.Module, input_size: tuple[int, int, int], batch: int = 32,
                      repeats: int = 3, device: str = "cpu") -> float:
    """Median wall time of a forward pass of ``batch`` images, divided by ``batch``."""
    model = model.to(device).eval()
    x = torch.randn(batch, *input_size, device=device)
    model(x)  # warm-up
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] / batch


#END
