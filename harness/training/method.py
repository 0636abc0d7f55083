"""The contract between the training engine and a distillation method.

A method owns everything that differs between methods: which modules exist (peers, a shared trunk with
branches, discriminators, fusion modules, a frozen teacher), which optimizers update them, how one training
step runs (one joint update, peers one after the other, alternating adversarial updates), what state lives
across epochs (per-sample memories, ensemble weights), and which outputs are evaluated.  The engine owns the
loop, the data, the schedules, evaluation, checkpoints and reporting, and never asks which method it runs.

Adding a method means adding one file under ``methods/`` that subclasses :class:`Method` and registers it
with ``@register_method("name")``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterable, Iterator

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from harness.data.batches import Batch
from harness.models.stacked import StackedPeers, StackingError, StackSlice
from harness.training.parallel import settle_scale
from harness.registry import Registry


class HParams(BaseModel):
    """A method's hyper-parameters: typed, with the defaults the method's paper or official code uses.

    A field added after cells were hashed is declared with :func:`added_option`: at its default it is left out of
    the cell (:meth:`cell_dict`), so that a new option never changes the hash of a cell that does not use it."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def cell_dict(self) -> dict:
        """The hyper-parameters as a cell holds and hashes them: every field, but added options at their default."""
        out = self.model_dump(mode="json")
        for name, info in type(self).model_fields.items():
            if (info.json_schema_extra or {}).get("added_option") and out.get(name) == info.default:
                del out[name]
        return out


def added_option(default, **constraints):
    """A hyper-parameter field added after cells existed (see :meth:`HParams.cell_dict`)."""
    from pydantic import Field

    return Field(default, json_schema_extra={"added_option": True}, **constraints)


@dataclass
class MethodContext:
    """What a method may know about the cell it trains."""

    group: tuple[str, ...]
    num_classes: int
    in_chans: int
    image_size: tuple[int, int]
    num_train: int
    epochs: int
    steps_per_epoch: int
    device: torch.device
    create_model: Callable[[str], nn.Module]
    validation: Callable[[], Iterator[Batch]] | None = None  # held-out batches, for methods that ask
    load_stage: Callable[[str], list[nn.Module]] | None = None  # a stage's trained networks, frozen, on device
    # the state dicts of a stage's other saved modules (``Method.saved_modules``), by key
    load_stage_modules: Callable[[str], dict[str, dict]] | None = None
    batch_size: int = 0  # the recipe's training batch size (0: not known, as in unit tests)
    # rows of this worker's part of the batch from every data-parallel worker (detached): a method that keeps
    # per-sample state (a memory bank) writes the gathered rows, so every worker holds the whole table
    gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t.detach()


@dataclass
class OptimGroup:
    """Parameters updated by one optimizer; ``optimizer`` None means the recipe's optimizer and schedule.

    ``params`` may be parameter groups (dicts); a group with a ``model`` key (a timm name) is that network's and
    gets the recipe's learning rate for it (``Recipe.peer_lr``); a group with a ``follows`` key (a timm name) holds
    modules that belong to that network (a student's auxiliary heads, a gate) and gets the same rate; a ``name``
    key labels a group in the per-epoch record of learning rates (``lr/<optimizer>/<name>``).
    """

    params: Iterable
    optimizer: dict | None = None
    follow_schedule: bool = True


@dataclass
class Step:
    """Where a training step sits: 0-based epoch, step within the epoch, and the run's length."""

    epoch: int
    step: int
    epochs: int
    steps_per_epoch: int
    extras: dict = field(default_factory=dict)
    global_batch: int = 0  # images in the whole batch this step belongs to (all its passes); 0: not known

    @property
    def progress(self) -> float:
        """Fraction of training done, in epochs (used by ramp-ups and warm-ups)."""
        return self.epoch + self.step / max(self.steps_per_epoch, 1)


class Method:
    """K peers created by name from the cell's group, trained on the sum of the terms :meth:`losses` returns."""

    name: ClassVar[str] = ""
    # how its papers print it in a table ("AT+KD", "SemCKD"); by default the registry name in capitals, "_" as "+"
    display: ClassVar[str] = ""
    HParams: ClassVar[type[HParams]] = HParams
    min_peers: ClassVar[int] = 1
    max_peers: ClassVar[int | None] = None
    # every network learns from the labels only, so each can be trained as a cell of its own (``alone: true`` in a
    # suite): one number per network, shared by every table that prints the same network under the same recipe
    trains_alone: ClassVar[bool] = False
    # the method reaches its peers' training forward only through :meth:`forward_peers` (one call for all K), so
    # the peers can be trained as one grouped network (``resources: {stack_peers: true}``, harness/models/stacked.py)
    stackable: ClassVar[bool] = False
    # hyper-parameters (beside the defaults) with which the method trains a tiny cell of ResNet-8s on a few images
    # per class, where its defaults cannot (a teacher assistant to name, a validation split to shrink): the cells
    # of ``harness doctor`` and of tests/test_every_method.py
    check_hparams: ClassVar[dict] = {}

    def __init__(self, hp: HParams, ctx: MethodContext):
        self.hp = hp
        self.ctx = ctx
        self.modules = self.build()
        self.optimizers: dict[str, torch.optim.Optimizer] = {}  # filled by the engine from optim_groups()
        self.grad_scaler: torch.amp.GradScaler | None = None  # set by the engine for fp16 training
        # set by the engine on data-parallel workers: ``losses`` through torch's DDP (its gradients reduced during
        # the backward pass), for a step that is one joint update
        self.reduced_losses: Callable[[Batch, Step], dict[str, torch.Tensor]] | None = None

    # --- structure -------------------------------------------------------------------------------------
    def build(self) -> nn.ModuleDict:
        """Every trainable module of the method; ``peers`` holds the deployed networks."""
        return nn.ModuleDict({"peers": nn.ModuleList(self.ctx.create_model(name) for name in self.ctx.group)})

    @property
    def peers(self) -> nn.ModuleList | StackedPeers:
        return self.modules["peers"]

    @property
    def stacked(self) -> bool:
        """The peers are one grouped network: this cell's own, or a slice of one shared by several seeds."""
        return isinstance(self.modules["peers"], (StackedPeers, StackSlice))

    @classmethod
    def stack_error(cls, hp: HParams, group: tuple[str, ...]) -> str | None:
        """Why this method's peers cannot be trained as one grouped network; None if they can."""
        if not cls.stackable:
            return f"method {cls.name} reaches its peers one at a time (it is not stackable)"
        if not cls.accumulates(hp):
            return f"method {cls.name} updates its peers one after another with these settings"
        if len(set(group)) != 1 or len(group) < 2:
            return f"the group {'+'.join(group)} is not two or more networks of one architecture"
        return None

    @classmethod
    def seed_stack_error(cls, hp: HParams, group: tuple[str, ...]) -> str | None:
        """Why several seeds of this cell cannot be trained as one grouped network (``resources.stack_seeds``);
        None if they can.  Unlike :meth:`stack_error`, one network per cell is enough: the seeds make the stack."""
        if not cls.stackable:
            return f"method {cls.name} reaches its peers one at a time (it is not stackable)"
        if not cls.accumulates(hp):
            return f"method {cls.name} updates its peers one after another with these settings"
        if len(set(group)) != 1:
            return f"the group {'+'.join(group)} mixes architectures; only networks of one architecture stack"
        return None

    def stack_peers(self) -> None:
        """Replace the K peers by one :class:`StackedPeers` (before the optimizers are built); the state dict
        keeps the K networks' keys, so checkpoints and weights read the same either way."""
        error = self.stack_error(self.hp, self.ctx.group)
        if error:
            raise StackingError(f"stack_peers: {error}")
        self.modules["peers"] = StackedPeers(list(self.peers), name="+".join(self.ctx.group))

    def forward_peers(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every peer's logits, peer k on ``views[k]``: one pass of the grouped network where the peers are stacked."""
        if self.stacked:
            return self.peers(views)
        return [peer(x) for peer, x in zip(self.peers, views)]

    def training_views(self, batch: Batch) -> list[torch.Tensor]:
        """The input of every peer in a training step, in the order of :meth:`forward_peers`."""
        return [batch.view(k) for k in range(len(self.peers))]

    def peer_logits(self, batch: Batch) -> list[torch.Tensor]:
        """Every peer's logits on its view of the batch (:meth:`forward_peers`)."""
        return self.forward_peers(self.training_views(batch))

    def optim_groups(self) -> dict[str, OptimGroup]:
        """One optimizer for everything: a parameter group per peer, one more for any extra modules."""
        if self.stacked:  # one group: the peers share an architecture, so their learning rate
            groups = [{"params": list(self.peers.parameters()), "model": self.ctx.group[0]}]
        else:
            groups = [{"params": list(peer.parameters()), "model": name}
                      for name, peer in zip(self.ctx.group, self.peers)]
        extra = [p for key, module in self.modules.items() if key != "peers" for p in module.parameters()]
        return {"peers": OptimGroup(groups + ([self.extra_group(extra)] if extra else []))}

    def extra_owner(self) -> str | None:
        """The network (timm name) whose learning rate the method's extra modules follow: the group's only
        architecture where it has one; None (the recipe's base rate) where peers of several architectures share
        them.  A method whose extra modules belong to one network (a student) overrides this."""
        names = set(self.ctx.group)
        return next(iter(names)) if len(names) == 1 else None

    def extra_group(self, params: list, name: str = "extra") -> dict:
        """A parameter group of extra modules that follows :meth:`extra_owner`'s learning rate."""
        owner = self.extra_owner()
        return {"params": params, "name": name, **({"follows": owner} if owner else {})}

    def deployed_parameters(self) -> int:
        """Parameters of the networks that are kept after training (extra modules are reported apart)."""
        return sum(p.numel() for p in self.peers.parameters())

    def parameter_counts(self) -> dict:
        """Parameters by role, since only the deployed networks are kept after training.

        ``deployed``: the networks kept (a shared trunk counted once); ``peers``: every parameter of the
        ``peers`` modules (all branches of a multi-branch network); ``added``: each other module (discriminators,
        connectors, gates, fusion modules, embedding heads) by its key; ``added_buffers_bytes``: the buffers of
        those modules (memory banks); ``frozen``: modules with no trainable parameter (a teacher).
        """
        peer_params = {id(p): p.numel() for p in self.peers.parameters()}
        added, frozen, buffers = {}, {}, {}
        for key, module in self.modules.items():
            if key == "peers":
                continue
            own = [p for p in module.parameters() if id(p) not in peer_params]
            if own and not any(p.requires_grad for p in own):  # a frozen teacher from an earlier stage
                frozen[key] = sum(p.numel() for p in own)
                continue
            added[key] = sum(p.numel() for p in own)
            buffers[key] = sum(b.numel() * b.element_size() for b in module.buffers())
        return {"deployed": self.deployed_parameters(), "peers": sum(peer_params.values()), "added": added,
                "added_total": sum(added.values()), "added_buffers_bytes": buffers, "frozen": frozen}

    def deployed_networks(self) -> list[tuple[str, nn.Module]]:
        """(timm name, network) of what is kept after training; saved so that later stages can load them."""
        return list(zip(self.ctx.group, self.peers.unstack() if self.stacked else self.peers))

    def saved_modules(self) -> dict[str, nn.Module]:
        """Modules besides the deployed networks that later stages load (FT's paraphraser); none by default."""
        return {}

    @classmethod
    def stages(cls, hp: HParams, cell) -> dict:
        """Named :class:`harness.training.stages.Stage` s to finish before this cell starts (a teacher); none by default.

        The method gets their networks through ``ctx.load_stage(name)``.
        """
        return {}

    @classmethod
    def display_name(cls) -> str:
        return cls.display or cls.name.upper().replace("_", "+")

    @classmethod
    def report_notes(cls, hp: HParams, cell) -> list[str]:
        """What a report of ``cell`` must say because this method's setting differs from its paper's text (a
        deliberate deviation, in words); none by default.  Each is stated once, here, and reaches every report."""
        return []

    @classmethod
    def analysis_roles(cls, hp: HParams, cell) -> dict:
        """Stages whose networks ``harness analyze`` compares with this cell's network, by role (``teacher``,
        ``proxy``); none by default, so the cell is not analysed."""
        return {}

    @classmethod
    def group_error(cls, hp: HParams, group: tuple[str, ...]) -> str | None:
        """Why this method cannot train ``group`` with ``hp`` (checked by ``harness validate``); None if it can.

        The number of networks is checked apart, against ``min_peers``/``max_peers``.
        """
        return None

    @classmethod
    def per_peer_views(cls, hp: HParams) -> bool:
        """True when every peer must see its own random view of the batch's images (KDCL's ICL).

        A suite can also ask for per-peer views for any method (``dataset.views: per_peer``).
        """
        return False

    @classmethod
    def views_of(cls, hp: HParams, cell) -> int:
        """Random views of each batch's images the cell's inputs draw: one per peer where the method or the suite
        (``dataset.views: per_peer``) asks for it, else one shared by every peer."""
        return len(cell.group) if cls.per_peer_views(hp) or cell.dataset.get("views") == "per_peer" else 1

    @classmethod
    def accumulates(cls, hp: HParams) -> bool:
        """True when gradients of several passes may add up before one update (``resources.grad_accumulation``):
        a step that updates once, after every forward pass.  A method whose step runs a forward pass after an
        update (peers one after another, alternating adversarial updates) overrides ``train_step`` and is
        refused gradient accumulation unless it says otherwise; data-parallel workers suit every method."""
        return cls.train_step is Method.train_step

    @classmethod
    def held_out_per_class(cls, hp: HParams) -> int:
        """Training images per class to hold out as a validation split (KDCL-General); 0 = none.

        The split is drawn with the cell's seed, removed from training, and served un-augmented by
        ``ctx.validation()``.
        """
        return 0

    # --- training --------------------------------------------------------------------------------------
    def losses(self, batch: Batch, step: Step) -> dict[str, torch.Tensor]:
        """Named scalar loss terms; the step minimises their sum."""
        raise NotImplementedError

    def train_step(self, batch: Batch, step: Step) -> dict[str, torch.Tensor]:
        """One joint update of every optimizer on the summed loss; override for other update orders."""
        terms = (self.losses if self.reduced_losses is None else self.reduced_losses)(batch, step)
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        self.backward(torch.stack(list(terms.values())).sum())
        for optimizer in self.optimizers.values():
            optimizer.step()
        return {name: value.detach() for name, value in terms.items()}

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, outside autocast (PyTorch's guidance: the backward ops follow their forward ops'
        dtypes), through the engine's gradient scaler where the recipe trains in fp16, its scale settled first if an
        optimizer already stepped in this step; a method that writes its own ``train_step`` calls this rather than
        ``loss.backward()``."""
        with torch.autocast(loss.device.type, enabled=False):
            if self.grad_scaler is None:
                loss.backward()
                return
            settle_scale(self.grad_scaler, self.optimizers.values())
            self.grad_scaler.scale(loss).backward()

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for per-epoch state (ramp-ups, weights recomputed on a validation split)."""

    def epoch_metrics(self) -> dict[str, float]:
        """Numbers of the method's own state to keep in the epoch's history (ensemble weights); none by default."""
        return {}

    # --- evaluation ------------------------------------------------------------------------------------
    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every evaluated output: ``net1..netK`` for the peers, other names for extra outputs."""
        return {f"net{i + 1}": z for i, z in enumerate(self.forward_peers([x] * len(self.peers)))}

    def peer_outputs(self) -> list[str]:
        """Outputs averaged (as probabilities) into the ensemble ``ens``."""
        return [f"net{i + 1}" for i in range(len(self.ctx.group))]

    # --- state beyond modules and optimizers -----------------------------------------------------------
    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore what :meth:`extra_state` saved."""


METHODS: Registry[type[Method]] = Registry("method")


def register_method(name: str):
    """Class decorator: register a :class:`Method` subclass under ``name``."""

    def add(cls: type[Method]) -> type[Method]:
        cls.name = name
        return METHODS.register(name)(cls)

    return add


def load_methods() -> Registry[type[Method]]:
    """Import the ``methods`` package (each module registers itself) and every installed plug-in (entry points of
    methods, models and datasets), and return the registry."""
    import methods  # noqa: F401
    from harness.registry import ENTRY_POINT_GROUPS, load_entry_points

    for kind in ENTRY_POINT_GROUPS:
        load_entry_points(kind)
    return METHODS
