"""DML losses on fixed tensors against an independent numpy computation, and its two update orders."""
import numpy as np
import pytest
import torch

from harness.training.method import load_methods
from tests.helpers import fixed_batch, fixed_context, np_ce, np_kl, np_softmax

Z1 = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]]
Z2 = [[1.0, 1.5, 0.0], [-0.5, 2.0, 0.1]]
Z3 = [[0.3, -0.2, 0.9], [1.2, 0.0, -0.7]]
Y = [0, 2]


def make(logits, **hparams):
    cls = load_methods().get("dml")
    method = cls(cls.HParams(**hparams), fixed_context(logits, 3))
    method.optimizers = {"peers": torch.optim.SGD(method.modules.parameters(), lr=0.5)}
    return method


def test_two_peers_golden():
    t = 3.0
    terms = make([Z1, Z2], temperature=t).losses(fixed_batch(Y), None)
    assert terms["ce/net1"].item() == pytest.approx(np_ce(Z1, Y), abs=1e-12)
    assert terms["ce/net2"].item() == pytest.approx(np_ce(Z2, Y), abs=1e-12)
    assert terms["kl/net1"].item() == pytest.approx(t * t * np_kl(Z2, Z1, t), abs=1e-12)
    assert terms["kl/net2"].item() == pytest.approx(t * t * np_kl(Z1, Z2, t), abs=1e-12)


def test_hand_computed_value():
    # Peer 1 certain of class 0 vs a uniform peer 2 over 2 classes, T = 1: KL(uniform || p1).
    z1, z2 = [[np.log(3.0), 0.0]], [[0.0, 0.0]]  # p1 = (3/4, 1/4), p2 = (1/2, 1/2)
    terms = make([z1, z2]).losses(fixed_batch([0]), None)
    expected = 0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(0.5 / 0.25)
    assert terms["kl/net1"].item() == pytest.approx(expected, abs=1e-12)
    assert terms["ce/net1"].item() == pytest.approx(-np.log(0.75), abs=1e-12)


def test_three_peers_mean_and_sum():
    t = 2.0
    mean = make([Z1, Z2, Z3], temperature=t).losses(fixed_batch(Y), None)
    total = make([Z1, Z2, Z3], temperature=t, peer_reduction="sum", kl_weight=0.5).losses(fixed_batch(Y), None)
    kl_1 = t * t * (np_kl(Z2, Z1, t) + np_kl(Z3, Z1, t))
    assert mean["kl/net1"].item() == pytest.approx(kl_1 / 2, abs=1e-12)
    assert total["kl/net1"].item() == pytest.approx(0.5 * kl_1, abs=1e-12)


def test_no_t2_scaling():
    terms = make([Z1, Z2], temperature=4.0, t2_scaling=False).losses(fixed_batch(Y), None)
    assert terms["kl/net1"].item() == pytest.approx(np_kl(Z2, Z1, 4.0), abs=1e-12)


def test_peer_target_gets_no_gradient():
    method = make([Z1, Z2], temperature=2.0)
    method.losses(fixed_batch(Y), None)["kl/net1"].backward()
    assert method.peers[1].logits.grad is None
    assert method.peers[0].logits.grad.abs().sum() > 0


def _manual_grad(student, target, y, t):
    """Gradient of CE + T²·KL(softmax(target/T) ‖ softmax(student/T)) w.r.t. student logits (batch mean)."""
    student = np.asarray(student, dtype=np.float64)
    onehot = np.eye(student.shape[1])[y]
    ce = np_softmax(student) - onehot
    kl = t * (np_softmax(student, t) - np_softmax(target, t))
    return (ce + kl) / len(y)


def test_joint_update_uses_this_batch_predictions():
    t, lr = 2.0, 0.5
    method = make([Z1, Z2], temperature=t)
    method.train_step(fixed_batch(Y), None)
    np.testing.assert_allclose(method.peers[0].logits.detach().numpy(), np.array(Z1) - lr * _manual_grad(Z1, Z2, Y, t), atol=1e-12)
    np.testing.assert_allclose(method.peers[1].logits.detach().numpy(), np.array(Z2) - lr * _manual_grad(Z2, Z1, Y, t), atol=1e-12)


def test_sequential_update_sees_updated_peer():
    t, lr = 2.0, 0.5
    method = make([Z1, Z2], temperature=t, update="sequential")
    method.train_step(fixed_batch(Y), None)
    z1_new = np.array(Z1) - lr * _manual_grad(Z1, Z2, Y, t)
    z2_new = np.array(Z2) - lr * _manual_grad(Z2, z1_new, Y, t)
    np.testing.assert_allclose(method.peers[0].logits.detach().numpy(), z1_new, atol=1e-12)
    np.testing.assert_allclose(method.peers[1].logits.detach().numpy(), z2_new, atol=1e-12)
