"""Data-parallel ranks on this machine without Ray: ``target(rank, world, *args)`` in ``world`` forked processes
of one process group (gloo on CPUs, NCCL with one GPU per rank).  For the doctor's multi-GPU checks, the
benchmarks and the tests; a suite's data-parallel cells go through Ray Train (``harness.scheduling.trainable``)."""
from __future__ import annotations

import datetime as dt
import os
import socket

import torch


def free_port() -> int:
    """A TCP port free on this machine now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, backend: str, target, args: tuple) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)  # first, as in a forked DataLoader worker: no OpenMP pool of the parent is used
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=dt.timedelta(seconds=60))
    try:
        target(rank, world, *args)
    finally:
        dist.destroy_process_group()


def local_ranks(target, *args, world: int = 2, backend: str = "gloo", timeout: float = 300) -> list[int | None]:
    """Run ``target(rank, world, *args)`` in ``world`` processes of one process group; their exit codes, each
    waited for up to ``timeout`` seconds (one still running then, stuck in a collective, is killed and its code
    is None).  gloo's ranks are forked: they start with everything imported (spawned, each spent 5-7 s importing
    torch and timm); NCCL's are spawned (CUDA cannot start again in a process forked from one that used it), so
    ``target`` and ``args`` must be picklable."""
    import torch.multiprocessing as mp

    context = mp.start_processes(_rank, args=(world, free_port(), backend, target, args), nprocs=world,
                                 start_method="spawn" if backend == "nccl" else "fork", join=False)
    for process in context.processes:
        process.join(timeout=timeout)
    codes = [process.exitcode for process in context.processes]
    for process in context.processes:
        if process.is_alive():
            process.kill()
    return codes
