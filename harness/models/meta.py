"""Networks on the meta device, where only shapes exist: what ``harness validate`` builds to check that a method can
train a cell's networks (``harness.suite.fit``) and runs to estimate a cell's memory (``harness.costs.memory``).

Nothing is allocated there, but every operation without a C++ meta kernel runs through PyTorch's Python
decompositions, op by op.  Two of them were most of the time of checking a suite, and neither changes a shape or
what autograd keeps, so :class:`ShapesOnly` takes them out of the way on meta tensors:

- weight initialisation (``normal_``, ``trunc_normal_``, ...): there are no values to fill;
- batch norm (about 7 ms a layer): replaced by ``x * weight`` per channel.  Autograd keeps the same
  batch-sized tensor, the input (``tests/test_capacity.py`` checks the figures against a real CPU forward on one
  network of each family of the zoo); the per-channel statistics it keeps besides do not grow with the batch.

Copies of a meta network (a method splits, wraps and clones networks) are unpickled from one pickle
(:class:`Template`, :func:`clone`): about ten times faster than ``copy.deepcopy`` for the same independent copy."""
from __future__ import annotations

import copy
import pickle

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


class ShapesOnly(TorchFunctionMode):
    """Inside it, on meta tensors: initialisation is skipped and batch norm is a per-channel scale."""

    FILLS = frozenset({torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.fill_, torch.Tensor.zero_,
                       torch.nn.init.trunc_normal_, torch.nn.init.orthogonal_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FILLS and args and getattr(args[0], "is_meta", False):
            return args[0]
        if func is F.batch_norm and args and getattr(args[0], "is_meta", False):
            return _batch_norm_shapes(*args, **kwargs)
        return func(*args, **kwargs)


def _batch_norm_shapes(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                       eps=1e-5):
    if training:
        F._verify_batch_size(x.size())  # the same error as batch norm's for a single value per channel
    if weight is None:  # batch norm without affine parameters still keeps its input for the input's gradient
        weight = torch.ones(x.shape[1], dtype=x.dtype, device=x.device,
                            requires_grad=torch.is_grad_enabled() and x.requires_grad)
    return x * weight.view([1, -1] + [1] * (x.dim() - 2))  # the bias would add an operation and change nothing


class Template:
    """Makes independent copies of a network: unpickled from one pickle where every tensor is on the meta device (no
    data to copy: about ten times faster than ``copy.deepcopy``), deep-copied otherwise or where something in it
    cannot be pickled (a local function as a hook)."""

    def __init__(self, module: nn.Module):
        self.module, self.pickled = module, None
        tensors = [*module.parameters(), *module.buffers()]
        if tensors and all(t.is_meta for t in tensors):
            try:
                with torch._C.DisableTorchFunction():  # a mode active around the copy would see every tensor
                    self.pickled = pickle.dumps(module)
            except (pickle.PicklingError, TypeError, AttributeError):
                pass

    def copy(self) -> nn.Module:
        if self.pickled is None:
            return copy.deepcopy(self.module)
        with torch._C.DisableTorchFunction():
            return pickle.loads(self.pickled)


def clone(module: nn.Module) -> nn.Module:
    """An independent copy of ``module`` (see :class:`Template`)."""
    return Template(module).copy()
