"""ONE: the gate and the gated teacher, loss pieces on fixed tensors against numpy, the ramp-up, the branched
network (a split reproduces the model; branch copies; parameter counts against KDCL Table 3) and end-to-end runs."""
import math

import numpy as np
import pytest
import timm
import torch

import harness.models  # noqa: F401  (registers the CIFAR networks)
from harness.config.cell import Cell
from harness.data.batches import Batch
from harness.training.engine import Trainer
from harness.training.method import Step, load_methods
from methods.one import gated_teacher, one_terms, sigmoid_rampup
from tests.helpers import np_ce, np_softmax, timm_context, TINY_RECIPE

DATA = {"name": "fashion_mnist_mini", "train_per_class": 6, "test_per_class": 5}
Z = [[[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]],
     [[1.0, 1.5, 0.0], [-0.5, 2.0, 0.1]],
     [[0.3, -0.2, 0.9], [1.2, 0.0, -0.7]]]
G = [[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]
Y = [0, 2]


def context(group, classes=5, in_chans=3):
    return timm_context(group, classes, 32, in_chans=in_chans, num_train=8)


def make(k=3, name="cifar_resnet8", seed=0, **hparams):
    cls = load_methods().get("one")
    torch.manual_seed(seed)
    return cls(cls.HParams(**hparams), context([name] * k))


def np_kl_eps(teacher, student, t, eps):
    p = np_softmax(teacher, t) + eps
    q = np_softmax(student, t)
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))


# --- loss pieces ----------------------------------------------------------------------------------------------
def fixed():
    z = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in Z]
    g = torch.tensor(G, dtype=torch.float64, requires_grad=True)
    return z, g


def test_teacher_is_the_gated_sum_of_logits():
    z, g = fixed()
    expected = sum(np.array(G)[:, i:i + 1] * np.array(Z[i]) for i in range(3))
    np.testing.assert_allclose(gated_teacher(z, g).detach().numpy(), expected, atol=1e-15)
    # hand-computed: sample 0, class 0 = 0.5·2 + 0.3·1 + 0.2·0.3
    assert gated_teacher(z, g)[0, 0].item() == pytest.approx(1.36, abs=1e-12)


@pytest.mark.parametrize("eps", [0.0, 1e-7])
def test_loss_golden(eps):
    t, w = 3.0, 0.25
    hp = load_methods().get("one").HParams(target_eps=eps)
    z, g = fixed()
    terms = one_terms(z, gated_teacher(z, g), torch.tensor(Y), w, hp)
    teacher = sum(np.array(G)[:, i:i + 1] * np.array(Z[i]) for i in range(3))
    assert set(terms) == {"ce/net1", "ce/net2", "ce/net3", "ce/teacher", "kl/net1", "kl/net2", "kl/net3"}
    for i in range(3):
        assert terms[f"ce/net{i + 1}"].item() == pytest.approx(np_ce(Z[i], Y), abs=1e-12)
        assert terms[f"kl/net{i + 1}"].item() == pytest.approx(w * t * t * np_kl_eps(teacher, Z[i], t, eps), abs=1e-12)
    assert terms["ce/teacher"].item() == pytest.approx(np_ce(teacher, Y), abs=1e-12)


def test_hand_computed_kl():
    # two branches, uniform gate, two classes, T = 1: teacher = mean logits; KL(teacher ‖ branch 1) by hand.
    z = [torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64), torch.tensor([[0.0, 0.0]], dtype=torch.float64)]
    teacher = gated_teacher(z, torch.tensor([[0.5, 0.5]], dtype=torch.float64))  # logits (ln3/2, 0): p = (√3, 1)/(√3+1)
    hp = load_methods().get("one").HParams(temperature=1.0, target_eps=0.0)
    terms = one_terms(z, teacher, torch.tensor([0]), 1.0, hp)
    p = np.array([math.sqrt(3), 1.0]) / (math.sqrt(3) + 1)
    q = np.array([0.75, 0.25])
    assert terms["kl/net1"].item() == pytest.approx(float(np.sum(p * np.log(p / q))), abs=1e-12)
    assert terms["ce/net1"].item() == pytest.approx(-math.log(0.75), abs=1e-12)


def test_teacher_gets_no_kl_gradient_unless_asked():
    hp = load_methods().get("one").HParams()
    z, g = fixed()
    one_terms(z, gated_teacher(z, g), torch.tensor(Y), 1.0, hp)["kl/net1"].backward()
    assert z[0].grad.abs().sum() > 0 and z[1].grad is None and z[2].grad is None and g.grad is None
    z, g = fixed()
    one_terms(z, gated_teacher(z, g), torch.tensor(Y), 1.0, hp)["ce/teacher"].backward()
    assert g.grad.abs().sum() > 0 and all(v.grad.abs().sum() > 0 for v in z)  # the teacher learns from CE
    z, g = fixed()
    loose = hp.model_copy(update={"detach_teacher": False})
    one_terms(z, gated_teacher(z, g), torch.tensor(Y), 1.0, loose)["kl/net1"].backward()
    assert g.grad.abs().sum() > 0


def test_rampup_values():
    assert sigmoid_rampup(0, 80) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(40, 80) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(80, 80) == 1.0 and sigmoid_rampup(200, 80) == 1.0 and sigmoid_rampup(3, 0) == 1.0
    per_epoch, per_step = make(k=2), make(k=2, rampup_per_step=True)
    assert per_epoch.rampup(Step(40, 5, 300, 10)) == pytest.approx(math.exp(-1.25))
    assert per_step.rampup(Step(40, 5, 300, 10)) == pytest.approx(math.exp(-5 * (1 - 40.5 / 80) ** 2))


# --- the network -----------------------------------------------------------------------------------------------
def test_gate_sums_to_one_and_teacher_is_gated_sum():
    method = make(k=3)
    method.modules.eval()
    with torch.no_grad():
        logits, gate, teacher = method.forward(torch.randn(4, 3, 32, 32))
    assert gate.shape == (4, 3) and (gate >= 0).all()
    torch.testing.assert_close(gate.sum(1), torch.ones(4))
    torch.testing.assert_close(teacher, sum(gate[:, i:i + 1] * logits[i] for i in range(3)))


def test_loss_uses_the_epoch_rampup():
    method = make(k=2)
    batch = Batch(views=[torch.randn(4, 3, 32, 32)], y=torch.tensor([0, 1, 2, 3]), index=torch.arange(4))
    early, late = (method.losses(batch, Step(e, 0, 100, 1)) for e in (0, 80))
    assert early["kl/net1"].item() == pytest.approx(math.exp(-5) * late["kl/net1"].item(), rel=1e-5)
    assert early["ce/teacher"].item() == pytest.approx(late["ce/teacher"].item(), rel=1e-6)


def test_split_reproduces_the_model_without_reinit():
    torch.manual_seed(0)
    reference = timm.create_model("cifar_resnet8", num_classes=5).eval()
    x = torch.randn(3, 3, 32, 32)
    same, fresh, reset = make(k=3, reinit_branches=False), make(k=3), make(k=3, branch_init="reset")
    with torch.no_grad():
        expected = reference(x)
        for method in (same, fresh, reset):
            method.modules.eval()
        out = same.predict(x)
        for i in range(3):
            torch.testing.assert_close(out[f"net{i + 1}"], expected)
        for method in (fresh, reset):  # branch 1 keeps the created weights; the other branches are new
            out = method.predict(x)
            torch.testing.assert_close(out["net1"], expected)
            assert not torch.allclose(out["net2"], expected) and not torch.allclose(out["net3"], out["net2"])


def test_branch_init_follows_the_seed():
    def params(method):
        return torch.cat([p.detach().flatten() for p in method.modules.parameters()])

    for init in ("model", "reset"):
        a, b, c = make(k=2, branch_init=init), make(k=2, branch_init=init), make(k=2, branch_init=init, seed=1)
        assert torch.equal(params(a), params(b)) and not torch.equal(params(a), params(c))


def test_trunk_is_shared_and_parameters_are_grouped_once():
    method = make(k=3)
    trunk = method.peers[0][0]
    assert all(peer[0] is trunk for peer in method.peers)
    groups = method.optim_groups()["peers"].params
    assert [g.get("model") for g in groups] == ["cifar_resnet8"] * 3 + [None]  # one group per branch, the gate
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in method.modules.parameters()}
    model_params = sum(p.numel() for p in timm.create_model("cifar_resnet8", num_classes=5).parameters())
    head = sum(p.numel() for p in method.peers[1][1].parameters())
    assert method.deployed_parameters() == model_params
    breakdown = method.parameter_breakdown()
    assert breakdown == {"deployed": model_params, "other_branches": 2 * head, "extra_modules": 32 * 3 + 3 + 2 * 3}
    # the gate sees the trunk output (32 channels after stage 2 of ResNet-8)
    assert method.modules["gate"][0].in_features == 32


def test_resnet18_three_branches_match_kdcl_table3():
    # KDCL Table 3: ONE on ResNet-18 with 3 branches at Res4 has 29.5M parameters (ImageNet, 1000 classes)
    cls = load_methods().get("one")
    method = cls(cls.HParams(reinit_branches=False), context(["resnet18"] * 3, classes=1000))
    assert round(sum(p.numel() for p in method.modules.parameters()) / 1e6, 1) == 29.5
    assert method.deployed_parameters() == sum(p.numel() for p in timm.create_model("resnet18").parameters())


def test_group_must_be_one_architecture():
    cls = load_methods().get("one")
    with pytest.raises(ValueError, match="same architecture"):
        cls(cls.HParams(), context(["cifar_resnet8", "cifar_resnet14"]))
    with pytest.raises(ValueError, match="split stages"):
        cls(cls.HParams(branch_stage=3), context(["cifar_resnet8"] * 2))


# --- end to end ------------------------------------------------------------------------------------------------
def cell(k, seed=0, **hparams):
    return Cell(method="one", hparams=hparams, group=("cifar_resnet8",) * k, dataset=DATA, recipe=TINY_RECIPE, seed=seed)


@pytest.mark.parametrize("k", [2, 3])
def test_runs_end_to_end_and_checkpoint_round_trip(k):
    trainer = Trainer(cell(k))
    trainer.run()
    last = trainer.history[-1]
    for key in [f"top1/net{i + 1}" for i in range(k)] + ["top1/ens", "top1/teacher", "loss/ce/teacher",
                                                          f"loss/kl/net{k}", f"lr/net{k}"]:
        assert key in last
    assert all(math.isfinite(v) for v in last.values())
    if k == 2:  # one checkpoint round trip is enough
        restored = Trainer(cell(k))
        restored.load_state_dict(trainer.state_dict())
        for a, b in zip(trainer.method.modules.state_dict().values(), restored.method.modules.state_dict().values()):
            assert torch.equal(a, b)
        assert restored.evaluate() == trainer.evaluate()
