"""Every registered method trains 2 epochs on the embedded dataset with K = 2 and, where it allows, K = 3:
finite losses that move, the evaluated outputs it documents, and a checkpoint that restores it exactly.

A new file under ``methods/`` is picked up here without editing this test.
"""
import io
import math
from dataclasses import replace

import pytest
import timm
import torch

from harness.doctor import check_cell
from harness.costs.networks import flops
from harness.training.engine import Runtime, Trainer
from harness.training.method import Method, load_methods
from methods.common.offline import OfflineMethod
from tests.helpers import train_stages

# Outputs beyond net1..netK and ens that a method evaluates with its default hyper-parameters.
EXTRA_OUTPUTS = {"ft_paraphraser": {"reconstructed"}, "one": {"teacher"}, "kdcl": {"teacher"}, "ffl": {"fused"}}
# Small settings so that the generic run exercises each method's state within 2 epochs: harness.doctor.check_cell
# (each method's own check_hparams; warm-ups, ramp-ups and earlier phases capped as --smoke caps them).

# Stages of another method that train one network's helper and deploy nothing (FT's paraphraser on a teacher):
# run with K = 1, and their parameter counts have no deployed or peer networks.
STAGE_ONLY = {"ft_paraphraser"}


def cases() -> list:
    return list(_cases())


def _cases():
    for name, cls in load_methods().items():
        for k in (1,) if name in STAGE_ONLY else (2, 3):
            if cls.min_peers <= k <= (cls.max_peers or k):
                yield pytest.param(name, k, id=f"{name}-K{k}")


@pytest.fixture(scope="module")
def stage_results(tmp_path_factory):
    """One result store for the module, so that a teacher several methods need is trained once."""
    return tmp_path_factory.mktemp("stages")


def make(name: str, k: int, results=None) -> Trainer:
    """A Trainer of method ``name`` on k ResNet-8 (for offline methods: a ResNet-8 teacher and student),
    with any stage it needs (a teacher) trained first under ``results``."""
    cell = check_cell(name, k)
    runtime = train_stages(cell, results) if results is not None else Runtime()
    return Trainer(cell, replace(runtime, require_every_term=True))  # as --smoke: every loss term exercised


def test_every_method_is_covered():
    names = {c.values[0] for c in cases()}
    assert names == set(load_methods()) and {"ind", "dml", "kdcl", "tsb", "one", "clnn", "ffl"} <= names


@pytest.mark.parametrize("name,k", cases())
def test_trains_two_epochs_and_restores(name, k, stage_results):
    trainer = make(name, k, stage_results)
    before = [p.detach().clone() for p in trainer.method.modules.parameters()]
    states = []
    trainer.run(lambda t, metrics: states.append(io.BytesIO()) or torch.save(t.state_dict(), states[-1]))
    assert len(trainer.history) == 2
    last = trainer.history[-1]
    losses = {key: v for key, v in last.items() if key.startswith("loss/")}
    assert losses and all(math.isfinite(v) for v in losses.values())
    if isinstance(trainer.method, OfflineMethod):  # the student is net1; the frozen teacher is evaluated too
        expected = {"net1", "ens", "avg", "teacher"}
    else:
        expected = {f"net{i + 1}" for i in range(k)} | {"ens", "avg"} | EXTRA_OUTPUTS.get(name, set())
    outputs = {key.split("/", 1)[1] for key in last if key.startswith("top1/")}
    assert outputs == expected
    assert all(0.0 <= last[f"top1/{o}"] <= last[f"top5/{o}"] <= 100.0 for o in outputs)
    trainable = [p.requires_grad for p in trainer.method.modules.parameters()]
    moved = [not torch.equal(a, b) for a, b, t in zip(before, trainer.method.modules.parameters(), trainable) if t]
    assert all(moved), f"{name}: {moved.count(False)} parameter tensors never changed"

    # Parameters by role: the peers and the added modules partition the method's parameters.
    counts = trainer.method.parameter_counts()
    unique = {id(p): p.numel() for p in trainer.method.modules.parameters()}
    assert counts["peers"] + counts["added_total"] + sum(counts["frozen"].values()) == sum(unique.values())
    if name in STAGE_ONLY:
        assert counts["deployed"] == counts["peers"] == 0 and counts["added_total"] > 0
    else:
        assert 0 < counts["deployed"] <= counts["peers"]
    assert set(counts["added"]) | set(counts["frozen"]) == set(trainer.method.modules) - {"peers"}

    # The forward cost of a training step: at least one ResNet-8 per image, unless its step bypasses losses().
    macs = trainer.costs()["train_forward_macs_per_image"]
    if type(trainer.method).losses is Method.losses:
        assert macs is None
    else:
        assert macs >= flops(timm.create_model("cifar_resnet8", num_classes=10, in_chans=1), (1, 28, 28)) / 2

    # The checkpoint after epoch 1 resumes to the very same end state.
    states[0].seek(0)
    resumed = make(name, k, stage_results)
    resumed.load_state_dict(torch.load(states[0], weights_only=False))
    resumed.run()
    for a, b in zip(resumed.method.modules.parameters(), trainer.method.modules.parameters()):
        assert torch.equal(a, b)
    timing = {"images_per_s", "train_time_s", "eval_time_s"}
    assert {k: v for k, v in resumed.history[-1].items() if k not in timing} == \
        {k: v for k, v in last.items() if k not in timing}


def test_parameter_counts_by_hand():
    import timm

    resnet8 = sum(p.numel() for p in timm.create_model("cifar_resnet8", num_classes=10, in_chans=1).parameters())
    ind = make("ind", 2).method.parameter_counts()
    assert ind == {"deployed": 2 * resnet8, "peers": 2 * resnet8, "added": {}, "added_total": 0,
                   "added_buffers_bytes": {}, "frozen": {}}
    ffl = make("ffl", 2).method
    fusion = sum(p.numel() for p in ffl.modules["fusion"].parameters())
    counts = ffl.parameter_counts()
    assert fusion > 0 and counts["added"]["fusion"] == fusion and counts["added_total"] >= fusion
    assert counts["deployed"] < 2 * resnet8  # the shared trunk is counted once
