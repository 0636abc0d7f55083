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


@pytest.mark.parametrize("method", [{"name": "dml", "update": "sequential"},
                                    {"name": "amln", "update": "sequential", "use_feature": False}])
def test_fp16_peers_updated_one_after_another_train(write_suite, method):
    """Each peer's update steps the same optimizer (and AMLN's discriminators theirs) again within one step: a
    second GradScaler.step before update() raised on the first step ("step() has already been called since the
    last update()"), on the CPU's scaler as on CUDA's."""
    from harness.suite.schema import load_suite
    from harness.training.engine import Runtime, Trainer
    from tests.helpers import TINY_DATA, TINY_RECIPE, tiny_suite_dict

    suite = tiny_suite_dict(methods=[method], seeds=[0], dataset=TINY_DATA,
                            recipe={**TINY_RECIPE, "epochs": 1, "precision": "fp16"})
    trainer = Trainer(load_suite(write_suite(suite)).cells[0], Runtime(device="cpu"))
    trainer.run()
    assert trainer.scaler is not None and trainer.scaler.get_scale() > 0
    losses = {k: v for k, v in trainer.history[-1].items() if k.startswith("loss/")}
    assert losses and all(v == v and abs(v) < float("inf") for v in losses.values()), losses


def test_an_fp16_bench_times_its_steps(write_suite):
    """harness bench stepped the method without ever settling the scale: every fp16 bench raised at its second
    step. It now times the engine's own step."""
    from harness.suite.schema import load_suite
    from harness.training.bench import time_steps
    from harness.training.engine import Runtime, Trainer
    from tests.helpers import TINY_DATA, TINY_RECIPE, tiny_suite_dict

    suite = tiny_suite_dict(methods=["dml"], seeds=[0], dataset=TINY_DATA, recipe={**TINY_RECIPE, "precision": "fp16"})
    trainer = Trainer(load_suite(write_suite(suite)).cells[0], Runtime(device="cpu"))
    assert time_steps(trainer, steps=3, warmup=1) > 0
