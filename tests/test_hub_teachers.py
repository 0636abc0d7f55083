"""Teachers from a hub: ``teacher_checkpoint: hf-hub:<owner>/<repo>`` or ``timm:<model>.<tag>``, loaded by timm
from the Hugging Face cache (the tests run with the hub offline: the test writes the cache entry a download would
leave, in its real layout), checked against the dataset and the group before any trial starts, and recorded with
the weights file's SHA-256 and the hub revision."""
from __future__ import annotations

import hashlib
import json

import pytest
import timm
import torch

import harness.models  # noqa: F401
from harness.results.weights import StageError, load_networks
from harness.suite.schema import SuiteError, load_suite
from tests.helpers import TINY_DATA, tiny_suite_dict

REPO = "okd-test/cifar-resnet8-fmnist"
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache holding one timm network, as ``hf_hub_download`` leaves it: refs/main names the
    snapshot, which holds config.json (timm's architecture and classes) and model.safetensors."""
    import huggingface_hub.constants
    from safetensors.torch import save_file

    cache = tmp_path / "hub"
    repo = cache / f"models--{REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    teacher = timm.create_model("cifar_resnet8", num_classes=10, in_chans=1)
    save_file(teacher.state_dict(), snapshot / "model.safetensors")
    (snapshot / "config.json").write_text(json.dumps({
        "architecture": "cifar_resnet8", "num_classes": 10,
        "pretrained_cfg": {"num_classes": 10, "input_size": [1, 28, 28], "classifier": "fc"}}))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return teacher, snapshot / "model.safetensors"


def test_a_hub_teacher_loads_from_the_cache_with_its_provenance(hub_cache):
    teacher, file = hub_cache
    (net,), provenance = load_networks(f"hf-hub:{REPO}", ("cifar_resnet8",), None, num_classes=10, in_chans=1)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), teacher.state_dict().values()))
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert provenance["hub"] == f"hf-hub:{REPO}" and provenance["revision"] == REVISION
    assert provenance["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()


@pytest.mark.parametrize("models, classes, chans, sha, needle", [
    (("cifar_resnet14",), 10, 1, None, "is a cifar_resnet8, but the group names cifar_resnet14"),
    (("cifar_resnet8",), 100, 1, None, "was trained for 10 classes, the cell's dataset has 100"),
    (("cifar_resnet8",), 10, 3, None, "was trained for 1 input channels, the cell's dataset has 3"),
    (("cifar_resnet8",), 10, 1, "0" * 64, "but the suite expects 0000"),
])
def test_a_hub_teacher_that_does_not_fit_is_one_line(hub_cache, models, classes, chans, sha, needle):
    with pytest.raises(StageError) as info:
        load_networks(f"hf-hub:{REPO}", models, sha, num_classes=classes, in_chans=chans)
    assert "\n" not in str(info.value) and needle in str(info.value)


def test_a_hub_teacher_not_in_the_cache_offline_is_one_line(hub_cache):
    with pytest.raises(StageError) as info:
        load_networks("hf-hub:okd-test/not-there", ("cifar_resnet8",), None, 10, 1)
    assert "\n" not in str(info.value) and "cannot load it" in str(info.value) and "HF_HOME" in str(info.value)


def test_the_run_fetches_hub_teachers_before_its_trials(hub_cache, write_suite, tmp_path):
    """`prepare_run` (what `harness run` does before Ray starts) loads each hub teacher once; a suite naming a hub
    teacher that does not fit its data is refused there, in one line; a timm name that is no pretrained tag is
    refused when the suite loads."""
    from harness.api import prepare_run

    raw = tiny_suite_dict(dataset=TINY_DATA, groups=[["cifar_resnet8", "cifar_resnet8"]], seeds=[0, 1],
                          methods=[{"name": "kd", "teacher_checkpoint": f"hf-hub:{REPO}"}])
    said = []
    suite, _ = prepare_run(load_suite(write_suite(raw)), str(tmp_path / "results"), log=said.append)
    assert [line for line in said if line.startswith("teacher")] == [f"teacher hf-hub:{REPO}: ready (SHA-256 "
                                                                      f"{provenance_sha(hub_cache)[:16]}…)"]
    raw["groups"] = [["cifar_resnet14", "cifar_resnet8"]]
    with pytest.raises(SuiteError) as info:
        prepare_run(load_suite(write_suite(raw)), str(tmp_path / "results"), log=said.append)
    assert len(info.value.lines) == 1 and "is a cifar_resnet8, but the group names cifar_resnet14" in str(info.value)
    raw["methods"] = [{"name": "kd", "teacher_checkpoint": "timm:resnet18.a1_in2k"}]
    with pytest.raises(SuiteError) as info:
        load_suite(write_suite(raw))
    assert "teacher_checkpoint: 'timm:resnet18.a1_in2k' is not one of timm's pretrained networks (did you mean " \
           "'resnet18.a1_in1k'?)" in str(info.value)


def provenance_sha(hub_cache) -> str:
    return hashlib.sha256(hub_cache[1].read_bytes()).hexdigest()
