"""Defects of the GPU path, each reproduced by its mechanism on this CPU-only machine: what CUDA would do is
patched in (CUDA reported available, Ray's environment as 2.60 leaves it), fp16 runs through the CPU's
gradient scaler, collectives run on gloo."""
import pytest
import torch

from harness.scheduling.trainable import _runtime


def test_a_trial_without_a_gpu_trains_on_the_cpu_where_cuda_is_visible(monkeypatch):
    """Ray 2.60 leaves CUDA_VISIBLE_DEVICES unset for an actor that asked for no GPU, so CUDA is visible to it and
    device auto (or Ray Train's get_device(), cuda:0) would put the trial on GPU 0."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    config = {"results": "r", "runtime": {}}
    assert _runtime(config, cpus=1, gpus=0).torch_device() == torch.device("cpu")
    assert _runtime(config, cpus=1, gpus=0, device="cuda:0").torch_device() == torch.device("cpu")  # Ray Train's
    assert _runtime(config, cpus=1, gpus=1).torch_device() == torch.device("cuda")
    assert _runtime(config, cpus=1, gpus=0.25).torch_device() == torch.device("cuda")
    assert _runtime(config, cpus=1, gpus=1, device="cuda:0").torch_device() == torch.device("cuda:0")
    # a device the run named (harness run --device) is the user's choice
    named = {"results": "r", "runtime": {"device": "cuda:1"}}
    assert _runtime(named, cpus=1, gpus=0).torch_device() == torch.device("cuda:1")
