"""Cost figures of a network at its dataset's resolution: parameters, FLOPs (torch's own counter) and
inference time per image (AMLN Table 4 reports all three), and the forward cost of a method's training step
(AMLN Table 4's #FLOPs of ONE, FFL and AMLN)."""
from __future__ import annotations

import copy
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def _train_gmacs(record: dict, cell) -> float | None:
    macs = record.get("costs", {}).get("train_forward_macs_per_image")
    return None if macs is None else macs / 1e9


def _params_m(record: dict, cell) -> float | None:
    params = record.get("params", {})
    return None if "peers" not in params else (params["peers"] + params.get("added_total", 0)) / 1e6


# Costs of a whole trial that a table may show beside accuracies (``table.values``), read from its record:
# name -> (what it is, for the report's legend; record, cell -> number or None).
COST_VALUES = {
    "params_m": ("training-time parameters in millions: every network and module trained (KDCL Table 3)",
                 _params_m),
    "train_gmacs": ("multiply-adds (G) per image of a training step's forward pass through every network and "
                    "module it runs (torch's FLOP counter)", _train_gmacs),
    "peer_gmacs": ("train_gmacs divided by the number of networks in the group",
                   lambda record, cell: None if (g := _train_gmacs(record, cell)) is None else g / len(cell.group)),
}


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


def training_forward_macs(method, batch, step) -> float | None:
    """Multiply-adds per image of the forward computation of one training step: every network and module the
    method's ``losses`` runs (peers, a frozen teacher, branches, gates, fusion modules, discriminators).

    Counted by torch's FlopCounterMode on a deep copy of the method, under ``no_grad`` and a forked random state, so
    the run itself (weights, BN statistics, memories, random streams) is untouched.  None for a method whose
    training step does not go through ``losses`` (it alternates several updates).
    """
    from harness.method import Method

    if type(method).losses is Method.losses:
        return None
    clone = copy.deepcopy(method, memo={id(method.ctx): method.ctx, id(method.optimizers): {}})
    devices = [batch.y.device] if batch.y.device.type == "cuda" else []
    counter = FlopCounterMode(display=False)
    with torch.random.fork_rng(devices=devices), torch.no_grad(), counter:
        clone.modules.train()
        clone.losses(batch, step)
    return counter.get_total_flops() / 2 / len(batch)
