"""K networks of one architecture trained as one grouped network (Packed-Ensembles' idea, exact here).

Every convolution becomes one convolution with ``groups × K`` over the K networks' channels side by side, every
batch norm one over ``K × C`` channels (statistics per channel, so exactly per network), every linear layer one
batched matrix product; element-wise layers (activations, pooling, residual sums) need nothing.  Network k owns
channel block k of every map, so one kernel launch serves K networks and the arithmetic is that of K separate
networks up to float rounding.

A network whose forward mixes channels (a channel shuffle, a concatenation, a reshape of channels into space)
cannot be stacked that way: :func:`stack` runs the stacked and the separate networks on one random batch and
refuses, in one line, where they disagree.  The stacked module's ``state_dict`` has the keys and shapes of a
``ModuleList`` of the K networks (``0.conv1.weight``, ...), so checkpoints and saved weights read the same whether
a run stacked its peers or not; :meth:`StackedPeers.unstack` gives K ordinary timm models.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from harness.models.adapter import Features, extract

TOLERANCE = 1e-4  # relative, of the build-time check of the stacked against the separate networks


class StackingError(ValueError):
    """The networks cannot be stacked (different architectures, a layer that mixes channels)."""


class GroupedLinear(nn.Module):
    """K linear layers applied to K blocks of the last dimension; weight (K·out, in) as K stacked weights."""

    def __init__(self, k: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.k, self.in_features, self.out_features = k, in_features, out_features
        self.weight = nn.Parameter(torch.empty(k * out_features, in_features))
        self.bias = nn.Parameter(torch.empty(k * out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x = x.reshape(-1, self.k, self.in_features).transpose(0, 1)  # (K, N, in)
        y = torch.bmm(x, self.weight.view(self.k, self.out_features, self.in_features).transpose(1, 2))
        if self.bias is not None:
            y = y + self.bias.view(self.k, 1, self.out_features)
        return y.transpose(0, 1).reshape(*lead, self.k * self.out_features)

    def extra_repr(self) -> str:
        return f"k={self.k}, in_features={self.in_features}, out_features={self.out_features}"


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach() for t in tensors], 0)


def _stack_conv(convs: list[nn.Conv2d]) -> nn.Conv2d:
    c, k = convs[0], len(convs)
    out = nn.Conv2d(c.in_channels * k, c.out_channels * k, c.kernel_size, c.stride, c.padding, c.dilation,
                    c.groups * k, c.bias is not None, c.padding_mode)
    with torch.no_grad():
        out.weight.copy_(_cat([m.weight for m in convs]))
        if c.bias is not None:
            out.bias.copy_(_cat([m.bias for m in convs]))
    return out


def _stack_norm(norms: list[_BatchNorm]) -> _BatchNorm:
    n, k = norms[0], len(norms)
    out = type(n)(n.num_features * k, n.eps, n.momentum, n.affine, n.track_running_stats)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(n, name) is not None:
                getattr(out, name).copy_(_cat([getattr(m, name) for m in norms]))
        if n.track_running_stats:
            out.num_batches_tracked.copy_(n.num_batches_tracked)
    return out


def _stack_linear(linears: list[nn.Linear]) -> GroupedLinear:
    n = linears[0]
    out = GroupedLinear(len(linears), n.in_features, n.out_features, n.bias is not None)
    with torch.no_grad():
        out.weight.copy_(_cat([m.weight for m in linears]))
        if n.bias is not None:
            out.bias.copy_(_cat([m.bias for m in linears]))
    return out


STACKERS = {nn.Conv2d: _stack_conv, nn.BatchNorm2d: _stack_norm, nn.BatchNorm1d: _stack_norm,
            nn.Linear: _stack_linear}


def _stacked_network(models: Sequence[nn.Module], name: str) -> nn.Module:
    """A copy of ``models[0]`` whose parameterised layers each hold the K networks' layers side by side."""
    signature = [(n, type(m), tuple(p.shape for p in m.parameters(recurse=False))) for n, m in models[0].named_modules()]
    for other in models[1:]:
        if [(n, type(m), tuple(p.shape for p in m.parameters(recurse=False))) for n, m in other.named_modules()] != signature:
            raise StackingError(f"{name}: the networks differ in their layers; only identical architectures stack")
    net = copy.deepcopy(models[0])
    for path, module in list(models[0].named_modules()):
        if not path:
            continue
        stacker = STACKERS.get(type(module))
        if stacker is not None:
            net.set_submodule(path, stacker([m.get_submodule(path) for m in models]))
        elif any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
            raise StackingError(f"{name}: layer {path} ({type(module).__name__}) has weights that cannot be stacked "
                                f"(stackable: {', '.join(t.__name__ for t in STACKERS)})")
    if any(True for _ in net.parameters(recurse=False)):
        raise StackingError(f"{name}: weights outside any layer cannot be stacked")
    return net


class StackedPeers(nn.Module):
    """K peers of one architecture as one grouped network; indexable like the ``ModuleList`` it replaces.

    ``forward(views)`` takes one input per peer (the same tensor K times for a shared view) and returns the K
    peers' logits from one pass; ``peers[k](x)`` runs peer k alone (the others see ``x`` too, their outputs are
    dropped: evaluation only, K times the work); :meth:`features` splits timm's intermediates per peer.
    """

    def __init__(self, models: Sequence[nn.Module], name: str = "peers"):
        super().__init__()
        if len(models) < 2:
            raise StackingError(f"{name}: stacking needs at least 2 networks, got {len(models)}")
        self.k = len(models)
        self.net = _stacked_network(models, name)
        self._template = (copy.deepcopy(models[0]).cpu(),)  # a tuple: not a child module, not in the state dict
        self._register_state_dict_hook(StackedPeers._as_peers)
        self._register_load_state_dict_pre_hook(StackedPeers._from_peers, with_module=True)
        self._check(models, name)

    # --- forward --------------------------------------------------------------------------------------
    def _join(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(views) != self.k:
            raise ValueError(f"{self.k} stacked peers need {self.k} inputs, got {len(views)}")
        return torch.cat(list(views), 1)

    def forward(self, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return list(self.net(self._join(views)).chunk(self.k, 1))

    def features(self, views: Sequence[torch.Tensor]) -> list[Features]:
        """Each peer's :class:`Features` (logits, stage maps, last map, embedding) from one pass."""
        joint = extract(self.net, self._join(views))
        split = [t.chunk(self.k, 1) for t in (joint.logits, joint.last, joint.embedding)]
        maps = [s.chunk(self.k, 1) for s in joint.stages]
        return [Features(split[0][i], [m[i] for m in maps], split[1][i], split[2][i]) for i in range(self.k)]

    def __len__(self) -> int:
        return self.k

    def __getitem__(self, k: int) -> "PeerOfStack":
        if not -self.k <= k < self.k:
            raise IndexError(f"peer {k} of {self.k}")
        return PeerOfStack(self, k % self.k)

    def __iter__(self):
        return (self[k] for k in range(self.k))

    # --- K ordinary networks ----------------------------------------------------------------------------
    def peer_state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """Each peer's state dict, with the keys and shapes of the architecture's own."""
        out: list[dict[str, torch.Tensor]] = [{} for _ in range(self.k)]
        for key, value in self.net.state_dict().items():
            parts = value.chunk(self.k, 0) if value.dim() else [value] * self.k
            for peer, part in zip(out, parts):
                peer[key] = part
        return out

    def unstack(self, start: int = 0, count: int | None = None) -> list[nn.Module]:
        """K ordinary networks (copies) with the peers' current weights, on the stacked network's device (networks
        ``start .. start + count`` only, where given)."""
        param = next(self.net.parameters())
        networks = []
        states = self.peer_state_dicts()
        for state in states[start:start + (len(states) if count is None else count)]:
            net = copy.deepcopy(self._template[0])
            net.load_state_dict({k: v.detach().cpu() for k, v in state.items()})
            networks.append(net.to(param.device).train(self.training))
        return networks

    @staticmethod
    def _as_peers(module: "StackedPeers", state: dict, prefix: str, _metadata) -> dict:
        """State-dict hook: ``net.<key>`` (stacked) becomes ``<k>.<key>`` for every peer, as a ModuleList's."""
        stacked = [key for key in state if key.startswith(prefix + "net.")]
        for key in stacked:
            value, name = state.pop(key), key[len(prefix) + 4:]
            parts = value.chunk(module.k, 0) if value.dim() else [value] * module.k
            for k, part in enumerate(parts):
                state[f"{prefix}{k}.{name}"] = part
        return state

    @staticmethod
    def _from_peers(module: "StackedPeers", state: dict, prefix: str, *_args) -> None:
        """Load pre-hook: ``<k>.<key>`` of every peer back into the stacked ``net.<key>``."""
        for name, value in module.net.state_dict().items():
            keys = [f"{prefix}{k}.{name}" for k in range(module.k)]
            if not all(key in state for key in keys):
                continue  # left for load_state_dict to report as missing
            parts = [state.pop(key) for key in keys]
            state[f"{prefix}net.{name}"] = torch.cat(parts, 0) if value.dim() else parts[0]

    # --- the build-time check ---------------------------------------------------------------------------
    @torch.no_grad()
    def _check(self, models: Sequence[nn.Module], name: str) -> None:
        """Refuse a network whose forward mixes the peers' channels: stacked and separate outputs must agree."""
        param = next(models[0].parameters())
        in_chans = next(m for m in models[0].modules() if isinstance(m, nn.Conv2d)).in_channels
        size = getattr(models[0], "pretrained_cfg", {}).get("input_size", (in_chans, 32, 32))[1:]
        generator = torch.Generator().manual_seed(0)
        x = [torch.randn(2, in_chans, *size, generator=generator).to(param) for _ in models]
        modes = [m.training for m in models] + [self.training]
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        for m in (*models, self):
            m.eval()
        try:  # in full fp32 on a GPU too: TF32's 10-bit products differ by more than the tolerance
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            separate = [m(v) for m, v in zip(models, x)]
            stacked = self(x)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
            for m, mode in zip((*models, self), modes):
                m.train(mode)
        for k, (a, b) in enumerate(zip(separate, stacked)):
            scale = a.abs().max().clamp_min(1e-6)
            if a.shape != b.shape or (a - b).abs().max() > TOLERANCE * scale:
                raise StackingError(f"{name}: {type(models[0]).__name__} cannot be stacked: its forward mixes "
                                    f"channels across networks (a channel shuffle or concatenation?); peer {k + 1}'s "
                                    "stacked output differs from its own; train it without stack_peers")


class PeerOfStack:
    """Peer k of a :class:`StackedPeers`, callable as the network alone (for evaluation)."""

    def __init__(self, stack: StackedPeers, k: int):
        self.stack, self.k = stack, k

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.stack([x] * self.stack.k)[self.k]

    def parameters(self):
        raise TypeError("a stacked peer shares its parameters with the others; use the StackedPeers' parameters")


class StackSlice(nn.Module):
    """Networks ``start .. start + k`` of a :class:`StackedPeers` that several cells share (several seeds of one
    cell, ``resources.stack_seeds``): what one cell's method holds as its ``peers``.

    The shared network is run once per step for every cell (:class:`harness.training.bundle.SeedBundle`), which
    hands each slice its logits with :meth:`prime`; the method's next ``forward`` on the very same view tensors
    returns them.  A forward that was not primed runs the shared network in eval mode (a method's own evaluation
    pass, KDCL-General's validation split), and is refused in train mode, where it would move the other cells'
    batch-norm statistics.  The slice has no parameters of its own: the shared network is not its child module.
    """

    def __init__(self, stack: StackedPeers, start: int, k: int):
        super().__init__()
        if not 0 <= start < start + k <= stack.k:
            raise ValueError(f"networks {start}..{start + k - 1} of a stack of {stack.k}")
        self._stack = (stack,)  # a tuple: not a child module, not in this cell's state dict
        self.start, self.k = start, k
        self._primed: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    @property
    def stack(self) -> StackedPeers:
        return self._stack[0]

    def prime(self, views: Sequence[torch.Tensor], logits: Sequence[torch.Tensor]) -> None:
        """The logits this cell's networks gave on ``views`` in the shared pass; used once, by the next forward."""
        self._primed = (list(views), list(logits))

    def forward(self, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        views = list(views)
        if len(views) != self.k:
            raise ValueError(f"{self.k} stacked peers need {self.k} inputs, got {len(views)}")
        primed, self._primed = self._primed, None
        if primed is not None and len(primed[0]) == self.k and all(a is b for a, b in zip(primed[0], views)):
            return primed[1]
        return self._own_pass(self.stack, views)

    def _own_pass(self, run, views: list[torch.Tensor]) -> list:
        """``run`` (the stack's forward or features) on every network of the shared stack, in eval mode, with this
        cell's views in its slots and its first view elsewhere; this cell's part of the result."""
        if self.training:
            raise RuntimeError("a cell of stacked seeds ran its networks in training mode outside the shared pass; "
                               "its method must reach them only through one peer_logits/forward_peers call per step")
        full = [views[0]] * self.stack.k
        full[self.start:self.start + self.k] = views
        training = self.stack.training
        self.stack.eval()  # the others' batch-norm statistics stay as they are (a method's eval pass mid-epoch)
        try:
            return run(full)[self.start:self.start + self.k]
        finally:
            self.stack.train(training)

    def features(self, views: Sequence[torch.Tensor]) -> list[Features]:
        """This cell's networks' :class:`Features` (eval mode only: one pass of the whole shared stack)."""
        return self._own_pass(self.stack.features, list(views))

    def __len__(self) -> int:
        return self.k

    def __getitem__(self, k: int):
        if not -self.k <= k < self.k:
            raise IndexError(f"peer {k} of {self.k}")
        slice_ = self

        class _Peer:
            def __call__(self, x):
                return slice_([x] * slice_.k)[k % slice_.k]

        return _Peer()

    def __iter__(self):
        return (self[k] for k in range(self.k))

    def peer_state_dicts(self) -> list[dict[str, torch.Tensor]]:
        return self.stack.peer_state_dicts()[self.start:self.start + self.k]

    def unstack(self) -> list[nn.Module]:
        """This cell's k networks as ordinary (copied) networks with their current weights."""
        return [net.train(self.training) for net in self.stack.unstack(self.start, self.k)]

    def extra_repr(self) -> str:
        return f"networks {self.start}..{self.start + self.k - 1} of {self.stack.k}"
