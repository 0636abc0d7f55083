"""Values that pass their own field's check but not the data or the networks they meet (a batch larger than the
training set, a held-out split as large as a class, a crop padding wider than the image, a split point beyond a
network's stages, a table value or paper-table network the suite does not have): ``harness validate`` refuses each
in one line naming the key and what is valid, before anything trains (that every shipped suite passes:
tests/test_suites.py, through the index)."""
from pathlib import Path

import pytest
import yaml

from harness.cli import main

SUITES = Path(__file__).parents[1] / "suites"


def _quickstart(tmp_path, change) -> Path:
    suite = yaml.safe_load((SUITES / "quickstart.yaml").read_text())
    suite["dataset"] = {"name": "fashion_mnist_mini", "train_per_class": 100, "test_per_class": 100}  # clean, even
    change(suite)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def _recipe(**fields):
    return lambda s: s.update(recipe={"base": "quickstart", **fields})


def _method(entry):
    return lambda s: s["methods"].__setitem__(1, entry)


# name -> (change to the quickstart suite, words its one line must hold); its data here: 100 clean images per class
# × 10, 28×28
CASES = {
    "batch beyond the data": (_recipe(batch_size=1001), ["recipe.batch_size: 1001", "1000 training images",
                                                         "valid: 2..1000"]),
    "held-out as large as a class": (_method({"name": "kdcl", "target": "general", "val_per_class": 100}),
                                     ["methods[1].val_per_class", "100 in its smallest class", "valid: 1..99"]),
    "batch beyond what the held-out split leaves": (
        lambda s: (_recipe(batch_size=600)(s), _method({"name": "kdcl", "target": "general", "val_per_class": 50})(s)),
        ["recipe.batch_size: 600", "500 training images", "held-out split"]),
    "crop padding wider than the image": (_recipe(augment={"crop_padding": 29, "flip": True}),
                                          ["recipe.augment.crop_padding: 29", "28-pixel side", "valid: 0..28"]),
    "cutout wider than the image": (_recipe(augment={"cutout": 40}), ["recipe.augment.cutout: 40", "valid: 0..28"]),
    "ONE's split beyond the stages": (_method({"name": "one", "branch_stage": 9}),
                                      ["methods[1]: one cannot train cifar_resnet8+cifar_resnet8", "got [9]"]),
    "AMLN's blocks beyond the stages": (_method({"name": "amln", "blocks": 4}),
                                        ["methods[1]: amln cannot train", "blocks 4", "valid: 1..3"]),
    "a value naming a third network": (lambda s: s["table"].update(values=["net1", "net3"]),
                                       ["table.values[1]: 'net3'", "at most 2", "valid: net1..net2"]),
    "an own recipe's batch": (_method({"name": "dml", "recipe": {"base": "quickstart", "batch_size": 5000}}),
                              ["methods[1].recipe.batch_size: 5000"]),
}


@pytest.mark.parametrize("name", CASES)
def test_a_value_the_data_or_networks_cannot_take_is_one_line(name, tmp_path, capsys):
    change, words = CASES[name]
    path = _quickstart(tmp_path, change)
    assert main(["validate", str(path), "--results", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}: ") and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_the_same_values_within_bounds_are_accepted(tmp_path, capsys):
    """The bounds above are the edges: a batch of all 1000 images, padding of the full side, 3 AMLN blocks, a
    held-out split leaving 70 images for a batch of 64."""
    for change in (_recipe(batch_size=1000), _recipe(augment={"crop_padding": 28}),
                   _method({"name": "amln", "blocks": 3}),
                   _method({"name": "kdcl", "target": "general", "val_per_class": 93})):
        path = _quickstart(tmp_path, change)
        assert main(["validate", str(path), "--results", str(tmp_path / "none")]) == 0, capsys.readouterr().err


def test_imagenet_held_out_is_bounded_by_its_smallest_class(tmp_path, capsys):
    """ImageNet's classes hold 732 to 1,300 training images: a held-out split of 800 per class leaves some empty."""
    suite = yaml.safe_load((SUITES / "kdcl_table2.yaml").read_text())
    entry = next(m for m in suite["methods"] if isinstance(m, dict) and m.get("val_per_class"))
    entry["val_per_class"] = 800
    path = tmp_path / "kdcl_table2.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    assert main(["validate", str(path), "--results", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "732 in its smallest class" in err and "val_per_class" in err, err


def test_paper_table_networks_must_be_the_suites_and_the_tables(tmp_path, capsys):
    suite = yaml.safe_load((SUITES / "kdcl_table4.yaml").read_text())
    suite["paper_table"]["nets"] = {"mobilenetv2_100": "mobilenet_v9", "resnet_9": "resnet18"}
    path = tmp_path / "kdcl_table4.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    assert main(["validate", str(path), "--results", str(tmp_path / "none")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2, lines
    assert "paper_table.nets.mobilenetv2_100: 'mobilenet_v9' is not a network of kdcl_table4" in lines[0], lines
    assert "paper_table.nets.resnet_9: not a network of this suite's groups" in lines[1], lines
