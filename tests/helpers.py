"""What the tests share: tiny suites, running the CLI as a user does, fake records, and the test doubles and
independent (NumPy) formulas of the method tests.  Test modules import it as ``tests.helpers``, never each other."""
from __future__ import annotations

import functools
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from harness import doctor
from harness.data.batches import Batch
from harness.training.launch import free_port, local_ranks  # noqa: F401  (free_port: conftest's)
from harness.training.method import MethodContext

TINY_RECIPE = doctor.RECIPE  # 2 epochs at batch 32, SGD with a cosine schedule, crops and flips


def gloo_ranks(target, *args, world: int = 2, timeout: float = 300) -> list[int | None]:
    """``target(rank, world, *args)`` in ``world`` forked processes of one gloo group; their exit codes (a rank
    stuck in a collective is killed after ``timeout`` seconds: it fails the test, not the session)."""
    return local_ranks(target, *args, world=world, timeout=timeout)


def tiny_suite_dict(**overrides) -> dict:
    """A suite small enough to train in seconds: ResNet-8 pair, 20 images per class, 2 epochs."""
    suite = {
        "name": "tiny",
        "dataset": {"name": "fashion_mnist_mini", "train_per_class": 10, "test_per_class": 10},
        "groups": [["cifar_resnet8", "cifar_resnet8"]],
        "methods": ["ind", {"name": "dml", "temperature": 2}],
        "seeds": [0, 1],
        "recipe": TINY_RECIPE,
        "resources": {"cpu": 1},
    }
    suite.update(overrides)
    return suite


TINY_DATA = doctor.DATA  # 6 training and 5 test images per class of the embedded Fashion-MNIST subset


def tiny_cell(method="dml", seed=0, **recipe):
    """A DML (or ``method``) cell of a ResNet-8 pair on 6 images per class: the tiny recipe, ``recipe`` changed."""
    from harness.config.cell import Cell

    return Cell(method=method, hparams={"temperature": 2.0} if method == "dml" else {},
                group=("cifar_resnet8", "cifar_resnet8"), dataset=TINY_DATA, recipe={**TINY_RECIPE, **recipe},
                seed=seed)


HARNESS = [sys.executable, "-m", "harness.cli"]


def harness_env(address: str | None = None) -> dict:
    """The environment of a ``harness`` subprocess: it joins the Ray instance at ``address`` (through $RAY_ADDRESS,
    as a Ray job does), or starts its own local instance when ``address`` is None."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    if address:
        env["RAY_ADDRESS"] = address
    return env


def harness_run(suite, results, reports, *extra, address: str | None = None, **popen) -> subprocess.Popen:
    """``harness run SUITE`` as a user types it, its output merged into ``stdout``.  Tests pass the address of the
    session's shared Ray instance (the ``ray_address`` fixture); those whose subject is a run's own Ray start and
    stop (a killed driver and its orphans, Ctrl-C) pass none, and the run starts its own local instance."""
    cmd = HARNESS + ["run", str(suite), "--results", str(results), "--reports", str(reports), "--no-dashboard",
                     "--num-cpus", "2", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=harness_env(address), **popen)


def cli(capfd, *argv) -> tuple[int, str, str]:
    """``harness ARGV`` through the CLI's own ``main`` in this process: its exit code, and what it wrote to stdout and
    to stderr (``capfd``: the file descriptors, so Ray's and Tune's own lines too).  What a subprocess of it would
    do, less its 5-6 s of imports and teardown on this 2-core machine; for the tests whose subject is what a command
    does, not how its process starts, ends or is killed.  A command that joined Ray is disconnected before its
    output is read (the lines Ray flushes then included), as a process that ends would be."""
    from harness.cli import main

    capfd.readouterr()  # only this command's output
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    finally:
        ray = sys.modules.get("ray")  # not imported: nothing to disconnect
        if ray is not None and ray.is_initialized():
            ray.shutdown()
    out, err = capfd.readouterr()
    return code, out, err


def harness_main(capfd, *argv, address: str) -> tuple[int, str]:
    """``harness ARGV --address ADDRESS`` through :func:`cli`, joined to the Ray instance or cluster at ``address``
    (the session's shared one): its exit code and its output, stdout and stderr together as a run's console shows
    them."""
    code, out, err = cli(capfd, *argv, "--address", address)
    return code, out + err


ROOT = Path(__file__).parents[1]
SHIPPED = Path(__file__).parents[1] / "suites"


def shipped_suite(path: Path | str):
    """A shipped suite file (``suites/*.yaml``, by path or file name), loaded once per test process and shared by the
    modules that only read it (each load of the 54 files costs about 4 s here); a test that changes a suite loads
    its own."""
    return _shipped_suite(Path(path).name)


@functools.cache
def _shipped_suite(name: str):
    from harness.suite.schema import load_suite

    return load_suite(SHIPPED / name)


def records(results: Path) -> dict[str, dict]:
    """The result records of a local results folder, by cell hash."""
    return {p.stem: json.loads(p.read_text()) for p in (Path(results) / "cells").glob("*.json")}


def fake_record(cell, net1, net2, status="ok"):
    """A finished record of ``cell`` with the given last-epoch accuracies (the report's tests fill stores with it)."""
    values = {"net1": net1, "net2": net2, "avg": (net1 + net2) / 2, "ens": max(net1, net2) + 1}
    last = {k: {"top1": v, "top5": 99.0} for k, v in values.items()}
    best = {k: {"top1": v + 0.5, "top5": 99.0, "epoch": 1} for k, v in values.items()}
    return {"hash": cell.hash, "cell": cell.to_dict(), "status": status, "last": last, "best": best,
            "epochs": 2, "code": {"git_sha": "abc123", "dirty": False}, "packages": {"torch": "2.13.0+cpu"},
            "hardware": {"cpu": "Test CPU", "device": "cpu", "torch_threads": 1}, "trial": "t"}


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


def train_stages(cell, results_dir):
    """Train (in this process, without Ray) every stage ``cell`` needs and save their networks under
    ``results_dir`` as the trainable does; returns the Runtime that lets a Trainer of ``cell`` find them."""
    from harness.results.store import ResultStore
    from harness.training.engine import Runtime
    from harness.training.engine import train_stages_in_process

    train_stages_in_process(cell, results_dir)
    return Runtime(results=str(ResultStore(results_dir).root))


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


# --- CRD's references (explicit loops) ----------------------------------------------------------------------------

def np_nce(scores, n_data, eps=1e-7):
    """CRD's Eq. 18 by explicit loops: −(1/B) Σ_i [log P(D=1|pos) + Σ_j log P(D=0|neg_j)]."""
    scores = np.asarray(scores, dtype=np.float64)
    b, m = scores.shape[0], scores.shape[1] - 1
    noise = m / n_data
    total = 0.0
    for i in range(b):
        total += math.log(scores[i, 0] / (scores[i, 0] + noise + eps))
        for j in range(1, m + 1):
            total += math.log(noise / (scores[i, j] + noise + eps))
    return -total / b


def np_normalise(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.sqrt((x * x).sum(axis=1, keepdims=True))


def np_scores(anchor, memory, index, tau):
    """exp(⟨memory[index_ij], anchor_i⟩ / τ) (B, m + 1), and Z = N · their mean."""
    anchor, memory = np.asarray(anchor, np.float64), np.asarray(memory, np.float64)
    raw = np.array([[math.exp(float(memory[j] @ anchor[i]) / tau) for j in row] for i, row in enumerate(index)])
    return raw, len(memory) * raw.mean()


# --- feature losses' references (explicit loops) ----------------------------------------------------------------

def np_common(s, t):
    h, w = min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3])
    return np_adaptive_pool(s, h, w), np_adaptive_pool(t, h, w)


def np_hint(s, t):
    total, n = 0.0, 0
    for v_s, v_t in zip(np.ravel(s), np.ravel(t)):
        total += (v_s - v_t) ** 2
        n += 1
    return total / n


def np_attention(f, p=2.0):
    b, c, h, w = f.shape
    out = np.zeros((b, h * w))
    for n in range(b):
        for pos in range(h * w):
            out[n, pos] = sum(f[n, ch].ravel()[pos] ** p for ch in range(c)) / c
        out[n] /= max(math.sqrt(sum(v * v for v in out[n])), 1e-12)
    return out


def np_at(s_maps, t_maps, p=2.0):
    total = 0.0
    for s, t in zip(s_maps, t_maps):
        s, t = np_common(s, t)
        a_s, a_t = np_attention(s, p), np_attention(t, p)
        total += sum((x - y) ** 2 for x, y in zip(a_s.ravel(), a_t.ravel())) / a_s.size
    return total


def np_channel_vectors(f):
    b, c = f.shape[:2]
    v = f.reshape(b, c, -1).copy()
    for n in range(b):
        for ch in range(c):
            v[n, ch] /= max(math.sqrt(sum(x * x for x in v[n, ch])), 1e-12)
    return v


def np_poly_mean(a, b):
    vals = [float(np.dot(a[n, i], b[n, j])) ** 2 for n in range(a.shape[0]) for i in range(a.shape[1])
            for j in range(b.shape[1])]
    return sum(vals) / len(vals)


def np_nst(s_maps, t_maps):
    total = 0.0
    for s, t in zip(s_maps, t_maps):
        s, t = np_common(s, t)
        s, t = np_channel_vectors(s), np_channel_vectors(t)
        total += np_poly_mean(t, t) + np_poly_mean(s, s) - 2 * np_poly_mean(s, t)
    return total


def np_sp(s, t):
    b = s.shape[0]
    s, t = s.reshape(b, -1), t.reshape(b, -1)

    def gram(f):
        g = np.array([[sum(f[i, d] * f[j, d] for d in range(f.shape[1])) for j in range(b)] for i in range(b)])
        for i in range(b):
            g[i] /= max(math.sqrt(sum(x * x for x in g[i])), 1e-12)
        return g

    gs, gt = gram(s), gram(t)
    return sum((gt[i, j] - gs[i, j]) ** 2 for i in range(b) for j in range(b)) / (b * b)


def np_smooth_l1(x, y):
    diffs = [abs(a - c) for a, c in zip(np.ravel(x), np.ravel(y))]
    return sum(0.5 * d * d if d < 1 else d - 0.5 for d in diffs) / len(diffs)


def np_rkd_parts(s, t):
    def distances(e):
        n = len(e)
        d = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                if i != j:
                    d[i, j] = math.sqrt(sum((e[i, k] - e[j, k]) ** 2 for k in range(e.shape[1])))
        positive = [v for v in d.ravel() if v > 0]
        return d / (sum(positive) / len(positive))

    def angles(e):
        n = len(e)
        a = np.zeros((n, n, n))
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    u, v = e[j] - e[i], e[k] - e[i]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    a[i, j, k] = 0.0 if nu == 0 or nv == 0 else float(np.dot(u, v)) / (nu * nv)
        return a

    return np_smooth_l1(distances(s), distances(t)), np_smooth_l1(angles(s), angles(t))


def np_pkt(s, t, eps=1e-7):
    def conditional(e):
        n = len(e)
        unit = [e[i] / (math.sqrt(sum(x * x for x in e[i])) + eps) for i in range(n)]
        k = np.array([[(float(np.dot(unit[i], unit[j])) + 1) / 2 for j in range(n)] for i in range(n)])
        return np.array([k[i] / k[i].sum() for i in range(n)])

    ps, pt = conditional(s), conditional(t)
    n = len(s)
    return sum(pt[i, j] * math.log((pt[i, j] + eps) / (ps[i, j] + eps)) for i in range(n) for j in range(n)) / n**2


# --- CIFAR files in their real on-disk format -------------------------------------------------------------------

def write_batch(path, n, label_key=b"labels", seed=0, classes=10):
    """A pickled CIFAR batch as the 'python version' holds it: bytes keys, (N, 3072) uint8, channel-major."""
    rng = np.random.default_rng(seed)
    batch = {b"batch_label": b"test batch", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             label_key: [int(v) for v in (np.arange(n) + seed) % classes],
             b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [0] * n
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    return batch


def write_cifar10(folder, batches=2, n=20, n_test=10):
    written = [write_batch(folder / f"data_batch_{i}", n, seed=i) for i in range(1, batches + 1)]
    return written, write_batch(folder / "test_batch", n_test, seed=7)


def documented_files(page) -> dict[str, str]:
    """The files a documentation page shows whole: each fenced block whose first line is a comment naming a file
    (``# my_work.py, beside my_suite.yaml``), by that name, exactly as a reader would copy it."""
    import re

    files = {}
    for block in re.findall(r"```[a-z]*\n(.*?)```", Path(page).read_text(encoding="utf-8"), re.S):
        match = re.match(r"# ([\w.]+\.(?:py|yaml))\b", block)
        if match:
            files[match[1]] = block
    return files
