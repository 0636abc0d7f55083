"""``resources: {gpu: auto}``: how many cells share one GPU, from the cells' memory estimates
(``harness.costs.memory``: what autograd keeps, measured on the meta device, plus weights and optimizer state)."""
from __future__ import annotations

from harness.costs.memory import CONTEXT_GIB, GIB, cell_memory


AUTO_HEADROOM = 1.25  # the estimate misses the allocator's fragmentation and cuDNN's workspaces
MAX_CELLS_PER_GPU = 8  # beyond this the host's CPUs, not the GPU, set the pace of small cells


MEASURED_HEADROOM = 1.1  # a measured peak (reserved memory and context) misses only run-to-run variation


def auto_gpu_share(plan, resources, measured: dict | None = None) -> tuple[float, str]:
    """``resources: {gpu: auto}``: the share of a GPU each cell asks for, 1/k with k the cells of the suite's
    largest that fit in ``gpu_memory_gb``, at most 8; and the reason in words.  A cell's size is what ``harness
    bench`` measured for it where ``measured`` has it (``(hash, mode) → (bytes, words)``, from
    ``harness.costs.rates.bench_memory``), with a little headroom; else the estimate, with headroom for what
    it misses and a CUDA context.  One whole GPU where a cell's size is not known before its data is read, and
    for every worker of a data-parallel cell (one NCCL rank per GPU)."""
    if resources.workers > 1:  # a data-parallel worker holds a whole GPU (NCCL: one rank per GPU)
        return 1.0, f"gpu: auto → 1 GPU per worker ({resources.workers} workers: one rank per GPU)"
    unique = plan.everything  # a run's plan (harness.suite.plan.RunPlan): every cell and stage cell
    stacked = 1
    if getattr(resources, "stack_seeds", False):  # a trial holds every seed of its cell (not benched alone)
        stacked = max(plan.stacked_seeds(c) for c in plan.cells)
    mode = "stacked" if getattr(resources, "stack_peers", False) else "separate"
    sizes, sources = [], set()
    for cell in unique:
        found = (measured or {}).get((cell.hash, mode)) if stacked == 1 else None
        if found is not None:
            sizes.append((found[0] / GIB * MEASURED_HEADROOM, found[0] / GIB, "measured"))
            sources.add(found[1])
            continue
        estimate = cell_memory(cell, resources.workers, resources.grad_accumulation)
        if estimate is None:
            return 1.0, "gpu: auto → 1 GPU per cell (the cells' sizes are known only once their data is read)"
        gib = estimate.total_bytes / GIB
        sizes.append((gib * stacked * AUTO_HEADROOM + CONTEXT_GIB, gib, "estimated"))
    if not sizes:
        return 1.0, "gpu: auto → 1 GPU per cell (the cells' sizes are known only once their data is read)"
    per_cell, largest, how = max(sizes)
    k = max(1, min(MAX_CELLS_PER_GPU, int(resources.gpu_memory_gb // per_cell)))
    what = "cell(s)" if stacked == 1 else f"trial(s) of {stacked} stacked seeds"
    if how == "measured":
        said = (f"largest cell {largest:.1f} GiB {', '.join(sorted(sources))}, {per_cell:.1f} GiB with "
                f"{MEASURED_HEADROOM:g}× headroom")
    else:
        said = (f"largest cell {largest:.1f} GiB estimated, {per_cell:.1f} GiB with headroom and a CUDA context"
                f"{' per trial' if stacked > 1 else ''}")
    return 1.0 / k, f"gpu: auto → {k} {what} per {resources.gpu_memory_gb:g} GB GPU ({said})"


def repack(suite, measured) -> None:
    """``gpu: auto`` again, where the suite asked for it, with the sizes ``harness bench`` measured (in place);
    ``measured()`` gives them (read only for such a suite)."""
    resources = suite.spec.resources
    if resources.packing and (sizes := measured()):
        resources.gpu, packing = auto_gpu_share(suite.plan, resources, sizes)
        object.__setattr__(resources, "packing", packing)
