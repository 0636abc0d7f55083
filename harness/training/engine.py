"""The training engine: trains the peers of one cell together, evaluates every output each epoch, and can
stop and resume at any epoch boundary with the same numbers as an uninterrupted run."""
from __future__ import annotations

import contextlib
import math
import os
import random
import socket
from dataclasses import dataclass
from typing import Callable

import numpy as np
import timm
import torch
import torch.nn.functional as F

import harness.models  # noqa: F401  (registers the CIFAR networks in timm)
from harness.models.adapter import compile_features
from harness.config.cell import Cell
from harness.config.recipe import Recipe, build_optimizer, build_scheduler, OptimizerSpec
from harness.data.batches import Batch
from harness.data.datasets import DatasetError, load_dataset
from harness.data.fingerprint import describe as describe_fingerprint, fingerprint
from harness.data.inputs import build_inputs
from harness.training.loop import Loop, NonFiniteLoss, UnexercisedTerm, summarize  # noqa: F401  (the engine's names)
from harness.training.method import MethodContext, OptimGroup, Step, load_methods
from harness.training.stages import stages_of, waves
from harness.training.parallel import OneUpdateOfRunningStats, Replicas, SharedStep, reduce_gradients, settle_scale


@dataclass(frozen=True)
class Runtime:
    """How a cell runs, as opposed to what it is: nothing here changes its hash."""

    device: str = "auto"
    data_root: str | None = None
    channels_last: bool = True
    eval_batch_size: int = 500
    workers: int = 0  # DataLoader workers of the standard input pipeline
    results: str = "results"  # the result store, where the weights of earlier stages (teachers) are found
    # --smoke: a loss term that was zero on every step was never exercised (a warm-up longer than the run): fail
    require_every_term: bool = False
    stack_peers: bool = False  # the peers as one grouped network (resources.stack_peers)
    compile: bool = False  # torch.compile of each network's forward (resources.compile)
    cudnn_benchmark: bool = True  # cuDNN picks its fastest kernels for the shapes it sees (as the papers' code)
    # bit-identical re-training on CUDA (resources.deterministic): deterministic cuDNN and torch algorithms,
    # cuBLAS's fixed workspace, no autotuning; an operation without a deterministic kernel raises, naming itself
    deterministic: bool = False

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def set_determinism(runtime: Runtime) -> None:
    """This process's cuDNN and torch algorithm choices for ``runtime`` (set before the first CUDA kernel: cuBLAS
    reads its workspace setting when it starts)."""
    if runtime.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = runtime.cudnn_benchmark and not runtime.deterministic
    torch.backends.cudnn.deterministic = runtime.deterministic
    torch.use_deterministic_algorithms(runtime.deterministic)


def cap_gpu_memory(device: torch.device, share: float) -> None:
    """A process given a share of a GPU (a trial with ``gpu: 0.25``, one of ``harness bench``'s packed processes)
    may allocate only that share of its memory: the caching allocator of one would otherwise keep what its
    neighbours on the GPU need, and they would fail with an out-of-memory error that is not theirs.  This process
    fails instead, if it outgrows its share."""
    if device.type == "cuda" and 0 < share < 1:
        torch.cuda.set_per_process_memory_fraction(share, device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def compile_networks(method) -> None:
    """``torch.compile`` of each peer's forward and of its feature path (``adapter.extract``, which feature methods
    reach it through), of the grouped network where stacked, in place: parameters and state-dict keys stay those of
    the eager modules, so checkpoints and optimizers are unchanged.  Static shapes: each batch size (a last, smaller
    batch; the test batches) gets its own graph once, and the full batches keep theirs (with dynamic shapes, every
    step after the first smaller batch ran a slower, shape-generic graph)."""
    for network in ([method.peers.net] if method.stacked else list(method.peers)):
        network.compile(dynamic=False)
        compile_features(network, dynamic=False)


def build_method_optimizer(recipe: Recipe, group: OptimGroup) -> torch.optim.Optimizer:
    """The optimizer of one of a method's :class:`OptimGroup` s: its own spec, or the recipe's, where a parameter
    group of a network (``model``) or of a module that belongs to one (``follows``) starts at that network's
    learning rate (``Recipe.peer_lr``), unless the method set the group's ``lr`` itself."""
    spec = OptimizerSpec.model_validate(group.optimizer) if group.optimizer else recipe.optimizer
    params = list(group.params)
    if group.optimizer is None and params and isinstance(params[0], dict):
        params = [g if "lr" in g or not (g.get("model") or g.get("follows")) else
                  {**g, "lr": recipe.peer_learning_rate(g.get("model") or g["follows"])} for g in params]
    return build_optimizer(spec, params, recipe.lr_scale())


class Trainer(Loop):
    """Builds a cell's data, method, optimizers and schedules; ``run`` trains it to the recipe's end (the one
    loop, :class:`~harness.training.loop.Loop`, with this cell its single member)."""

    def __init__(self, cell: Cell, runtime: Runtime = Runtime(), replicas: Replicas = Replicas(), data=None,
                 data_fingerprint: dict | None = None):
        """``data`` (with its ``data_fingerprint``): the cell's dataset, already loaded (several seeds of a cell
        trained together load it once)."""
        self.cell, self.runtime, self.replicas = cell, runtime, replicas
        self.recipe = Recipe.model_validate(cell.recipe)
        self.device = runtime.torch_device()
        set_determinism(runtime)
        seed_everything(cell.seed)

        data = data if data is not None else load_dataset(cell.dataset, runtime.data_root)
        self.data = data
        self.data_fingerprint = data_fingerprint or fingerprint(data)
        expected = cell.dataset.get("fingerprint")
        if expected and expected != self.data_fingerprint["checksum"]:
            raise DatasetError(f"cell {cell.describe()}: the {data.name} data on {socket.gethostname()} "
                               f"({describe_fingerprint(self.data_fingerprint)}) is not the driver's (checksum "
                               f"{expected}); give every node the same copy (--data-root)")
        method_cls = load_methods().get(cell.method)
        hparams = method_cls.HParams.model_validate(cell.hparams)
        self.views = method_cls.views_of(hparams, cell)
        self.inputs = build_inputs(
            data, self.recipe, cell.seed, cell.dataset.get("pipeline", "auto"),
            views=self.views,
            held_out_per_class=method_cls.held_out_per_class(hparams), device=self.device,
            channels_last=runtime.channels_last, eval_batch_size=runtime.eval_batch_size, workers=runtime.workers,
            shard=replicas,
        )
        self.train_batches = self.inputs.train

        ctx = MethodContext(
            group=tuple(cell.group), num_classes=data.num_classes, in_chans=data.in_chans,
            image_size=self.inputs.image_size, num_train=self.inputs.num_train, epochs=self.recipe.epochs,
            steps_per_epoch=len(self.train_batches), device=self.device, batch_size=self.recipe.batch_size,
            create_model=lambda name: timm.create_model(name, num_classes=data.num_classes, in_chans=data.in_chans),
            validation=self.inputs.validation, gather=self.gather_rows,
        )
        self.stages = stages_of(cell)  # as the plan has them (a plug-in network's teacher carries its plug-in)
        self.stage_provenance: dict[str, dict] = {}
        self._stage_modules: dict[str, dict] = {}
        ctx.load_stage = self._load_stage
        ctx.load_stage_modules = self._load_stage_modules
        self.method = method_cls(hparams, ctx)
        if runtime.stack_peers:  # before SyncBatchNorm, which then spans the stacked K × C channels
            self.method.stack_peers()
        if self.recipe.sync_bn and replicas.distributed:
            if self.device.type != "cuda":
                raise ValueError(f"cell {cell.describe()}: recipe.sync_bn needs GPUs (torch's SyncBatchNorm runs on "
                                 f"CUDA only), this worker is on {self.device}; set sync_bn: false")
            # the networks' batch-norm layers swapped in place; their parameters (and so the optimizers') are kept
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.method.modules)
        memory_format = torch.channels_last if runtime.channels_last else torch.preserve_format
        self.method.modules.to(self.device, memory_format=memory_format)
        if runtime.compile:
            compile_networks(self.method)

        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.recipe.precision)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.recipe.precision == "fp16" else None
        self.method.grad_scaler = self.scaler
        # data-parallel workers of a joint update reduce gradients during the backward pass, through torch's DDP
        self.ddp = reduce_gradients(self.method) if replicas.distributed and method_cls.accumulates(hparams) else None
        if self.ddp is not None:
            self.method.reduced_losses = self.ddp
        reducer = self.ddp.module if self.ddp is not None else None
        self.schedulers = {}
        for name, group in self.method.optim_groups().items():
            optimizer = build_method_optimizer(self.recipe, group)
            shared = replicas.parts > 1 or self.scaler is not None
            self.method.optimizers[name] = SharedStep(optimizer, replicas, self.scaler, reducer) if shared else optimizer
            if group.follow_schedule:
                self.schedulers[name] = build_scheduler(self.recipe, optimizer, len(self.train_batches))
        self._shared = [o for o in self.method.optimizers.values() if isinstance(o, SharedStep)]
        # accumulated passes update batch-norm statistics once per step, as data-parallel workers do
        self._running_stats = OneUpdateOfRunningStats(self.method.modules) if replicas.accumulation > 1 else None
        self.last_epoch = min(cell.stop_epoch or self.recipe.epochs, self.recipe.epochs)
        self.epoch = 0  # epochs completed
        self.history: list[dict] = []
        self.members, self.failed = [self], {}
        self.restarts = 0  # times training resumed from a checkpoint (a lost worker or node, an interrupted run)
        self._pass_sizes: list[int] | None = None  # every worker's rows in the pass being trained

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """A method's ``ctx.gather``: rows of this worker's part from every worker; the parts' sizes follow from
        the global batch, so no worker asks another for them."""
        return self.replicas.gather(tensor, self._pass_sizes)

    def _load_stage(self, name: str) -> list[torch.nn.Module]:
        """The networks of stage ``name`` (a teacher), frozen and on this trainer's device; recorded."""
        from harness.results.store import ResultStore
        from harness.results.weights import load_networks

        if name not in self.stages:
            raise KeyError(f"method {self.cell.method} asked for stage {name!r} but declares {list(self.stages)}")
        stage = self.stages[name]
        path = stage.checkpoint or ResultStore(self.runtime.results).weights_file(stage.cell.hash)
        networks, provenance = load_networks(path, stage.models, stage.sha256, self.data.num_classes,
                                             self.data.in_chans)
        self._stage_modules[name] = provenance.pop("modules")
        self.stage_provenance[name] = {**provenance, "stage": stage.describe()}
        return [net.to(self.device) for net in networks]

    def _load_stage_modules(self, name: str) -> dict[str, dict]:
        """State dicts (on CPU) of the extra modules stage ``name`` saved; loads the stage if not yet loaded."""
        if name not in self._stage_modules:
            self._load_stage(name)
        return self._stage_modules[name]

    def costs(self) -> dict:
        """What one training step costs, per image (``harness/costs/networks.py``), for the tables that print it.

        Measured after training: a failure here is recorded as the cost's error, never as the trial's.
        """
        from harness.training.step_cost import training_forward_macs

        n = 2  # two images: batch norm needs more than one value per channel
        x = torch.zeros(n, self.data.in_chans, *self.inputs.image_size, device=self.device)
        batch = Batch([x] * self.views, torch.arange(n, device=self.device) % self.data.num_classes,
                      torch.arange(n, device=self.device))
        steps = len(self.train_batches)
        gather, self.method.ctx.gather = self.method.ctx.gather, Replicas().gather  # one process counts
        try:
            macs = training_forward_macs(self.method, batch, Step(0, 0, self.recipe.epochs, steps))
        except Exception as e:  # noqa: BLE001 — a cost is a by-product; the trained networks matter
            return {"train_forward_macs_per_image": None, "error": f"{type(e).__name__}: {e}"}
        finally:
            self.method.ctx.gather = gather
        return {"train_forward_macs_per_image": macs}

    def member_parameters(self) -> list[dict]:
        return [self.method.parameter_counts()]

    def member_costs(self) -> list[dict]:
        return [self.costs()]

    def save_weights(self, path) -> str:
        """Save what later stages load (the deployed networks and the method's saved modules); returns the SHA-256."""
        from harness.results.weights import save_networks

        return save_networks(path, self.cell, self.method.deployed_networks(), self.data.num_classes,
                             self.data.in_chans, self.method.saved_modules())

    # --- checkpoints -------------------------------------------------------------------------------------
    def own_state(self) -> dict:
        return {
            "cell_hash": self.cell.hash,
            "history": self.history,
            "modules": self.method.modules.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.method.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "method": self.method.extra_state(),
            "stacked": self.method.stacked,  # the optimizers' state is per stacked tensor then
            **({"grad_scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
        }

    def load_own_state(self, state: dict) -> None:
        if "bundle" in state:
            raise ValueError(f"checkpoint of the stacked seeds {', '.join(state['bundle'])}, not of cell "
                             f"{self.cell.describe()} alone; it starts over")
        if state.get("cell_hash") != self.cell.hash:
            raise ValueError(f"checkpoint belongs to cell {state.get('cell_hash')}, not {self.cell.hash}")
        if bool(state.get("stacked", False)) != self.method.stacked:
            said = "stacked" if state.get("stacked") else "separate"
            raise ValueError(f"cell {self.cell.describe()}: its checkpoint was trained with {said} peers, this run "
                             f"asks for resources.stack_peers: {str(self.method.stacked).lower()}; resume with the "
                             "setting it started with")
        self.method.modules.load_state_dict(state["modules"])
        for name, optimizer in self.method.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][name])
        self.method.load_extra_state(state["method"])
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        self.history = state["history"]

    def learning_rates(self) -> dict[str, float]:
        """The learning rate of every parameter group of every optimizer, as this epoch starts: ``lr/netk`` for the
        peers (``lr`` where the peers' optimizer has none named), and ``lr/<optimizer>/<group>`` for every group."""
        groups = self.method.optimizers["peers"].param_groups
        lrs = {f"lr/net{i + 1}": g["lr"] for i, g in enumerate(g for g in groups if "model" in g)} or {"lr": groups[0]["lr"]}
        for name, optimizer in self.method.optimizers.items():
            peers = 0
            for i, g in enumerate(optimizer.param_groups):
                if "model" in g:
                    peers += 1
                label = f"net{peers}" if "model" in g else g.get("name", f"group{i + 1}")
                lrs[f"lr/{name}/{label}"] = g["lr"]
        return lrs

    # --- one epoch -----------------------------------------------------------------------------------------
    def train_epoch(self) -> dict:
        """One epoch of the loop; its metrics."""
        return self.train_members()[0]

    def start_members(self, epoch: int, alive: list[int]) -> None:
        self.method.modules.train()
        self.method.on_epoch_start(epoch)

    def step_members(self, batches: dict[int, Batch], step: Step) -> tuple[dict[int, dict[str, torch.Tensor]], int]:
        terms, n = self.train_step(batches[0], step)
        return {0: terms}, n

    def step_schedules(self) -> None:
        for scheduler in self.schedulers.values():
            scheduler.step()

    def train_step(self, batch: Batch, step: Step) -> tuple[dict[str, torch.Tensor], int]:
        """One update of the method on a global batch: this worker's passes (forward under the recipe's autocast),
        their batch-norm statistics as one update, fp16's scale settled.  Returns the terms (mean over the passes)
        and the images trained on every worker (the global batch, or 0 where it was too small to train on); the
        learning-rate schedules are the caller's.  ``harness bench`` times this very step."""
        shared = self._shared
        passes = self.replicas.passes(batch)
        if self._running_stats and passes:
            self._running_stats.begin()
        if self.ddp is not None:
            self.ddp.module.used = False
        sums: dict[str, torch.Tensor] = {}
        for k, part in enumerate(passes):
            for optimizer in shared:
                optimizer.pass_index, optimizer.passes = k, len(passes)
            self._pass_sizes = self.replicas.sizes_of_pass(batch.global_size, k)
            # DDP reduces the gradients in the last pass's backward only (the earlier passes accumulate)
            last = k == len(passes) - 1
            with self.autocast(), (self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()):
                terms = self.method.train_step(part, step)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.float() / len(passes)
            if self._running_stats:
                self._running_stats.after_pass()
        if self._running_stats and passes:
            self._running_stats.end(len(passes))
        settle_scale(self.scaler, shared)  # once per step, after every optimizer of the method stepped
        return sums, batch.global_size if passes else 0

    def check_finite(self, losses: dict[str, float], epoch: int) -> None:
        """Raise :class:`NonFiniteLoss`, naming the cell, the term and the epoch, where an epoch's mean loss is not
        finite."""
        bad = [name for name, value in losses.items() if not math.isfinite(value)]
        if bad:
            raise NonFiniteLoss(
                f"cell {self.cell.hash} ({self.cell.describe()}): {bad[0]} is {losses[bad[0]]} in epoch "
                f"{epoch + 1}; lower the learning rate or check the method's hyper-parameters"
            )

    def autocast(self):
        """The recipe's precision for the networks' forward passes (losses are computed in fp32 regardless)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def evaluate(self) -> dict:
        """Top-1/top-5 (%) of every output, the mean of the peers ('avg') and their ensemble ('ens'); data-parallel
        workers each load and test every world-th test batch and add up their counts."""
        return self.evaluate_members([0])[0]

    def count_hits(self, batch: Batch, correct: dict[str, torch.Tensor]) -> None:
        """Add one test batch's top-1 and top-5 hits of every output (and the ensemble) to ``correct``."""
        peers = self.method.peer_outputs()
        with self.autocast():
            outputs = self.method.predict(batch.x)
        probs = {k: F.softmax(outputs[k].float(), dim=1) for k in peers}
        outputs["ens"] = torch.stack([probs[k] for k in peers]).mean(0)
        for name, scores in outputs.items():
            top5 = scores.topk(min(5, scores.shape[1]), dim=1).indices
            hits = top5 == batch.y[:, None]
            counts = torch.stack([hits[:, 0].sum(), hits.any(1).sum()])
            correct[name] = correct.get(name, 0) + counts

    def accuracies(self, correct: dict[str, torch.Tensor], n: int) -> dict:
        """Top-1/top-5 (%) of every output from its hits on ``n`` test images, and the peers' mean ('avg')."""
        peers = self.method.peer_outputs()
        metrics = {}
        for name, counts in correct.items():
            metrics[f"top1/{name}"], metrics[f"top5/{name}"] = (100.0 * c / n for c in counts.tolist())
        for k in ("top1", "top5"):
            metrics[f"{k}/avg"] = sum(metrics[f"{k}/{p}"] for p in peers) / len(peers)
        return metrics

    # --- the whole run -------------------------------------------------------------------------------------
    def run(self, on_epoch: Callable[["Trainer", dict], None] | None = None) -> dict:
        """Train the remaining epochs; ``on_epoch(trainer, metrics)`` runs after each (report, checkpoint)."""
        return self.run_members(on_epoch)[self.cell.hash]

    def check_every_term(self) -> None:
        """Every loss term the method logged was non-zero in some epoch (its epoch mean is exactly 0 only when
        it was 0 on every step of it)."""
        terms = [key for key in self.history[-1] if key.startswith("loss/")]
        silent = [key[5:] for key in terms if all(h.get(key, 0.0) == 0.0 for h in self.history)]
        if silent:
            raise UnexercisedTerm(
                f"cell {self.cell.hash} ({self.cell.describe()}): loss term(s) {', '.join(silent)} were zero on every "
                f"step of its {len(self.history)} epochs, so this run did not exercise them (a warm-up or ramp-up "
                "longer than the run?)")


def train_stages_in_process(cell: Cell, results) -> None:
    """Train, in this process and without Ray, every stage ``cell`` needs (its teachers, recursively) that the
    local result store ``results`` does not hold yet, and save their networks there as a run's trial does; a
    Trainer of ``cell`` with ``Runtime(results=...)`` then finds them (``harness doctor``, the tests)."""
    from harness.results.store import ResultStore

    store = ResultStore(results)
    runtime = Runtime(results=str(store.root))
    for wave in waves([cell])[:-1]:
        for stage_cell in wave:
            path = store.weights_path(stage_cell.hash)
            if not path.is_file():
                trainer = Trainer(stage_cell, runtime)
                trainer.run()
                trainer.save_weights(path)
