"""``harness doctor``: the acceptance checks of a machine's GPU path, PASS/FAIL/SKIP one line each, sized to finish
within ten minutes on one GPU (not yet run on one).  On a machine without CUDA it runs what a CPU can check and
names what it skipped.

Each check reproduces, on the real device, a defect a review of the GPU path found from the code alone: a
trial without a GPU landing on GPU 0, a method's step failing on CUDA or in half precision, a host sync inside
the step loop, re-training that does not repeat bit for bit under ``resources.deterministic``, stacked peers
that differ from separate ones, the throughput figures ``harness bench`` gives for the shipped ResNet-32 pair, and
data-parallel workers that do not train as one process or a SyncBN cell that hangs after its last epoch."""
from __future__ import annotations

import hashlib
import io
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# a tiny cell: the embedded Fashion-MNIST subset, ResNet-8 peers, batch 32 (the tests' tiny cells too)
DATA = {"name": "fashion_mnist_mini", "train_per_class": 6, "test_per_class": 5}
RECIPE = {"epochs": 2, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9,
                                                        "weight_decay": 5.0e-4},
          "schedule": {"name": "cosine"}, "augment": {"crop_padding": 2, "flip": True}}
NETWORK = "cifar_resnet8"
ROOT = Path(__file__).resolve().parents[1]
BENCH_SUITE = ROOT / "benchmarks" / "resnet32_pair.yaml"
# the quickstart's cells (independent training and mutual learning of a ResNet-8 pair), one seed and epoch, small
QUICKSTART = ROOT / "suites" / "quickstart.yaml"
QUICKSTART_SMALL = ["seeds=[0]", "recipe.epochs=1", "dataset.train_per_class=10", "dataset.test_per_class=5"]


@dataclass
class Outcome:
    status: str  # PASS, FAIL or SKIP
    check: str
    detail: str = ""

    def line(self) -> str:
        return f"{self.status:4}  {self.check}" + (f": {self.detail}" if self.detail else "")


def check_cell(method: str, k: int, precision: str = "fp32"):
    """A tiny cell of ``method`` on k ResNet-8s, with the method's ``check_hparams`` and its warm-ups capped as
    ``--smoke`` caps them (tests/test_every_method.py trains every method's)."""
    from harness.config.cell import Cell
    from harness.suite.smoke import smoke_hparams
    from harness.training.method import load_methods

    cls = load_methods().get(method)
    hparams = smoke_hparams(cls.HParams(**cls.check_hparams).model_dump(mode="json"))
    recipe = RECIPE if precision == "fp32" else {**RECIPE, "precision": precision}
    return Cell(method=method, hparams=hparams, group=(NETWORK,) * k, dataset=DATA, recipe=recipe, seed=0,
                label=method, suite="doctor")


def check_zero_gpu_device() -> Outcome:
    """A trial that asked for no GPU trains on the CPU although CUDA is visible to it (Ray 2.60 does not hide it)."""
    from harness.scheduling.trainable import _runtime
    from harness.training.engine import Runtime

    device = _runtime(Runtime(), "results", cpus=1, gpus=0).torch_device()
    return Outcome("PASS" if device.type == "cpu" else "FAIL", "a trial without a GPU trains on the CPU",
                   f"device {device}" + ("" if torch.cuda.is_available() else " (no CUDA here: trivially)"))


def check_every_method(device: torch.device, precision: str, results: Path, methods=None) -> Outcome:
    """One training step of every registered method (or of ``methods``) on ``device`` in ``precision``: finite
    losses, no device mismatch (a CPU tensor in a CUDA computation raises)."""
    from harness.training.engine import Runtime, Trainer
    from harness.training.method import Step, load_methods
    from harness.training.engine import train_stages_in_process

    failed, names = [], sorted(methods or load_methods())
    for name in names:
        cls = load_methods().get(name)
        k = max(cls.min_peers, min(2, cls.max_peers or 2))
        try:
            cell = check_cell(name, k, precision)
            train_stages_in_process(cell, results)
            trainer = Trainer(cell, Runtime(device=str(device), results=str(results)))
            trainer.method.modules.train()
            trainer.method.on_epoch_start(0)
            batch = next(iter(trainer.train_batches.epoch(0)))
            terms, _ = trainer.train_step(batch, Step(0, 0, trainer.recipe.epochs, len(trainer.train_batches),
                                                      global_batch=batch.global_size))
            bad = [t for t, v in terms.items() if not math.isfinite(float(v))]
            if bad:
                failed.append(f"{name}: {bad[0]} not finite")
        except Exception as e:  # noqa: BLE001 — each method's failure is one line of the check
            failed.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
    check = f"a training step of every method on {device.type}, {precision}"
    if failed:
        return Outcome("FAIL", check, f"{len(failed)} of {len(names)}: " + "; ".join(failed))
    return Outcome("PASS", check, f"{len(names)} methods, finite losses")


def quickstart_cells() -> list:
    from harness.suite.schema import load_suite

    return load_suite(QUICKSTART, QUICKSTART_SMALL).cells


def check_no_host_sync(device: torch.device) -> Outcome:
    """The fast path's step loop (batches on the device, the step, the optimizers) makes no host synchronisation:
    torch's sync debug mode raises on one.  The quickstart's cells."""
    from harness.training.engine import Runtime, Trainer
    from harness.training.method import Step

    check, steps_run = "no host sync in the fast path's steps", 0
    for cell in quickstart_cells():
        trainer = Trainer(cell, Runtime(device=str(device)))
        trainer.method.modules.train()
        steps = len(trainer.train_batches)
        batches = list(trainer.train_batches.epoch(0))
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            for i, batch in enumerate(batches):
                trainer.train_step(batch, Step(0, i, trainer.recipe.epochs, steps, global_batch=batch.global_size))
                steps_run += 1
        except RuntimeError as e:
            return Outcome("FAIL", check, f"{cell.describe()}: {str(e).splitlines()[0][:200]}")
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return Outcome("PASS", check, f"{steps_run} steps of the quickstart's cells")


def _weights_digest(trainer) -> str:
    buffer = io.BytesIO()
    torch.save({k: v.cpu() for k, v in trainer.method.modules.state_dict().items()}, buffer)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def check_deterministic_retraining(device: torch.device) -> Outcome:
    """Each of the quickstart's cells trained twice under ``resources.deterministic``: byte-identical weights."""
    from harness.training.engine import Runtime, Trainer, set_determinism

    check, differ, digests = f"re-training under resources.deterministic on {device.type}", [], []
    try:
        for cell in quickstart_cells():
            pair = []
            for _ in range(2):
                trainer = Trainer(cell, Runtime(device=str(device), deterministic=True))
                trainer.run()
                pair.append(_weights_digest(trainer))
            digests.append(pair[0][:12])
            if pair[0] != pair[1]:
                differ.append(f"{cell.describe()}: sha256 {pair[0][:12]} then {pair[1][:12]}")
    finally:
        set_determinism(Runtime())
    if differ:
        return Outcome("FAIL", check, "; ".join(differ))
    return Outcome("PASS", check, f"{len(digests)} cells, weights sha256 {', '.join(digests)} both times")


def check_stacked_peers(device: torch.device) -> Outcome:
    """Two ResNet-32 peers stacked into one grouped network give the separate networks' outputs (fp32, TF32
    off), on the device."""
    import copy

    import timm

    import harness.models  # noqa: F401
    from harness.models.stacked import StackedPeers, StackingError

    try:  # the check itself runs with TF32 off
        torch.manual_seed(0)
        nets = [timm.create_model("cifar_resnet32", num_classes=100) for _ in range(2)]
        stacked = StackedPeers(copy.deepcopy(nets)).to(device)  # built on the CPU, as the engine does
        stacked._check([n.to(device) for n in nets], "doctor")
    except StackingError as e:
        return Outcome("FAIL", "stacked peers equal separate ones", str(e))
    return Outcome("PASS", f"stacked peers equal separate ones on {device.type}",
                   "2 × ResNet-32, fp32, TF32 off, within the build-time tolerance")


def check_bench(device: torch.device) -> Outcome:
    """``harness bench`` of the shipped ResNet-32 pair: one cell, stacked peers, 4 packed, 4 stacked seeds (the
    command itself, its figures printed above)."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as results:
        code = subprocess.call([sys.executable, "-m", "harness.cli", "bench", str(BENCH_SUITE), "--device",
                                str(device), "--steps", "100", "--warmup", "20", "--packed", "4", "--seeds", "4",
                                "--results", results], cwd=ROOT)
    return Outcome("PASS" if code == 0 else "FAIL", "harness bench of the ResNet-32 pair (figures above)",
                   "" if code == 0 else f"exit {code}")


def _data_parallel_rank(rank: int, world: int, cells: list[dict], device_type: str, out: str) -> None:
    """One rank of :func:`check_data_parallel`: trains each cell on its part of every batch; rank 0 keeps the
    weights."""
    from harness.config.cell import Cell
    from harness.training.engine import Runtime, Trainer
    from harness.training.parallel import Replicas

    device = f"cuda:{rank}" if device_type == "cuda" else "cpu"
    for i, cell in enumerate(cells):
        trainer = Trainer(Cell.from_dict(cell), Runtime(device=device, deterministic=True), Replicas(rank, world))
        trainer.run()
        if rank == 0:
            torch.save({k: v.cpu() for k, v in trainer.method.modules.state_dict().items()}, Path(out) / f"{i}.pt")


def check_data_parallel(device_type: str, backend: str) -> Outcome:
    """The quickstart's cells on 2 data-parallel workers (one process group) end with the weights of one process
    accumulating the same two parts; on GPUs (NCCL, a GPU each) a SyncBN cell ends too, rather than waiting for
    the collective timeout after its last epoch."""
    import dataclasses

    from harness.training.engine import Runtime, Trainer
    from harness.training.launch import local_ranks
    from harness.training.parallel import Replicas

    plain = quickstart_cells()  # independent training and mutual learning of a ResNet-8 pair
    cells = plain + ([dataclasses.replace(plain[-1], recipe={**plain[-1].recipe, "sync_bn": True})]
                     if device_type == "cuda" else [])
    where = f"2 {'GPUs, NCCL' if backend == 'nccl' else 'CPU workers, gloo'}"
    check = f"data-parallel cells on {where} equal one process" + (", a SyncBN cell ends" if device_type == "cuda" else "")
    with tempfile.TemporaryDirectory() as out:
        began = time.time()
        codes = local_ranks(_data_parallel_rank, [c.to_dict() for c in cells], device_type, out, backend=backend,
                            timeout=300)
        if codes != [0, 0]:
            stuck = " (still running after 300 s: killed)" if None in codes else ""
            return Outcome("FAIL", check, f"the ranks exited {codes}{stuck}")
        spent = time.time() - began
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as each rank: a CPU's kernels add up in another order on more threads
        worst = 0.0
        try:
            for i, cell in enumerate(plain):
                alone = Trainer(cell, Runtime(device=device_type, deterministic=True), Replicas(accumulation=2))
                alone.run()
                workers = torch.load(Path(out) / f"{i}.pt")
                one = {k: v.cpu() for k, v in alone.method.modules.state_dict().items()}
                worst = max([worst] + [(workers[k].double() - one[k].double()).abs().max().item()
                                       for k in one if one[k].is_floating_point()])
        finally:
            torch.set_num_threads(threads)
    status = "PASS" if worst < 1e-4 else "FAIL"
    return Outcome(status, check, f"largest weight difference {worst:.1e} (at most 1e-4); {len(cells)} cell(s) "
                                  f"on 2 ranks in {spent:.0f} s")


def run_doctor(log=print) -> int:
    """Every check this machine allows, one line each; 0 where none failed."""
    import platform

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    started = time.time()
    what = (f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
            f"{torch.cuda.device_count()} GPU(s)" if cuda else f"no CUDA device ({platform.processor() or 'CPU'})")
    log(f"harness doctor: torch {torch.__version__} on {what}")
    outcomes: list[Outcome] = []

    def run(check, *args) -> None:
        began = time.time()
        try:
            outcome = check(*args)
        except Exception as e:  # noqa: BLE001 — a check that breaks is that check's failure
            outcome = Outcome("FAIL", (check.__doc__ or check.__name__).split("\n")[0].strip(),
                              f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        outcome.detail += f" [{time.time() - began:.0f} s]"
        outcomes.append(outcome)
        log(outcome.line())

    def skip(check: str, why: str) -> None:
        outcomes.append(Outcome("SKIP", check, why))
        log(outcomes[-1].line())

    run(check_zero_gpu_device)
    with tempfile.TemporaryDirectory() as results:
        for precision in ("fp32", "bf16", "fp16"):  # on a CPU too: fp16 through the CPU's gradient scaler
            run(check_every_method, device, precision, Path(results))
    if cuda:
        run(check_no_host_sync, device)
    else:
        skip("no host sync in the fast path's steps", "needs a GPU (torch's sync debug mode is CUDA's)")
    run(check_deterministic_retraining, device)
    run(check_stacked_peers, device)
    if cuda:
        run(check_bench, device)
    else:
        skip("harness bench of the ResNet-32 pair", "needs a GPU (run `harness bench` for CPU figures)")
    if cuda and torch.cuda.device_count() >= 2:
        run(check_data_parallel, "cuda", "nccl")
    else:
        run(check_data_parallel, "cpu", "gloo")
        skip("data-parallel cells on NCCL, a SyncBN cell that ends", "needs 2 GPUs (the gloo check above trains "
             "the same cells on CPU workers; SyncBN runs on CUDA only)")
    counts = {s: sum(o.status == s for o in outcomes) for s in ("PASS", "FAIL", "SKIP")}
    log(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped in {time.time() - started:.0f} s")
    return 1 if counts["FAIL"] else 0
