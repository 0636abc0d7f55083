"""CLNN: targets and loss on fixed logits against numpy, the backward-pass rescaling at every shared segment
(one and two sharing levels), the hierarchy's parameter count against KDCL Table 3, and end-to-end runs."""
import math

import numpy as np
import pytest
import timm
import torch

import harness.models  # noqa: F401  (registers the CIFAR networks)
from harness.config.cell import Cell
from harness.training.engine import Trainer
from harness.training.method import load_methods
from methods.clnn import clnn_terms, peer_targets
from tests.helpers import np_ce, np_kl, np_softmax, timm_context, TINY_RECIPE

DATA = {"name": "fashion_mnist_mini", "train_per_class": 6, "test_per_class": 5}
Z = [[[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]],
     [[1.0, 1.5, 0.0], [-0.5, 2.0, 0.1]],
     [[0.3, -0.2, 0.9], [1.2, 0.0, -0.7]]]
Y = [0, 2]


def context(group, classes=5):
    return timm_context(group, classes, 32, in_chans=3, num_train=8)


def make(k, name="cifar_resnet8", classes=5, **hparams):
    cls = load_methods().get("clnn")
    torch.manual_seed(0)
    return cls(cls.HParams(**hparams), context([name] * k, classes))


def hp(**kw):
    return load_methods().get("clnn").HParams(**kw)


# --- targets and loss ----------------------------------------------------------------------------------------
def test_targets_are_the_softened_mean_of_the_other_heads():
    t = 2.0
    z = [torch.tensor(v, dtype=torch.float64) for v in Z]
    targets = peer_targets(z, t)
    for h in range(3):
        others = np.mean([Z[j] for j in range(3) if j != h], axis=0)
        np.testing.assert_allclose(targets[h].numpy(), np_softmax(others, t), atol=1e-14)
    # two heads: the target of head 1 is head 2's softened prediction
    np.testing.assert_allclose(peer_targets(z[:2], t)[0].numpy(), np_softmax(Z[1], t), atol=1e-14)


def test_loss_golden():
    t, beta = 2.0, 0.5
    z = [torch.tensor(v, dtype=torch.float64) for v in Z]
    terms = clnn_terms(z, torch.tensor(Y), hp())
    assert set(terms) == {f"{k}/net{h}" for k in ("ce", "kl") for h in (1, 2, 3)}
    for h in range(3):
        others = np.mean([Z[j] for j in range(3) if j != h], axis=0)
        assert terms[f"ce/net{h + 1}"].item() == pytest.approx(beta * np_ce(Z[h], Y), abs=1e-12)
        assert terms[f"kl/net{h + 1}"].item() == pytest.approx((1 - beta) * t * t * np_kl(others, Z[h], t), abs=1e-12)
    other = clnn_terms(z, torch.tensor(Y), hp(beta=0.2, temperature=4.0))
    others = np.mean([Z[1], Z[2]], axis=0)
    assert other["kl/net1"].item() == pytest.approx(0.8 * 16 * np_kl(others, Z[0], 4.0), abs=1e-12)
    assert other["ce/net1"].item() == pytest.approx(0.2 * np_ce(Z[0], Y), abs=1e-12)


def test_hand_computed_two_heads():
    # T = 1, β = 0.5: head 1 p = (3/4, 1/4), head 2 uniform: kl/net1 = 0.5 · KL(uniform ‖ p1)
    z = [torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64), torch.tensor([[0.0, 0.0]], dtype=torch.float64)]
    terms = clnn_terms(z, torch.tensor([0]), hp(temperature=1.0))
    assert terms["kl/net1"].item() == pytest.approx(0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)),
                                                    abs=1e-12)
    assert terms["ce/net1"].item() == pytest.approx(-0.5 * math.log(0.75), abs=1e-12)


def test_targets_get_no_gradient_unless_asked():
    z = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in Z]
    clnn_terms(z, torch.tensor(Y), hp())["kl/net1"].backward()
    assert z[0].grad.abs().sum() > 0 and z[1].grad is None and z[2].grad is None
    z = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in Z]
    clnn_terms(z, torch.tensor(Y), hp(detach_target=False))["kl/net1"].backward()
    assert z[1].grad.abs().sum() > 0


# --- backward-pass rescaling ---------------------------------------------------------------------------------
def grads(method, x, probes, heads, rescale, params):
    """Gradient of Σ_{h in heads} <z_h, r_h> w.r.t. ``params``."""
    _, logits = method.net.forward(x, rescale=rescale)
    loss = sum((logits[h] * probes[h]).sum() for h in heads)
    out = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, out)]


def test_trunk_gradient_is_rescaled_by_the_number_of_heads():
    method = make(3)
    method.modules.double().eval()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    probes = [torch.randn(4, 5, dtype=torch.float64) for _ in range(3)]
    trunk = list(method.net.levels[0][0].parameters())
    scaled = grads(method, x, probes, range(3), True, trunk)
    per_head = [grads(method, x, probes, [h], False, trunk) for h in range(3)]
    for i, g in enumerate(scaled):
        torch.testing.assert_close(g, sum(p[i] for p in per_head) / 3)
    # a head's own layers are not rescaled
    head = list(method.peers[1][1].parameters())
    for a, b in zip(grads(method, x, probes, range(3), True, head), grads(method, x, probes, [1], False, head)):
        torch.testing.assert_close(a, b)
    # the forward pass is unchanged
    torch.testing.assert_close(method.net.forward(x, rescale=True)[1][2], method.net.forward(x)[1][2])


def test_two_level_hierarchy_rescales_at_every_split():
    method = make(4, branch_stages=(1, 2), fanouts=(2, 2))
    method.modules.double().eval()
    assert [len(level) for level in method.net.levels] == [1, 2, 4]
    assert method.peers[0][1] is method.peers[1][1] and method.peers[2][1] is method.peers[3][1]
    assert method.peers[1][1] is not method.peers[2][1]
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    probes = [torch.randn(4, 5, dtype=torch.float64) for _ in range(4)]
    root = list(method.net.levels[0][0].parameters())
    middle = list(method.net.levels[1][1].parameters())  # shared by heads 3 and 4
    per_head = [grads(method, x, probes, [h], False, root + middle) for h in range(4)]
    scaled = grads(method, x, probes, range(4), True, root + middle)
    for i, g in enumerate(scaled):
        if i < len(root):
            torch.testing.assert_close(g, sum(p[i] for p in per_head) / 4)
        else:
            torch.testing.assert_close(g, (per_head[2][i] + per_head[3][i]) / 2)
            assert per_head[0][i].abs().sum() == 0


def test_kdcl_table3_hierarchy_has_40_5m_parameters():
    # KDCL Table 3: CLNN on ResNet-18, 4 heads, hierarchical, 40.5M parameters (ImageNet, 1000 classes)
    method = make(4, name="resnet18", classes=1000, branch_stages=(2, 3), fanouts=(2, 2), reinit_branches=False)
    assert round(sum(p.numel() for p in method.modules.parameters()) / 1e6, 1) == 40.5
    assert method.deployed_parameters() == sum(p.numel() for p in timm.create_model("resnet18").parameters())
    groups = method.optim_groups()["peers"].params
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(groups) == 4 and len(ids) == len(set(ids)) == len(list(method.modules.parameters()))


def test_invalid_groups_and_hierarchies():
    cls = load_methods().get("clnn")
    with pytest.raises(ValueError, match="same architecture"):
        cls(cls.HParams(), context(["cifar_resnet8", "cifar_wrn_16_2"]))
    with pytest.raises(ValueError, match="multiplying to the 3"):
        cls(cls.HParams(branch_stages=(1, 2), fanouts=(2, 2)), context(["cifar_resnet8"] * 3))
    with pytest.raises(ValueError, match="split stages must increase"):
        cls(cls.HParams(branch_stages=(2, 1), fanouts=(2, 2)), context(["cifar_resnet8"] * 4))


# --- end to end ----------------------------------------------------------------------------------------------
def cell(k, **hparams):
    return Cell(method="clnn", hparams=hparams, group=("cifar_resnet8",) * k, dataset=DATA, recipe=TINY_RECIPE, seed=0)


@pytest.mark.parametrize("k", [2, 3])
def test_runs_end_to_end_and_checkpoint_round_trip(k):
    trainer = Trainer(cell(k))
    trainer.run()
    last = trainer.history[-1]
    for key in [f"top1/net{i + 1}" for i in range(k)] + ["top1/ens", f"loss/kl/net{k}", f"loss/ce/net{k}"]:
        assert key in last
    assert all(math.isfinite(v) for v in last.values())
    if k == 2:  # one checkpoint round trip is enough
        restored = Trainer(cell(k))
        restored.load_state_dict(trainer.state_dict())
        for a, b in zip(trainer.method.modules.state_dict().values(), restored.method.modules.state_dict().values()):
            assert torch.equal(a, b)
        assert restored.evaluate() == trainer.evaluate()
