"""What the harness does today on a GPU, measured in one short run: the probe to take to the first GPU lent, before
the GPU fixes land (its findings are the evidence they start from).  No Ray (the GPU machines have no Ray wheel
small enough to carry): everything runs in process, each step in its own subprocess under a time limit, so a hang
or a crash costs that step only.

    python benchmarks/gpu_probe.py [--steps env,tests,sync,...,compiled] [--quick]

Prints one block per step and a last line per step: ``PROBE <step> <ok|FAILED|TIMEOUT> <seconds>``.  ``--quick``
makes every step tiny, to check the script itself on a CPU.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMITS = {"env": 30, "tests": 120, "sync": 45, "fp16": 40, "determinism": 60, "stacked": 80, "bench": 130,
          "throughput": 70, "compiled": 75}
QUICK = os.environ.get("PROBE_QUICK") == "1"
MODEL = "cifar_resnet8" if QUICK else "cifar_resnet32"


def cell(method="dml", precision="fp32", per_class=100, pipeline="auto", batch=128, epochs=1, **hparams):
    from harness.config.cell import Cell

    per_class = 2 if QUICK else per_class
    recipe = {"epochs": epochs, "batch_size": 16 if QUICK else batch, "precision": precision,
              "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
              "schedule": {"name": "cosine"}, "augment": {"crop_padding": 4, "flip": True}}
    return Cell(method=method, hparams=hparams or ({"temperature": 3.0} if method.startswith("dml") else {}),
                group=(MODEL, MODEL), recipe=recipe, seed=0,
                dataset={"name": "synthetic_cifar100", "train_per_class": per_class, "test_per_class": 2,
                         "pipeline": pipeline})


def step_env():
    import torch

    print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
    print("cuda available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
    if torch.cuda.is_available():
        print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
        print("tf32 matmul", torch.backends.cuda.matmul.allow_tf32, "tf32 cudnn", torch.backends.cudnn.allow_tf32,
              "float32_matmul_precision", torch.get_float32_matmul_precision())
    from harness.training.engine import Runtime

    # review item 1: the device a trial gets when it asked for no GPU.  Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone
    # for a zero-GPU actor, so the trial sees what this process sees.
    print("zero-GPU trial's device under Runtime(device='auto'):", Runtime().torch_device(),
          "(CUDA_VISIBLE_DEVICES =", repr(os.environ.get("CUDA_VISIBLE_DEVICES")), ")")


def step_tests():
    args = [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider",
            "tests/test_every_method.py", "tests/test_precision.py"]
    if QUICK:  # a few of them, stopping at the first failure
        args += ["-x", "-k", "stage or resume or precision or fp16 or bf16 or step"]
    return subprocess.call(args, cwd=ROOT)


def step_sync():
    import torch

    from harness.training.engine import Runtime, Trainer

    for name, kwargs in [("dml fast", {}), ("dml standard", {"pipeline": "standard"}),
                         ("dml_crd fast", {"method": "dml_crd"})]:
        trainer = Trainer(cell(**kwargs), Runtime())
        trainer.train_epoch()  # warm-up epoch: cuDNN autotuning, first allocations
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start = time.perf_counter()
            trainer.train_epoch()
            seconds = time.perf_counter() - start
        if trainer.device.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        places = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in syncs})
        print(f"{name}: {len(syncs)} host syncs in one epoch of {len(trainer.train_batches)} steps "
              f"({seconds:.2f} s); at {', '.join(places[:12]) or '-'}")


def step_fp16():
    from harness.training.engine import Runtime, Trainer

    for label, hp in [("dml joint", {"temperature": 3.0}), ("dml sequential", {"temperature": 3.0, "update": "sequential"})]:
        try:
            losses = Trainer(cell(precision="fp16", **hp), Runtime()).train_epoch()
            print(f"fp16 {label}: ran, losses {losses}")
        except Exception as e:  # noqa: BLE001 (the probe reports what happened)
            print(f"fp16 {label}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")


def state_hash(trainer) -> str:
    import torch

    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for n in trainer.method.peers for k, v in n.state_dict().items()}, buffer)
    return hashlib.sha256(buffer.getvalue()).hexdigest()[:16]


def train_twice(deterministic: bool) -> None:
    import torch

    from harness.training.engine import Runtime, Trainer

    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True)
    hashes = []
    for _ in range(2):
        trainer = Trainer(cell(method="dml"), Runtime(cudnn_benchmark=not deterministic))
        trainer.train_epoch()
        hashes.append(state_hash(trainer))
    print(f"deterministic={deterministic}: weights after one epoch, twice: {hashes} "
          f"{'IDENTICAL' if hashes[0] == hashes[1] else 'DIFFERENT'}")


def step_determinism():
    code = 0
    for flag in (False, True):
        env = dict(os.environ, CUBLAS_WORKSPACE_CONFIG=":4096:8") if flag else os.environ
        code |= subprocess.call([sys.executable, __file__, "--inner-determinism", str(int(flag))], env=env, cwd=ROOT)
    return code


def step_stacked():
    steps = "2" if QUICK else "30"
    return subprocess.call([sys.executable, "benchmarks/stacked_peers.py", "--peers", "2,4", "--batch", "128",
                            "--steps", steps, "--precisions", "fp32,bf16", "--model", MODEL], cwd=ROOT)


def step_compiled():
    return subprocess.call([sys.executable, "benchmarks/stacked_peers.py", "--peers", "2", "--batch", "128", "--steps",
                            "2" if QUICK else "30", "--precisions", "bf16", "--compile"], cwd=ROOT)


def step_bench():
    import yaml

    suite = yaml.safe_load((ROOT / "benchmarks/resnet32_pair.yaml").read_text())
    suite["dataset"]["train_per_class"] = 2 if QUICK else 100
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(suite))
        steps, warm = ("3", "1") if QUICK else ("100", "20")
        code = subprocess.call([sys.executable, "-m", "harness.cli", "bench", str(path), "--steps", steps, "--warmup",
                                warm, "--packed", "4", "--seeds", "4", "--cells", "2", "--results", str(Path(tmp) / "results")],
                               cwd=ROOT)
        # the fp16 bench (review item 2: a second scaler step before update())
        suite["recipe"]["precision"] = "fp16"
        path.write_text(yaml.safe_dump(suite))
        code |= subprocess.call([sys.executable, "-m", "harness.cli", "bench", str(path), "--steps", "5",
                                 "--warmup", "1", "--modes", "separate", "--results", str(Path(tmp) / "results")],
                                cwd=ROOT)
    return code


def step_throughput():
    steps = "3" if QUICK else "50"
    return subprocess.call([sys.executable, "benchmarks/engine_throughput.py", "--steps", steps, "--batch", "128",
                            "--threads", "8"], cwd=ROOT)


STEPS = {"env": step_env, "tests": step_tests, "sync": step_sync, "fp16": step_fp16, "determinism": step_determinism,
         "stacked": step_stacked, "bench": step_bench, "throughput": step_throughput,
         "compiled": step_compiled}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # one step, in this process
    parser.add_argument("--inner-determinism", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import harness  # noqa: F401  (the torchvision shim, first)

    if args.inner_determinism is not None:
        train_twice(bool(int(args.inner_determinism)))
        return 0
    if args.only:
        return STEPS[args.only]() or 0
    env = dict(os.environ, PYTHONUNBUFFERED="1", **({"PROBE_QUICK": "1"} if args.quick else {}))
    summary = []
    for name in args.steps.split(","):
        print(f"===== {name}", flush=True)
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, __file__, "--only", name], env=env, cwd=ROOT,
                                 start_new_session=True)  # its own process group: a timeout ends its children too
        try:
            code = child.wait(timeout=LIMITS[name])
            verdict = "ok" if code == 0 else f"FAILED(exit {code})"
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            verdict = "TIMEOUT"
        summary.append(f"PROBE {name} {verdict} {time.perf_counter() - start:.0f}s")
        print(summary[-1], flush=True)
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
