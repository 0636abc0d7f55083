"""Where a number came from: code version, package versions and hardware, recorded with every result."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

import harness

PACKAGES = ("torch", "torchvision", "timm", "ray", "numpy", "pandas", "pydantic")


@lru_cache(maxsize=1)
def code_version() -> dict:
    """Git SHA and dirty flag of the checkout the harness runs from (or the package version outside git)."""
    root = Path(harness.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, check=True, timeout=10).stdout
        return {"git_sha": sha, "dirty": bool(status.strip()), "version": harness.__version__}
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": None, "dirty": None, "version": harness.__version__}


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    import torch

    out["torch"] = torch.__version__  # carries the +cpu / +cuXXX build label
    return out


def hardware(device: str = "cpu") -> dict:
    import torch

    info = {
        "host": platform.node(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    # what decides whether a re-run repeats bit for bit on a GPU (the README's reproducibility section)
    info["numerics"] = {
        "cudnn_benchmark": torch.backends.cudnn.benchmark, "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
