"""The CIFAR teacher files of RepDistiller and mdistiller ({"model": state_dict, "epoch", "optimizer", "best_acc"},
names after their model files) load into our networks: the test writes such files with their key layout, built by
its own rules from RepDistiller's model code as it reads (not from the loader's), and checks every tensor lands in
its place and that the record says which layout fitted."""
from __future__ import annotations

import re

import pytest
import timm
import torch

import harness.models  # noqa: F401
from harness.results.weights import StageError, load_networks

# RepDistiller's MobileNetV2 has seven groups of blocks, `blocks.<i>.<j>`, of these lengths (its
# interverted_residual_setting's n column); ours cuts the same 17 blocks into four stages of 3, 3, 7 and 4
MOBILENET_GROUPS = (1, 2, 3, 4, 3, 3, 1)
OUR_STAGES = ((0, 1), (2,), (3, 4), (5, 6))  # which of RepDistiller's groups each of our stages holds


def their_name(model: str, key: str) -> str:
    """Our parameter ``key`` of ``model`` under RepDistiller's name for it."""
    if model.startswith("cifar_wrn"):
        if key.startswith("norm."):
            return "bn1." + key[len("norm."):]
        key = re.sub(r"^block(\d)\.(\d+)\.", r"block\1.layer.\2.", key)
        return key.replace(".shortcut.", ".convShortcut.")
    if model.startswith("cifar_vgg"):
        return key.replace("fc.", "classifier.") if key.startswith("fc.") else key
    if model == "cifar_shufflenetv1":
        return key.replace("fc.", "linear.") if key.startswith("fc.") else key
    if model.startswith("cifar_mobilenetv2"):
        if key.startswith("fc."):
            return "classifier.0." + key[len("fc."):]
        match = re.match(r"^layer(\d)\.(\d+)\.(.*)$", key)
        if match:
            index = int(match[2])
            for group in OUR_STAGES[int(match[1]) - 1]:
                if index < MOBILENET_GROUPS[group]:
                    return f"blocks.{group}.{index}.{match[3]}"
                index -= MOBILENET_GROUPS[group]
        return key
    return key  # ResNets: the same names


def their_file(tmp_path, model: str, num_classes: int = 100):
    """A teacher file as RepDistiller's train_teacher.py saves it, with distinct values in every tensor."""
    ours = timm.create_model(model, num_classes=num_classes)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in ours.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
    state = {their_name(model, k): v.clone() for k, v in ours.state_dict().items()}
    path = tmp_path / f"{model}_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir()
    torch.save({"epoch": 240, "model": state, "best_acc": torch.tensor(75.6), "optimizer": {"state": {}}}, path)
    return path, ours, state


def test_their_wide_resnet_names_are_the_ones_their_code_makes(tmp_path):
    """WRN-16-2 as RepDistiller's wrn.py builds it: two blocks per group, a 1x1 shortcut where widths change."""
    _, _, state = their_file(tmp_path, "cifar_wrn_16_2")
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    expected = {"conv1.weight", "fc.weight", "fc.bias"} | {f"bn1.{p}" for p in bn}
    for b in (1, 2, 3):
        for i in (0, 1):
            prefix = f"block{b}.layer.{i}."
            expected |= {prefix + f"{norm}.{p}" for norm in ("bn1", "bn2") for p in bn}
            expected |= {prefix + "conv1.weight", prefix + "conv2.weight"}
        expected.add(f"block{b}.layer.0.convShortcut.weight")
    assert set(state) == expected


@pytest.mark.parametrize("model", ["cifar_resnet8", "cifar_resnet8x4", "cifar_wrn_16_2", "cifar_vgg8",
                                   "cifar_shufflenetv1", "cifar_mobilenetv2_x0_5"])
def test_a_repdistiller_teacher_file_loads_tensor_for_tensor(tmp_path, model):
    path, ours, _ = their_file(tmp_path, model)
    (loaded,), provenance = load_networks(path, (model,), num_classes=100, in_chans=3)
    # RepDistiller's ResNets have our names already: nothing renamed, nothing to record
    assert provenance.get("key_layout") == (None if "resnet" in model else "repdistiller")
    mine = loaded.state_dict()
    assert mine.keys() == ours.state_dict().keys()
    assert all(torch.equal(mine[k], v) for k, v in ours.state_dict().items())
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training


def test_mobilenet_groups_map_onto_our_stages(tmp_path):
    _, _, state = their_file(tmp_path, "cifar_mobilenetv2_x0_5")
    blocks = {(int(m[1]), int(m[2])) for k in state if (m := re.match(r"^blocks\.(\d+)\.(\d+)\.", k))}
    assert [sum(1 for g, _ in blocks if g == group) for group in range(7)] == list(MOBILENET_GROUPS)


def test_a_file_of_another_network_is_one_line(tmp_path):
    path, _, _ = their_file(tmp_path, "cifar_wrn_16_2")
    with pytest.raises(StageError) as info:
        load_networks(path, ("cifar_wrn_16_1",), num_classes=100, in_chans=3)
    message = str(info.value)
    assert "\n" not in message and "weights do not fit cifar_wrn_16_1" in message and "repdistiller" in message
    assert "block1.0.conv1.weight is (32, 16, 3, 3) in the file, (16, 16, 3, 3) in the network" in message


def test_a_teacher_for_another_number_of_classes_says_so(tmp_path):
    path, _, _ = their_file(tmp_path, "cifar_vgg8", num_classes=100)
    with pytest.raises(StageError) as info:
        load_networks(path, ("cifar_vgg8",), num_classes=10, in_chans=3)
    assert "(num_classes 10, in_chans 3)" in str(info.value)
    assert "fc.weight is (100, 512) in the file, (10, 512) in the network" in str(info.value)
