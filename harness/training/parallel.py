"""One cell's step spread over several forward/backward passes: data-parallel workers and gradient accumulation.

A global batch (the recipe's ``batch_size``) is cut into ``world × accumulation`` contiguous parts; worker ``r``
trains on parts ``r·a … r·a + a − 1``, one pass each.  Every optimizer the method owns is wrapped so that the
method's own ``train_step`` (one joint update, peers one after another, alternating adversarial updates) runs
unchanged: ``zero_grad`` clears only before the first pass, ``step`` waits for the last, then averages the gradients
over the passes and the workers (one all-reduce per optimizer and step, flattened) before the real update.
So two workers with one pass each compute the same update as one process with two accumulated passes, and both
equal the big batch where nothing depends on how the batch is cut (batch norm statistics do: they are per part,
as in DDP without SyncBN).  Per-sample state a method keeps (memory banks, temporal accumulators) is written from
the whole global batch on every worker through :meth:`Replicas.gather`.  Batch-norm running statistics take one
update per step from the mean of the parts' statistics, in both ways (:class:`OneUpdateOfRunningStats`).

We do not launch processes here: Ray Train does, and sets up the process group (``harness.scheduling.trainable``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from harness.data.batches import Batch, Shard


@dataclass(frozen=True)
class Replicas(Shard):
    """Where this process sits: its rank among ``world`` data-parallel workers, and passes per update (the cut of a
    global batch into parts is :class:`~harness.data.batches.Shard`'s; the inputs load only this worker's rows)."""

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def passes(self, batch: Batch) -> list[Batch]:
        """This worker's parts of a global batch, in order (sizes differ by one image at most); ``batch`` holds
        this worker's rows (as the inputs give them) or the whole global batch.  A batch too small to give every
        part 2 images (batch norm) is skipped by every worker alike: none, as the engine skips a last batch of one
        image."""
        if self.parts == 1:
            return [batch]
        n = batch.global_size
        if not self.trains(n):
            return []
        if len(batch) == n:
            mine = self.rows(n)
            batch = Batch([v[mine] for v in batch.views], batch.y[mine], batch.index[mine], total=n)
        sizes = self.part_sizes(n)
        pieces = [torch.split(t, sizes) for t in (batch.y, batch.index)]
        views = [torch.split(v, sizes) for v in batch.views]
        return [Batch(views=[v[i] for v in views], y=pieces[0][i], index=pieces[1][i], total=n)
                for i in range(len(sizes))]

    def gather(self, tensor: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
        """``tensor`` (rows of this worker's part) from every worker, concatenated in rank order (detached).
        ``sizes``: every worker's rows, where the caller knows them (the parts of a pass: one all-gather, no host
        sync); otherwise they are exchanged first (one more all-gather and one host sync)."""
        if not self.distributed:
            return tensor.detach()
        tensor = tensor.detach().contiguous()
        if sizes is not None and sizes[self.rank] != len(tensor):
            raise ValueError(f"gather takes rows of this worker's part of the batch ({sizes[self.rank]} rows), got "
                             f"a tensor of {len(tensor)}")
        if sizes is None:
            counts = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(self.world)]
            dist.all_gather(counts, torch.tensor([len(tensor)], device=tensor.device))
            sizes = torch.cat(counts).tolist()
        padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        padded[: len(tensor)] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    def mean(self, values: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        """Each value averaged over the workers (one all-reduce; float64 so that epoch sums lose nothing)."""
        if not self.distributed or not values:
            return values
        names = sorted(values)
        stacked = torch.stack([torch.as_tensor(values[k], dtype=torch.float64, device=device) for k in names])
        dist.all_reduce(stacked)
        return dict(zip(names, stacked / self.world))

    def sum_counts(self, counts: dict[str, torch.Tensor], n: int, device: torch.device) -> tuple[dict, int]:
        """Per-name count tensors (all of one shape) and ``n`` summed over the workers.  A worker may lack a name
        (it had no batch where the name appeared): the union of the names is summed, a missing one as zeros."""
        if not self.distributed:
            return counts, n
        seen = [None] * self.world
        dist.all_gather_object(seen, sorted(counts))
        names = sorted({k for keys in seen for k in keys})
        shape = next((c.shape for c in counts.values()), None) or (2,)
        zero = torch.zeros(shape, dtype=torch.long, device=device)
        totals = torch.stack([counts.get(k, zero).to(device, torch.long) for k in names] +
                             [torch.full(shape, n, dtype=torch.long, device=device)])
        dist.all_reduce(totals)
        return dict(zip(names, totals[:-1])), int(totals[-1].flatten()[0])

    def average_buffers(self, module: torch.nn.Module) -> None:
        """Batch-norm running statistics averaged over the workers (each saw its own parts), before evaluation and
        checkpoints, so that every worker evaluates and saves the same networks."""
        if not self.distributed:
            return
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                for buf in (m.running_mean, m.running_var):
                    if buf is not None:
                        dist.all_reduce(buf)
                        buf /= self.world

    def broadcast(self, module: torch.nn.Module) -> None:
        """Every parameter and buffer of ``module`` as rank 0 has it (the start of a run, after a restore)."""
        if not self.distributed:
            return
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


class OneUpdateOfRunningStats:
    """Batch-norm running statistics updated once per step with the mean of its passes' statistics, in one process
    accumulating passes as on data-parallel workers (each updates once; :meth:`Replicas.average_buffers` then
    averages them, which, the update being linear, is the same).  Each pass starts from the step's statistics."""

    def __init__(self, module: torch.nn.Module):
        self.norms = [m for m in module.modules()
                      if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]

    def _buffers(self, m) -> list[torch.Tensor]:
        return [b for b in (m.running_mean, m.running_var) if b is not None]

    def begin(self) -> None:
        self.start = [([b.clone() for b in self._buffers(m)], m.num_batches_tracked.clone()) for m in self.norms]
        self.sums = [[torch.zeros_like(b) for b in self._buffers(m)] for m in self.norms]

    def after_pass(self) -> None:
        for m, (start, count), sums in zip(self.norms, self.start, self.sums):
            for b, b0, total in zip(self._buffers(m), start, sums):
                total += b
                b.copy_(b0)
            m.num_batches_tracked.copy_(count)

    def end(self, passes: int) -> None:
        for m, (_, count), sums in zip(self.norms, self.start, self.sums):
            for b, total in zip(self._buffers(m), sums):
                b.copy_(total / passes)
            m.num_batches_tracked.copy_(count + 1)


def settle_scale(scaler, optimizers) -> None:
    """fp16's ``scaler.update()`` where an optimizer stepped through the scaler since its last update: at the end of
    every training step, and before a backward pass that follows an update within one step (peers or
    discriminators updated one after another), whose loss must be scaled by the settled scale; a second
    ``scaler.step`` of one optimizer before ``update()`` raises."""
    stepped = [o for o in optimizers if getattr(o, "scaled_steps", 0)]
    if scaler is not None and stepped:
        scaler.update()
        for optimizer in stepped:
            optimizer.scaled_steps = 0


class ReducedLosses(torch.nn.Module):
    """A method's ``losses`` as the forward of a module that holds its trainable modules, so that torch's
    ``DistributedDataParallel`` can wrap it (:func:`reduce_gradients`): its bucketed all-reduce of the gradients
    then runs during the backward pass, overlapping it.  ``used`` says whether a step went through it."""

    def __init__(self, method):
        super().__init__()
        self.trained = method.modules
        self._method = (method,)  # not a submodule: its modules are already ``trained``
        self.used = False

    def forward(self, batch: Batch, step) -> dict[str, torch.Tensor]:
        self.used = True
        return self._method[0].losses(batch, step)


def reduce_gradients(method) -> torch.nn.parallel.DistributedDataParallel:
    """The method's ``losses`` through torch's ``DistributedDataParallel``, for a method whose step is one joint
    update after every forward pass (``Method.accumulates``), where DDP can express it.  Parameters unused on some
    worker get zeros there and those unused on all keep no gradient (``find_unused_parameters``: methods switch
    terms on and off); buffers are not synchronised at each forward (batch-norm statistics are averaged where the
    engine says, :meth:`Replicas.average_buffers`)."""
    return torch.nn.parallel.DistributedDataParallel(ReducedLosses(method), find_unused_parameters=True,
                                                     forward_sync_buffers=False)


class SharedStep:
    """Wraps one of a method's optimizers: an update waits for the last pass and uses the mean gradient of every
    pass of every worker, through fp16's gradient scaler where there is one.  Everything else (param_groups,
    state_dict, schedulers) is the wrapped optimizer's.

    Where the step went through DDP (``reducer.used``), the workers' gradients arrive averaged, reduced while the
    backward pass ran, and only the passes are averaged here.  The hand-written all-reduce after the backward pass
    remains for the update orders DDP cannot express, several backward passes and updates within one step: DML and
    AMLN updating their peers one after another (``update: sequential``; AMLN's Algorithm 1), and the alternating
    discriminator/generator updates of ACKD and AFD."""

    def __init__(self, optimizer: torch.optim.Optimizer, replicas: Replicas, scaler=None,
                 reducer: ReducedLosses | None = None):
        self.optimizer, self.replicas, self.scaler, self.reducer = optimizer, replicas, scaler, reducer
        self.pass_index, self.passes = 0, 1
        self.scaled_steps = 0  # updates through the scaler since its last update()

    def __getattr__(self, name):
        return getattr(self.optimizer, name)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self.pass_index == 0:
            self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        if self.pass_index < self.passes - 1:
            return None
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        reduced = self.reducer is not None and self.reducer.used  # DDP averaged over the workers already
        self._average(params, divisor=self.passes, over_workers=not reduced)
        if self.scaler is not None:  # fp16: unscale, and skip the update where a gradient overflowed
            self.scaled_steps += 1
            return self.scaler.step(self.optimizer)
        return self.optimizer.step(closure)

    def _average(self, params: list[torch.Tensor], divisor: int, over_workers: bool = True) -> None:
        """Gradients ← their sum over workers / (workers × this worker's passes); a parameter with a gradient on
        some worker gets one everywhere (zeros where it had none), one with none anywhere keeps None, as the
        optimizer would skip it in one process.  Over the workers: one all-reduce of every gradient and, after
        them, of a flag per parameter, then one host sync, to read which parameters have a gradient anywhere
        (the host decides which ones the optimizer updates)."""
        if self.replicas.distributed and over_workers and params:
            device = params[0].device
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            flags = torch.tensor([float(p.grad is not None) for p in params], dtype=grads[0].dtype)
            flat = torch.cat([*(g.reshape(-1) for g in grads), flags.to(device, non_blocking=True)])
            dist.all_reduce(flat)
            live = flat[-len(params):].tolist()  # the one host sync
            flat = flat[: -len(params)] / (self.replicas.world * divisor)
            offset = 0
            for p, grad, has in zip(params, grads, live):
                n = p.numel()
                p.grad = grad.copy_(flat[offset: offset + n].view_as(p)) if has else None
                offset += n
        elif divisor > 1:
            for p in params:
                if p.grad is not None:
                    p.grad /= divisor
