"""ESKD's early-stopped teacher and TAKD's three-stage chain: what each stage is, that it runs in order, stops
where told, and that each student's record names the network it learnt from."""
import pytest
import torch

from harness.config.cell import Cell
from harness.results.store import ResultStore
from harness.results.weights import load_networks
from harness.suite.schema import SuiteError, load_suite
from harness.suite.smoke import smoke_hparams
from harness.training.engine import Trainer
from harness.training.method import load_methods
from harness.training.stages import stages_of, waves
from methods.eskd import compressed_recipe
from tests.helpers import TINY_RECIPE, tiny_suite_dict, train_stages

DATA = {"name": "fashion_mnist_mini", "train_per_class": 6, "test_per_class": 5}
PAPER_RECIPE = {**TINY_RECIPE, "epochs": 200, "schedule": {"name": "multistep", "milestones": [100, 150]}}


def cell(method, recipe=TINY_RECIPE, group=("cifar_resnet14", "cifar_resnet8"), dataset=DATA, **hparams) -> Cell:
    return Cell(method=method, hparams=hparams, group=group, dataset=dataset, recipe=recipe, seed=3, label=method)


def test_eskd_teacher_is_a_compressed_65_epoch_run_by_default():
    teacher = stages_of(cell("eskd", PAPER_RECIPE))["teacher"].cell
    assert teacher.method == "ind" and teacher.group == ("cifar_resnet14",) and teacher.seed == 0
    assert teacher.recipe["epochs"] == 65 and teacher.stop_epoch is None
    assert teacher.recipe["schedule"]["milestones"] == [32, 48]  # 32.5 and 48.75, each down to its whole epoch
    imagenet = stages_of(cell("eskd", PAPER_RECIPE, dataset={"name": "imagenet"}))["teacher"].cell
    assert imagenet.recipe["epochs"] == 35
    # the snapshot reading: the unchanged 200-epoch schedule, stopped after epoch 65
    snap = stages_of(cell("eskd", PAPER_RECIPE, teacher_schedule="snapshot"))["teacher"].cell
    assert snap.recipe == PAPER_RECIPE and snap.stop_epoch == 65
    # a full KD teacher of the same network is another cell
    assert snap.hash != stages_of(cell("kd", PAPER_RECIPE))["teacher"].cell.hash != teacher.hash


def test_compressed_recipe_scales_milestones_and_warmup():
    out = compressed_recipe({**PAPER_RECIPE, "warmup_epochs": 5}, 20)
    assert out["epochs"] == 20 and out["schedule"]["milestones"] == [10, 15] and out["warmup_epochs"] == 5
    assert compressed_recipe(PAPER_RECIPE, 2)["schedule"]["milestones"] == [1]  # 1.0 and 1.5: one decay


def test_eskd_teacher_stops_where_told(tmp_path):
    student = cell("eskd", {**TINY_RECIPE, "epochs": 4}, teacher_epochs=2, teacher_schedule="snapshot")
    teacher = stages_of(student)["teacher"].cell
    trainer = Trainer(teacher)
    trainer.run()
    assert [h["epoch"] for h in trainer.history] == [1, 2] and trainer.recipe.epochs == 4
    # default on a short recipe: one epoch before the end, never the whole run
    short = stages_of(cell("eskd", TINY_RECIPE))["teacher"].cell
    assert short.recipe["epochs"] == 1


def test_eskd_teacher_epochs_past_the_schedule_is_a_suite_error(write_suite):
    raw = tiny_suite_dict(groups=[["cifar_resnet14", "cifar_resnet8"]],
                          methods=[{"name": "eskd", "teacher_epochs": 2}])
    with pytest.raises(SuiteError) as info:
        load_suite(write_suite(raw))
    assert any("methods[0].teacher_epochs: 2 does not stop the teacher's 2-epoch schedule early" in line
               for line in info.value.lines)


def test_smoke_keeps_explicit_early_stops_inside_the_smoke_run():
    assert smoke_hparams({"teacher_epochs": 65, "teacher_stop_epoch": 30}) == {"teacher_epochs": 1,
                                                                              "teacher_stop_epoch": 1}


def test_eskd_kd_stop_epoch_turns_the_kd_term_off(tmp_path):
    student = cell("eskd", {**TINY_RECIPE, "epochs": 3}, kd_stop_epoch=1)
    trainer = Trainer(student, train_stages(student, tmp_path))
    trainer.run()
    kd = [h["loss/kd"] for h in trainer.history]
    assert kd[0] > 0 and kd[1] == 0 and kd[2] == 0


def test_takd_runs_three_stages_in_order_sharing_the_teacher(tmp_path):
    takd = cell("takd", assistant="cifar_resnet8", group=("cifar_resnet14", "cifar_resnet8"))
    kd = cell("kd")
    plan = waves([takd, kd])
    assert [sorted(c.method for c in wave) for wave in plan] == [["ind"], ["kd", "kd"], ["takd"]]
    assistant = stages_of(takd)["assistant"].cell
    assert assistant.method == "kd" and assistant.group == ("cifar_resnet14", "cifar_resnet8")
    assert stages_of(assistant)["teacher"].cell.hash == stages_of(kd)["teacher"].cell.hash  # one teacher for both

    runtime = train_stages(takd, tmp_path)
    store = ResultStore(tmp_path)
    assert store.weights_path(assistant.hash).is_file() and store.weights_path(stages_of(assistant)["teacher"].cell.hash).is_file()
    trainer = Trainer(takd, runtime)
    assert trainer.stage_provenance["assistant"]["cell_hash"] == assistant.hash
    x = torch.randn(4, 1, 28, 28)
    (assistant_net,), _ = load_networks(store.weights_path(assistant.hash), ("cifar_resnet8",))
    with torch.no_grad():  # the network TAKD's student learns from is the trained assistant
        assert torch.allclose(trainer.method.teacher(x), assistant_net(x), atol=1e-5)


def test_takd_assistant_by_the_papers_rule_or_a_clear_error():
    takd = load_methods().get("takd")
    hp = takd.HParams()
    assert stages_of(cell("takd", group=("cifar_resnet110", "cifar_resnet20")))["assistant"].cell.group == (
        "cifar_resnet110", "cifar_resnet44")
    assert takd.group_error(hp, ("cifar_wrn_28_4", "cifar_resnet56")) is None
    assert "set assistant: <model name>" in takd.group_error(hp, ("cifar_resnet14", "cifar_resnet8"))


def test_analysis_roles_name_teacher_and_proxy():
    eskd = cell("eskd", PAPER_RECIPE)
    roles = load_methods().get("eskd").analysis_roles(load_methods().get("eskd").HParams(), eskd)
    assert roles["teacher"].cell.recipe["epochs"] == 200 and roles["proxy"].cell.recipe["epochs"] == 65
    takd = cell("takd", group=("cifar_resnet110", "cifar_resnet20"))
    roles = load_methods().get("takd").analysis_roles(load_methods().get("takd").HParams(), takd)
    assert roles["teacher"].cell.group == ("cifar_resnet110",) and roles["proxy"].cell.method == "kd"
