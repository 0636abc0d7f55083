"""Test doubles shared by method tests."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from harness.data.batches import Batch
from harness.training.method import MethodContext


class FixedLogits(nn.Module):
    """A 'network' whose logits for a batch are its own parameter: losses become exact functions of it."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits, dtype=torch.float64).clone())

    def forward(self, x):
        return self.logits


def fixed_context(logits_per_peer, num_classes: int) -> MethodContext:
    queue = [FixedLogits(z) for z in logits_per_peer]
    return MethodContext(
        group=tuple(f"fixed{i}" for i in range(len(queue))), num_classes=num_classes, in_chans=1,
        image_size=(1, 1), num_train=len(logits_per_peer[0]), epochs=1, steps_per_epoch=1,
        device=torch.device("cpu"), create_model=lambda name: queue.pop(0),
    )


def fixed_batch(y) -> Batch:
    y = torch.as_tensor(y)
    return Batch(views=[torch.zeros(len(y), 1)], y=y, index=torch.arange(len(y)))


def np_softmax(z, t=1.0):
    e = np.exp(np.asarray(z, dtype=np.float64) / t - np.max(np.asarray(z) / t, axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_ce(z, y):
    p = np_softmax(z)
    return float(np.mean(-np.log(p[np.arange(len(y)), y])))


def np_kl(target_logits, student_logits, t):
    """KL(softmax(target/t) || softmax(student/t)), mean over the batch, by the textbook formula."""
    p, q = np_softmax(target_logits, t), np_softmax(student_logits, t)
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))


def train_stages(cell, results_dir) -> "Runtime":
    """Train (in this process, without Ray) every stage ``cell`` needs and save their networks under
    ``results_dir`` as the trainable does; returns the Runtime that lets a Trainer of ``cell`` find them."""
    from harness.results.store import ResultStore
    from harness.training.engine import Runtime, Trainer
    from harness.training.stages import waves

    store = ResultStore(results_dir)
    runtime = Runtime(results=str(store.root))
    for wave in waves([cell])[:-1]:
        for stage_cell in wave:
            path = store.weights_path(stage_cell.hash)
            if not path.is_file():
                trainer = Trainer(stage_cell, runtime)
                trainer.run()
                trainer.save_weights(path)
    return runtime


def random_batch(n: int = 4, size: int | tuple[int, int] = 8, seed: int = 0, chans: int = 1,
                 dtype: torch.dtype = torch.float32, index: torch.Tensor | None = None) -> Batch:
    """``n`` random images (the same for a seed), labels 0, 1, 2, 0, …, dataset indices 0..n−1 unless given."""
    size = (size, size) if isinstance(size, int) else size
    g = torch.Generator().manual_seed(seed)
    return Batch(views=[torch.randn(n, chans, *size, generator=g, dtype=dtype)], y=torch.arange(n) % 3,
                 index=torch.arange(n) if index is None else index[:n])


def param_snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed_params(module: nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    """Names of the parameters of ``module`` that differ from ``param_snapshot``'s copy."""
    return {name for name, p in module.named_parameters() if not torch.equal(p, before[name])}


def tt(a, grad: bool = False) -> torch.Tensor:
    """A float64 tensor (golden tests compare in double precision)."""
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def np_adaptive_pool(x, out_h: int, out_w: int) -> np.ndarray:
    """PyTorch's adaptive average pooling: cell i covers [floor(i·H/out), ceil((i+1)·H/out))."""
    b, c, h, w = x.shape
    out = np.zeros((b, c, out_h, out_w))
    for i in range(out_h):
        h0, h1 = (i * h) // out_h, -(-((i + 1) * h) // out_h)
        for j in range(out_w):
            w0, w1 = (j * w) // out_w, -(-((j + 1) * w) // out_w)
            out[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return out


def np_conv_same(x, w, bias=None) -> np.ndarray:
    """Cross-correlation, stride 1, zero padding (k − 1) / 2, by loops; w: (out, in, k, k), optional bias (out,)."""
    b, c, h, wd = x.shape
    k, pad = w.shape[2], (w.shape[2] - 1) // 2
    out = np.zeros((b, w.shape[0], h, wd)) + (0.0 if bias is None else bias[None, :, None, None])
    for i in range(h):
        for j in range(wd):
            for u in range(k):
                for v in range(k):
                    y, z = i + u - pad, j + v - pad
                    if 0 <= y < h and 0 <= z < wd:
                        out[:, :, i, j] += x[:, :, y, z] @ w[:, :, u, v].T
    return out


def timm_context(group, classes: int, size: int | tuple[int, int], in_chans: int = 1, num_train: int = 4,
                 epochs: int = 2, **extra) -> MethodContext:
    """The context of a method on small CPU networks created by name through timm (one step per epoch);
    ``extra``: other MethodContext fields (``load_stage`` for a teacher)."""
    import timm

    import harness.models  # noqa: F401  (registers the CIFAR networks)

    return MethodContext(
        group=tuple(group), num_classes=classes, in_chans=in_chans,
        image_size=(size, size) if isinstance(size, int) else tuple(size), num_train=num_train, epochs=epochs,
        steps_per_epoch=1, device=torch.device("cpu"),
        create_model=lambda name: timm.create_model(name, num_classes=classes, in_chans=in_chans), **extra)
