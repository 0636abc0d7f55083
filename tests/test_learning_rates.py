"""A network's own learning rate (``Recipe.peer_lr``) reaches every module that belongs to it: ACKD's auxiliary
learners and attention, the offline feature methods' heads, ONE's gate, FFL's fusion module (unless the method sets
its own rate); every optimizer group's learning rate is recorded per epoch."""
import pytest
import timm
import torch

from harness.config.cell import Cell
from harness.config.recipe import Recipe
from harness.training.engine import Trainer, build_method_optimizer
from harness.training.method import load_methods
from tests.helpers import timm_context, TINY_RECIPE

pytestmark = pytest.mark.usefixtures("one_thread")

MOBILE, RESNET = "cifar_mobilenetv2_x0_5", "cifar_resnet8"
RECIPE = Recipe.model_validate({**TINY_RECIPE, "optimizer": {**TINY_RECIPE["optimizer"], "lr": 0.1},
                                "peer_lr": {"cifar_mobilenetv2*": 0.03}})


def method(name, group, **hparams):
    cls = load_methods().get(name)
    torch.manual_seed(0)
    teacher = timm.create_model(group[0], num_classes=3, in_chans=1).requires_grad_(False).eval()
    ctx = timm_context(group, 3, 16, 1, load_stage=lambda stage: [teacher])
    return cls(cls.HParams(**hparams), ctx)


def rates(m) -> dict[str, list[tuple[str, float]]]:
    """(group label, learning rate) of every trainable parameter group, per optimizer."""
    out = {}
    for key, group in m.optim_groups().items():
        optimizer = build_method_optimizer(RECIPE, group)
        out[key] = [(g.get("model") or g.get("name", "?"), g["lr"]) for g in optimizer.param_groups if g["params"]]
    return out


@pytest.mark.parametrize("name, hparams", [("ackd", {}), ("vid", {}), ("cc", {}), ("semckd", {"beta": 40.0})])
def test_an_offline_students_modules_follow_the_students_rate(name, hparams):
    groups = rates(method(name, (RESNET, MOBILE), **hparams))["peers"]
    assert groups[0] == (MOBILE, pytest.approx(0.03))
    assert len(groups) == 2 and groups[1][1] == pytest.approx(0.03), groups  # learners / heads / regressors
    # the same methods with a ResNet student: the base rate everywhere
    assert [lr for _, lr in rates(method(name, (MOBILE, RESNET), **hparams))["peers"]] == [pytest.approx(0.1)] * 2


def test_ones_gate_and_ffls_fusion_follow_the_networks_rate():
    gate = rates(method("one", (MOBILE, MOBILE)))["peers"]
    assert [lr for _, lr in gate] == [pytest.approx(0.03)] * len(gate) and gate[-1][0] == "extra"
    ffl = rates(method("ffl", (MOBILE, MOBILE)))
    assert ffl["fusion"] == [("fusion", pytest.approx(0.03))]
    own = rates(method("ffl", (MOBILE, MOBILE), fusion_lr=0.2))  # the method's own rate wins
    assert own["fusion"] == [("fusion", pytest.approx(0.2))]


def test_shared_modules_of_different_networks_keep_the_base_rate():
    m = load_methods().get("dml")
    dml = m(m.HParams(), timm_context((MOBILE, RESNET), 3, 16, 1))
    assert dml.extra_owner() is None
    assert dml.extra_group([]) == {"params": [], "name": "extra"}


def test_every_groups_rate_is_recorded_per_epoch():
    data = {"name": "fashion_mnist_mini", "train_per_class": 4, "test_per_class": 2}
    recipe = {**TINY_RECIPE, "epochs": 1, "batch_size": 20, "peer_lr": {"cifar_mobilenetv2*": 0.02}}
    trainer = Trainer(Cell(method="one", hparams={}, group=(MOBILE, MOBILE), dataset=data, recipe=recipe, seed=0))
    trainer.run()
    first = trainer.history[0]
    assert first["lr/net1"] == first["lr/net2"] == pytest.approx(0.02)
    assert first["lr/peers/net1"] == first["lr/peers/extra"] == pytest.approx(0.02)
