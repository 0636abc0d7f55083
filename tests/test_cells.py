"""Grid expansion and the stability of cell hashes."""
import json
import subprocess
import sys

from harness.config.cell import Cell
from harness.suite.schema import load_suite
from tests.helpers import tiny_suite_dict


def test_grid_is_groups_x_methods_x_seeds(write_suite):
    suite = load_suite(write_suite(tiny_suite_dict(
        groups=[["cifar_resnet8", "cifar_resnet8"], ["cifar_resnet8", "cifar_resnet14", "cifar_resnet8"]],
        seeds=[0, 1, 2])))
    assert len(suite.cells) == 2 * 2 * 3
    assert len({c.hash for c in suite.cells}) == 12
    first = suite.cells[0]
    assert first.group == ("cifar_resnet8", "cifar_resnet8") and first.method == "ind" and first.seed == 0
    dml = [c for c in suite.cells if c.method == "dml"][0]
    assert dml.hparams == {"temperature": 2.0, "kl_weight": 1.0, "t2_scaling": True,
                           "peer_reduction": "mean", "update": "joint"}
    assert dml.recipe["epochs"] == 2 and dml.recipe["optimizer"]["nesterov"] is False  # defaults filled in


def test_hparam_grid_expands_with_labels(write_suite):
    suite = load_suite(write_suite(tiny_suite_dict(methods=[{"name": "dml", "temperature": {"grid": [1, 4]}}])))
    assert suite.labels() == ["dml[temperature=1]", "dml[temperature=4]"]
    assert {c.hparams["temperature"] for c in suite.cells} == {1.0, 4.0}


def test_recipe_preset_with_override(write_suite):
    suite = load_suite(write_suite(tiny_suite_dict(recipe={"base": "tsb_cifar", "epochs": 3})))
    recipe = suite.cells[0].recipe
    assert recipe["epochs"] == 3 and recipe["batch_size"] == 64 and recipe["schedule"]["milestones"] == [150, 180, 210]


def test_suite_defined_recipe(write_suite):
    suite = load_suite(write_suite(tiny_suite_dict(
        recipes={"mine": {"base": "kdcl_cifar", "epochs": 7}}, recipe={"base": "mine", "batch_size": 16})))
    recipe = suite.cells[0].recipe
    assert (recipe["epochs"], recipe["batch_size"], recipe["optimizer"]["lr"]) == (7, 16, 0.1)


def _cell(**changes) -> Cell:
    base = dict(method="dml", hparams={"temperature": 3.0}, group=("cifar_resnet32", "cifar_resnet32"),
                dataset={"name": "cifar100"}, recipe={"epochs": 200, "source": "x"}, seed=0, label="dml")
    base.update(changes)
    return Cell(**base)


def test_hash_is_pinned():
    # Changing this value means every stored result of every user is orphaned: bump HASH_FORMAT on purpose only.
    assert _cell().hash == PINNED


def test_hash_ignores_cosmetics_and_key_order():
    assert _cell(label="DML (T=3)", suite="other").hash == _cell().hash
    assert _cell(recipe={"source": "y", "epochs": 200}).hash == _cell().hash
    assert _cell(dataset={"name": "cifar100", "root": "/data"}).hash == _cell().hash


def test_hash_changes_with_what_defines_a_result():
    h = _cell().hash
    assert _cell(seed=1).hash != h
    assert _cell(hparams={"temperature": 4.0}).hash != h
    assert _cell(group=("cifar_resnet32", "cifar_resnet20")).hash != h
    assert _cell(recipe={"epochs": 199}).hash != h
    assert _cell(method="kd").hash != h


def test_hash_is_the_same_in_another_process():
    """Another interpreter, another string-hash seed: the same hash (the other process imports only the cell)."""
    code = "import json, sys; from harness.config.cell import Cell; print(Cell.from_dict(json.loads(sys.argv[1])).hash)"
    out = subprocess.run([sys.executable, "-c", code, json.dumps(_cell().to_dict())], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=__file__.rsplit("/tests/", 1)[0])
    assert out.stdout.strip() == _cell().hash


def test_cell_round_trips_through_a_dict():
    cell = _cell()
    assert Cell.from_dict(cell.to_dict()) == cell and Cell.from_dict(cell.to_dict()).hash == cell.hash


PINNED = "c426caa4b0d897e0"
