"""The adapter gives features, shapes and trunk/branch splits for every model created by name."""
import copy

import pytest
import timm
import torch

import harness.models  # noqa: F401
from harness.models import adapter

IMAGENET = ["resnet18", "mobilenetv2_100"]


def cifar_models():
    return timm.list_models("cifar_*")


def build(name, classes=10):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=classes)
    model.eval()
    size = model.pretrained_cfg["input_size"]
    return model, size, torch.randn(2, *size) if size[1] <= 64 else torch.randn(2, 3, 64, 64)


@pytest.mark.parametrize("name", cifar_models() + IMAGENET)
def test_blocks_are_the_feature_path(name):
    model, _, x = build(name)
    y = x
    with torch.no_grad():
        for block in adapter.blocks(model):
            y = model.get_submodule(block)(y)
        assert torch.allclose(y, model.forward_features(x), atol=1e-5)


@pytest.mark.parametrize("name", cifar_models() + IMAGENET)
def test_extract_and_shapes_agree(name):
    model, size, x = build(name)
    with torch.no_grad():
        f = adapter.extract(model, x)
        assert torch.allclose(f.logits, model(x), atol=1e-5)
    expected = adapter.shapes(model, tuple(x.shape[1:]))
    assert [tuple(s.shape[1:]) for s in f.stages] == expected["stages"]
    assert tuple(f.last.shape[1:]) == expected["last"] and tuple(f.embedding.shape[1:]) == expected["embedding"]
    assert tuple(f.logits.shape[1:]) == expected["logits"] == (10,)


@pytest.mark.parametrize("name", cifar_models() + IMAGENET)
def test_split_reproduces_the_model_and_clones_are_independent(name):
    model, _, x = build(name)
    stage = min(2, len(adapter.stage_info(model)) - 2)
    trunk, head = adapter.split(model, stage)
    with torch.no_grad():
        assert torch.allclose(head(trunk(x)), model(x), atol=1e-5)
    branch = copy.deepcopy(head)
    shared = {id(p) for p in head.parameters()} & {id(p) for p in branch.parameters()}
    assert not shared and not ({id(p) for p in trunk.parameters()} & {id(p) for p in head.parameters()})
    trunk_params = sum(p.numel() for p in trunk.parameters())
    head_params = sum(p.numel() for p in head.parameters())
    assert trunk_params + head_params == sum(p.numel() for p in model.parameters())


def test_split_at_a_block_and_reset():
    model, _, x = build("cifar_resnet20")
    trunk, head = adapter.split(model, "layer3.0")  # ACKD-style: one block of stage 3 stays shared
    with torch.no_grad():
        assert torch.allclose(head(trunk(x)), model(x), atol=1e-5)
    before = [p.clone() for p in head.parameters()]
    adapter.reset_parameters(head, seed=1)
    assert any(not torch.equal(a, b) for a, b in zip(before, head.parameters()))
    with pytest.raises(ValueError, match="no block 'layer9.0'"):
        adapter.split(model, "layer9.0")
