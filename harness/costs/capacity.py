"""Whether each cell of a suite can run on what its ``resources`` ask for, checked before any trial starts.

A batch must split into ``workers × grad_accumulation`` equal parts, and a cell on a GPU must fit in the GPU
memory it asks for (the estimate of ``harness.costs.memory``); otherwise the trial would start, allocate and die
hours into a queue.  Each problem is one line: the cell, the estimate, what was asked, how to fix it."""
from __future__ import annotations

from harness.costs.memory import GIB, cell_memory
from harness.training.method import load_methods


def capacity_errors(suite) -> list[str]:
    """One line per (networks, batch) that cannot run as the suite's resources say, naming the first such cell."""
    resources = suite.spec.resources
    problems: dict[tuple, list] = {}
    methods = load_methods()
    for cell in suite.plan.everything:
        method = methods.get(cell.method)
        if cell.recipe.get("sync_bn") and resources.workers > 1 and not resources.gpu:
            problems.setdefault(("sync_bn",), [cell])
        if resources.grad_accumulation > 1 and not method.accumulates(method.HParams.model_validate(cell.hparams)):
            problems.setdefault(("accumulation", cell.method), [cell])
        batch = cell.recipe["batch_size"]
        if batch % resources.replicas:
            problems.setdefault(("split", batch), [cell])
            continue
        if not resources.gpu:
            continue  # a CPU trial's memory is the host's
        key = ("memory", cell.group, batch, str(cell.recipe.get("augment")), cell.dataset["name"])
        problems.setdefault(key, []).append(cell)
    lines = []
    asked = resources.gpu * resources.gpu_memory_gb * GIB
    for key, cells in problems.items():
        cell = cells[0]
        if key[0] == "accumulation":
            lines.append(
                f"{suite.path}: resources.grad_accumulation: {cell.describe()} updates within a batch and then runs "
                "forward passes again (peers one after another, or alternating updates), so gradients of several "
                "passes cannot add up to its step; use workers (data-parallel suits every method) or "
                "grad_accumulation: 1")
            continue
        if key[0] == "sync_bn":
            lines.append(f"{suite.path}: recipe.sync_bn: {cell.describe()} runs on CPU workers, and torch's "
                         "SyncBatchNorm runs on GPUs only; ask for gpu_per_worker, or set sync_bn: false (batch norm "
                         "per worker)")
            continue
        if key[0] == "split":
            lines.append(
                f"{suite.path}: resources: the batch of {batch_desc(cell)} ({key[1]}) does not split into workers × "
                f"grad_accumulation = {resources.workers} × {resources.grad_accumulation} equal parts; choose numbers "
                f"whose product divides {key[1]}")
            continue
        estimate = cell_memory(cell, resources.workers, resources.grad_accumulation)
        seeds = suite.plan.stacked_seeds(cell) if resources.stack_seeds else 1  # the seeds its trial trains
        if estimate is not None and seeds > 1 and estimate.total_bytes * seeds > asked:
            lines.append(f"{suite.path}: resources.stack_seeds: {seeds} seeds of {batch_desc(cell)} share a trial and "
                         f"need an estimated {estimate.total_bytes * seeds / GIB:.1f} GiB together, but a trial has "
                         f"{asked / GIB:.0f} GiB (gpu {resources.gpu:g} × gpu_memory_gb "
                         f"{resources.gpu_memory_gb:g}); ask for more gpu, or set stack_seeds: false")
            continue
        if estimate is None or estimate.total_bytes <= asked:
            continue
        per_image = estimate.activation_bytes / estimate.micro_batch
        fits = int(max(asked - estimate.state_bytes, 0) // per_image) if per_image else 0
        batch = cell.recipe["batch_size"]
        need = next(n for n in range(-(-batch // max(fits, 1)), batch + 1) if batch % n == 0)
        workers = max(n for n in range(1, min(need, 8) + 1) if need % n == 0)
        lines.append(
            f"{suite.path}: resources: {batch_desc(cell)} needs an estimated {estimate.describe()}, but a worker has "
            f"{asked / GIB:.0f} GiB (gpu {resources.gpu:g} × gpu_memory_gb {resources.gpu_memory_gb:g}); "
            + (f"at most {fits} images fit per pass, so set workers × grad_accumulation to {need} or more "
               f"(e.g. resources: {{workers: {workers}, grad_accumulation: {need // workers}}})"
               if fits else "the networks alone do not fit: ask for a larger GPU (gpu_memory_gb)")
            + (f" [and {len(cells) - 1} more cell(s) like it]" if len(cells) > 1 else ""))
    return lines


def batch_desc(cell) -> str:
    return f"{cell.describe()} at batch {cell.recipe['batch_size']}"

