"""``resources: {gpu: auto}``: how many cells share one GPU, from the cells' memory estimates
(``harness.training.memory``: what autograd keeps, measured on the meta device, plus weights and optimizer state)."""
from __future__ import annotations

from harness.config.cell import Cell
from harness.training.memory import CONTEXT_GIB, GIB, cell_memory
from harness.training.stages import waves


AUTO_HEADROOM = 1.25  # the estimate misses the allocator's fragmentation and cuDNN's workspaces
MAX_CELLS_PER_GPU = 8  # beyond this the host's CPUs, not the GPU, set the pace of small cells


def auto_gpu_share(cells: list[Cell], resources) -> tuple[float, str]:
    """``resources: {gpu: auto}``: the share of a GPU each cell asks for, 1/k with k the cells of the suite's
    largest estimate (with headroom and a CUDA context each) that fit in ``gpu_memory_gb``, at most 8; and the
    reason in words.  One whole GPU where a cell's size is not known before its data is read, and for every worker
    of a data-parallel cell (one NCCL rank per GPU)."""
    if resources.workers > 1:  # a data-parallel worker holds a whole GPU (NCCL: one rank per GPU)
        return 1.0, f"gpu: auto → 1 GPU per worker ({resources.workers} workers: one rank per GPU)"
    estimates = [cell_memory(c, resources.workers, resources.grad_accumulation)
                 for c in {c.hash: c for wave in waves(cells) for c in wave}.values()]
    if not estimates or any(e is None for e in estimates):
        return 1.0, "gpu: auto → 1 GPU per cell (the cells' sizes are known only once their data is read)"
    largest = max(e.total_bytes for e in estimates) / GIB
    stacked = 1
    if getattr(resources, "stack_seeds", False):  # a trial holds every seed of its cell
        from harness.training.bundle import stacked_seed_counts

        stacked = max(stacked_seed_counts(cells).values())
    per_cell = largest * stacked * AUTO_HEADROOM + CONTEXT_GIB
    k = max(1, min(MAX_CELLS_PER_GPU, int(resources.gpu_memory_gb // per_cell)))
    what = "cell(s)" if stacked == 1 else f"trial(s) of {stacked} stacked seeds"
    return 1.0 / k, (f"gpu: auto → {k} {what} per {resources.gpu_memory_gb:g} GB GPU "
                     f"(largest cell {largest:.1f} GiB estimated, {per_cell:.1f} GiB with headroom and a CUDA context"
                     f"{' per trial' if stacked > 1 else ''})")
