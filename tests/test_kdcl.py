"""KDCL: every soft-target generator on fixed logits against numpy, the Linear solver against a grid search,
General's weights from a hand-built C and from a validation pass, ICL views and end-to-end runs."""
import io
import itertools

import numpy as np
import pytest
import torch

from harness.config.cell import Cell
from harness.training.engine import Trainer
from harness.training.method import load_methods
from methods.kdcl import (error_covariance, linear_weights, minlogit_target, naive_target, project_simplex,
                          simplex_weights, weights_from_c)
from tests.helpers import fixed_batch, fixed_context, np_ce, np_softmax, TINY_RECIPE

Z1 = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [1.0, -1.0, 0.5]]
Z2 = [[1.0, 1.5, 0.0], [-0.5, 2.0, 0.1], [0.2, 0.4, 2.0]]
Z3 = [[0.3, -0.2, 0.9], [1.2, 0.0, -0.7], [0.0, 0.0, 0.0]]
Y = [0, 2, 1]
DATA = {"name": "fashion_mnist_mini", "train_per_class": 6, "test_per_class": 5}


def make(logits, **hparams):
    cls = load_methods().get("kdcl")
    method = cls(cls.HParams(**hparams), fixed_context(logits, 3))
    method.optimizers = {"peers": torch.optim.SGD(method.modules.parameters(), lr=0.5)}
    return method


def np_ce_rows(z, y):
    p = np_softmax(z)
    return -np.log(p[np.arange(len(y)), y])


def np_kl_to(target_probs, student_logits, t):
    """mean over the batch of KL(target ‖ softmax(student / t))."""
    p, q = np.asarray(target_probs), np_softmax(student_logits, t)
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))


def check_terms(terms, peers, target_probs, t, weight=1.0):
    for k, z in enumerate(peers):
        assert terms[f"ce/net{k + 1}"].item() == pytest.approx(np_ce(z, Y), abs=1e-12)
        assert terms[f"kl/net{k + 1}"].item() == pytest.approx(weight * t * t * np_kl_to(target_probs, z, t), abs=1e-12)


# --- Naive ---------------------------------------------------------------------------------------------------

def test_naive_per_sample_golden():
    t = 2.0
    peers = [Z1, Z2, Z3]
    ce = np.stack([np_ce_rows(z, Y) for z in peers])  # (K, B)
    teacher = np.stack([np.asarray(peers[k][n]) for n, k in enumerate(ce.argmin(0))])
    assert len(set(ce.argmin(0))) > 1  # the example really mixes peers
    method = make(peers, target="naive", temperature=t)
    terms = method.losses(fixed_batch(Y), None)
    check_terms(terms, peers, np_softmax(teacher, t), t)
    z = torch.tensor([Z1, Z2, Z3], dtype=torch.float64)
    np.testing.assert_allclose(naive_target(z, torch.tensor(Y)).numpy(), teacher, atol=0)


def test_naive_per_batch_golden():
    t, lam = 3.0, 0.7
    peers = [Z1, Z2, Z3]
    best = int(np.argmin([np_ce(z, Y) for z in peers]))
    method = make(peers, target="naive", naive_per="batch", temperature=t, kd_weight=lam)
    check_terms(method.losses(fixed_batch(Y), None), peers, np_softmax(peers[best], t), t, lam)
    z = torch.tensor([Z1, Z2, Z3], dtype=torch.float64)
    np.testing.assert_allclose(naive_target(z, torch.tensor(Y), "batch").numpy(), np.asarray(peers[best]), atol=0)


# --- MinLogit ------------------------------------------------------------------------------------------------

def test_minlogit_by_hand():
    # One sample of class 1.  Peer 1: (1, 3, 0) - 3 = (-2, 0, -3); peer 2: (2, 2.5, -1) - 2.5 = (-0.5, 0, -3.5).
    z = torch.tensor([[[1.0, 3.0, 0.0]], [[2.0, 2.5, -1.0]]], dtype=torch.float64)
    np.testing.assert_allclose(minlogit_target(z, torch.tensor([1])).numpy(), [[-2.0, 0.0, -3.5]], atol=1e-15)


def test_minlogit_loss_golden():
    t = 2.0
    peers = [Z1, Z2, Z3]
    shifted = [np.asarray(z) - np.asarray(z)[np.arange(3), Y][:, None] for z in peers]
    teacher = np.minimum.reduce(shifted)
    assert np.all(teacher[np.arange(3), Y] == 0)
    check_terms(make(peers, target="minlogit", temperature=t).losses(fixed_batch(Y), None), peers,
                np_softmax(teacher, t), t)


# --- Linear ----------------------------------------------------------------------------------------------------

def test_simplex_projection():
    v = torch.tensor([[0.3, 0.3], [2.0, -1.0], [0.5, 0.4], [5.0, 5.0]], dtype=torch.float64)
    np.testing.assert_allclose(project_simplex(v).numpy(), [[0.5, 0.5], [1.0, 0.0], [0.55, 0.45], [0.5, 0.5]],
                               atol=1e-12)


# Sample 0: the peers favour different wrong classes, so a mix beats both; sample 1: peer 1 is simply better.
LIN_A = [[2.0, 0.0, 3.0], [3.0, 0.0, -1.0], [0.5, 1.0, 0.0]]
LIN_B = [[2.0, 3.0, 0.0], [1.0, 2.0, 0.0], [0.0, -0.5, 1.5]]
LIN_Y = [0, 0, 2]
GRID = np.linspace(0.0, 1.0, 20001)


def grid_ce(za, zb, y):
    """(G, B): CE of a·z_a + (1 − a)·z_b per sample for every a on the grid."""
    za, zb = np.asarray(za), np.asarray(zb)
    mixed = GRID[:, None, None] * za[None] + (1 - GRID)[:, None, None] * zb[None]
    mixed = mixed - mixed.max(2, keepdims=True)
    log_p = mixed - np.log(np.exp(mixed).sum(2, keepdims=True))
    return -log_p[:, np.arange(len(y)), y]


def mix_ce(alpha, peers, y):
    z = np.einsum("bk,kbc->bc", alpha, np.asarray(peers))
    return np_ce_rows(z, y)


def test_linear_per_sample_matches_grid_search_and_beats_vertices():
    peers, y = [LIN_A, LIN_B], LIN_Y
    alpha = linear_weights(torch.tensor(peers, dtype=torch.float64), torch.tensor(y), "sample", 50).numpy()
    np.testing.assert_allclose(alpha.sum(1), 1.0, atol=1e-12)
    assert (alpha >= 0).all()
    table = grid_ce(LIN_A, LIN_B, y)
    solved = mix_ce(alpha, peers, y)
    np.testing.assert_allclose(alpha[:, 0], GRID[table.argmin(0)], atol=2e-4)
    assert np.all(solved <= table.min(0) + 1e-9)
    vertices = np.stack([np_ce_rows(z, y) for z in peers])
    assert np.all(solved <= vertices.min(0) + 1e-12)
    assert solved[0] < vertices[:, 0].min() - 0.1  # the interior mix is strictly better on sample 0


def test_linear_per_batch_matches_grid_search():
    peers, y = [LIN_A, LIN_B], LIN_Y
    alpha = linear_weights(torch.tensor(peers, dtype=torch.float64), torch.tensor(y), "batch", 50).numpy()
    assert alpha.shape == (1, 2)
    table = grid_ce(LIN_A, LIN_B, y).mean(1)
    solved = mix_ce(np.repeat(alpha, 3, 0), peers, y).mean()
    assert alpha[0, 0] == pytest.approx(GRID[table.argmin()], abs=2e-4)
    assert solved <= table.min() + 1e-9
    assert solved <= min(np_ce(z, y) for z in peers) + 1e-12


def test_linear_three_peers_beats_a_simplex_grid():
    peers = [Z1, Z2, Z3]
    alpha = linear_weights(torch.tensor(peers, dtype=torch.float64), torch.tensor(Y), "sample", 50).numpy()
    steps = 100
    points = np.array([(i, j, steps - i - j) for i, j in itertools.product(range(steps + 1), repeat=2)
                       if i + j <= steps], dtype=np.float64) / steps
    grid = np.stack([np_ce_rows(np.einsum("k,kbc->bc", a, np.asarray(peers)), Y) for a in points])
    assert np.all(mix_ce(alpha, peers, Y) <= grid.min(0) + 1e-9)


def test_linear_loss_uses_the_optimal_mix():
    t = 2.0
    peers, y = [LIN_A, LIN_B], LIN_Y
    a = GRID[grid_ce(LIN_A, LIN_B, y).argmin(0)]
    teacher = a[:, None] * np.asarray(LIN_A) + (1 - a)[:, None] * np.asarray(LIN_B)
    method = make(peers, target="linear", temperature=t)
    terms = method.losses(fixed_batch(y), None)
    for k, z in enumerate(peers):
        assert terms[f"kl/net{k + 1}"].item() == pytest.approx(t * t * np_kl_to(np_softmax(teacher, t), z, t),
                                                             abs=1e-6)


# --- General ----------------------------------------------------------------------------------------------------

def test_general_weights_from_hand_built_c():
    # 2 peers, C = [[a, c], [c, b]]: w = (b − c, a − c) / (a + b − 2c).
    c = torch.tensor([[0.1, 0.05], [0.05, 0.2]], dtype=torch.float64)
    np.testing.assert_allclose(weights_from_c(c, ridge=0.0).numpy(), [0.75, 0.25], atol=1e-12)
    # 3 uncorrelated peers: w ∝ 1 / C_ii; the ridge adds ridge · tr(C)/K = 0.5 · 7/3 to each diagonal entry.
    diag = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    np.testing.assert_allclose(weights_from_c(diag, ridge=0.0).numpy(), [4 / 7, 2 / 7, 1 / 7], atol=1e-12)
    inv = 1 / np.array([13 / 6, 19 / 6, 31 / 6])
    np.testing.assert_allclose(weights_from_c(diag, ridge=0.5).numpy(), inv / inv.sum(), atol=1e-12)
    np.testing.assert_allclose(weights_from_c(diag).numpy(), [4 / 7, 2 / 7, 1 / 7], atol=1e-6)


def test_general_keeps_weights_on_the_simplex_and_survives_a_singular_c():
    c = torch.tensor([[1.0, 1.8], [1.8, 4.0]], dtype=torch.float64)  # Eq. 11 gives (11/7, −4/7)
    np.testing.assert_allclose(weights_from_c(c, ridge=0.0, solver="eq11").numpy(), [11 / 7, -4 / 7], atol=1e-12)
    np.testing.assert_allclose(weights_from_c(c, ridge=0.0, solver="clip").numpy(), [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(weights_from_c(c, ridge=0.0).numpy(), [1.0, 0.0], atol=1e-12)
    same = torch.ones(2, 2, dtype=torch.float64)  # two identical peers: C is singular
    np.testing.assert_allclose(weights_from_c(same).numpy(), [0.5, 0.5], atol=1e-12)
    np.testing.assert_allclose(weights_from_c(same, ridge=0.0).numpy(), [0.5, 0.5], atol=1e-12)
    np.testing.assert_allclose(weights_from_c(torch.zeros(3, 3)).numpy(), [1 / 3] * 3, atol=0)


def simplex_grid_minimum(c: np.ndarray, n: int) -> float:
    """min wᵀCw over the grid of the 3-simplex with step 1/n, by brute force."""
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = i + j <= n
    w = np.stack([i[keep], j[keep], n - i[keep] - j[keep]], 1) / n
    return float(np.einsum("bi,ij,bj->b", w, c, w).min())


def test_general_simplex_weights_are_the_constrained_optimum():
    """Eq. 9 on the simplex, exactly: never above a brute-force grid minimum (step 1/300) on random PSD matrices, at
    or below every vertex and edge, and strictly better than clipping Eq. 11 where that clip is far off."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.normal(size=(3, 5)) * rng.uniform(0.2, 2.0, size=(3, 1))
        c = a @ a.T / 5 + rng.uniform(-0.3, 0.9) * np.outer(a.mean(1), a.mean(1))
        c = (c + c.T) / 2 + 1e-9 * np.eye(3)
        if np.linalg.eigvalsh(c).min() < 0:
            continue
        w = simplex_weights(torch.tensor(c)).numpy()
        assert w.min() >= 0 and w.sum() == pytest.approx(1.0, abs=1e-12)
        assert w @ c @ w <= simplex_grid_minimum(c, 300) + 1e-12
    c = np.array([[1.0, 0.95, 0.3], [0.95, 1.0, 0.2], [0.3, 0.2, 0.6]])
    w = weights_from_c(torch.tensor(c), ridge=0.0).numpy()
    clipped = weights_from_c(torch.tensor(c), ridge=0.0, solver="clip").numpy()
    np.testing.assert_allclose(w, [0.0, 1 / 3, 2 / 3], atol=1e-12)  # by hand: the (2, 3) edge, w ∝ (0.6 − 0.2, 1 − 0.2)
    assert w @ c @ w == pytest.approx(0.4666666666666667, abs=1e-12)
    assert clipped @ c @ clipped > 1.1 * (w @ c @ w)  # the old clip: (0, 0.54, 0.46), an objective 11 % higher
    np.testing.assert_allclose(simplex_weights(torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))).numpy(),
                               [4 / 7, 2 / 7, 1 / 7], atol=1e-12)  # interior optimum: Eq. 11 itself


def test_general_weights_from_a_validation_pass():
    peers, yv = [Z1, Z2, Z3], [1, 0, 2]
    method = make(peers, target="general")
    seen = []
    for peer in method.peers:
        peer.register_forward_hook(lambda module, args, out: seen.append(module.training))
    method.ctx.validation = lambda: iter([fixed_batch(yv)])
    method.modules.train()
    method.on_epoch_start(0)
    np.testing.assert_allclose(method.weights.numpy(), [1 / 3] * 3, atol=0)  # epoch 0: 1/m, no pass
    assert seen == []
    method.on_epoch_start(1)
    assert seen == [False] * 3 and method.modules.training  # eval mode for the pass, train mode after
    errors = np.stack([np_softmax(z)[np.arange(3), yv] - 1 for z in peers], 1)  # (N, K)
    c = np.array([[np.mean(errors[:, i] * errors[:, j]) for j in range(3)] for i in range(3)])
    np.testing.assert_allclose(method.last_c.numpy(), c, atol=1e-14)
    c_ridge = c + 1e-6 * np.trace(c) / 3 * np.eye(3)
    w = method.weights.numpy()  # the constrained optimum: at or below a brute-force grid of the simplex
    assert w.min() >= 0 and w.sum() == pytest.approx(1.0, abs=1e-12)
    assert w @ c_ridge @ w <= simplex_grid_minimum(c_ridge, 300) + 1e-12
    assert method.weights_epoch == 1
    np.testing.assert_allclose(error_covariance(torch.tensor(errors)).numpy(), c, atol=1e-15)


def test_general_loss_and_teacher_output():
    t = 2.0
    method = make([Z1, Z2], target="general", temperature=t)
    method.weights = torch.tensor([0.7, 0.3], dtype=torch.float64)
    target = 0.7 * np_softmax(Z1, t) + 0.3 * np_softmax(Z2, t)
    check_terms(method.losses(fixed_batch(Y), None), [Z1, Z2], target, t)
    out = method.predict(torch.zeros(3, 1))
    np.testing.assert_allclose(out["teacher"].detach().numpy(), np.log(0.7 * np_softmax(Z1) + 0.3 * np_softmax(Z2)),
                               atol=1e-12)
    for target_name in ("naive", "linear", "minlogit"):  # built from the label: no test-time teacher
        assert set(make([Z1, Z2], target=target_name).predict(torch.zeros(3, 1))) == {"net1", "net2"}


# --- gradients and flags ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["naive", "linear", "minlogit", "general"])
def test_soft_target_gets_no_gradient(target):
    method = make([Z1, Z2, Z3], target=target)
    method.losses(fixed_batch(Y), None)["kl/net1"].backward()
    assert method.peers[1].logits.grad is None and method.peers[2].logits.grad is None
    assert method.peers[0].logits.grad.abs().sum() > 0


def test_views_and_held_out_split_follow_the_hyper_parameters():
    cls = load_methods().get("kdcl")
    assert cls.per_peer_views(cls.HParams(icl=True)) and not cls.per_peer_views(cls.HParams(icl=False))
    assert cls.held_out_per_class(cls.HParams()) == 50
    assert cls.held_out_per_class(cls.HParams(target="general", val_per_class=3)) == 3
    assert cls.held_out_per_class(cls.HParams(target="minlogit")) == 0


# --- end to end ------------------------------------------------------------------------------------------------------

def cell(hparams, group=("cifar_resnet8", "cifar_resnet8"), epochs=2) -> Cell:
    return Cell(method="kdcl", hparams=hparams, group=group, dataset=DATA, recipe={**TINY_RECIPE, "epochs": epochs},
                seed=0)


def snapshot(trainer: Trainer) -> dict:
    buffer = io.BytesIO()
    torch.save(trainer.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def test_general_with_icl_end_to_end_and_resume():
    hp = {"target": "general", "icl": True, "val_per_class": 2}
    full = Trainer(cell(hp, epochs=3))
    assert full.inputs.num_train == 10 * (6 - 2)  # the validation split is removed from training
    inputs = {0: [], 1: []}
    for k, peer in enumerate(full.method.peers):
        peer.register_forward_hook(lambda m, args, out, k=k: inputs[k].append(args[0].clone()) if m.training else None)
    weights, states = [], {}

    def after_epoch(trainer, metrics):
        weights.append((trainer.method.weights_epoch, trainer.method.weights.clone()))
        states[trainer.epoch] = snapshot(trainer)

    full.run(after_epoch)
    # ICL: in every training step each peer got its own random view of the same images.
    assert len(inputs[0]) == len(inputs[1]) == 3 * len(full.train_batches)
    assert all(not torch.equal(a, b) for a, b in zip(inputs[0], inputs[1]))
    # General: uniform during epoch 0, recomputed at the start of epochs 1 and 2, always on the simplex.
    uniform = torch.full((2,), 0.5, dtype=torch.float64)
    assert weights[0][0] == -1 and torch.equal(weights[0][1], uniform)
    assert [e for e, _ in weights[1:]] == [1, 2]
    for _, w in weights[1:]:
        assert w.sum().item() == pytest.approx(1.0, abs=1e-12) and (w >= 0).all()
    assert not torch.allclose(weights[1][1], uniform, atol=1e-6)
    last = full.history[-1]
    for key in ("top1/net1", "top1/net2", "top1/ens", "top1/teacher", "loss/ce/net1", "loss/kl/net2"):
        assert key in last
    # Every epoch's w and C are in the history: w of the epoch (uniform in epoch 1), C from that epoch's start.
    assert [full.history[e]["general/w/net1"] for e in range(3)] == [0.5] + [float(w[0]) for _, w in weights[1:]]
    assert "general/c/net1_net1" not in full.history[0]
    assert full.history[2]["general/c/net1_net2"] == pytest.approx(float(full.method.last_c[0, 1]), abs=0)

    # Checkpoint round trip after epoch 2 restores the weights exactly; the resumed run ends where the full one did.
    resumed = Trainer(cell(hp, epochs=3))
    resumed.load_state_dict(states[2])
    assert torch.equal(resumed.method.weights, weights[1][1]) and resumed.method.weights_epoch == 1
    assert torch.equal(resumed.method.last_c, states[2]["method"]["c"])
    resumed.run()
    assert torch.equal(resumed.method.weights, full.method.weights)
    for a, b in zip(resumed.method.modules.parameters(), full.method.modules.parameters()):
        assert torch.equal(a, b)
    assert resumed.history[-1]["top1/teacher"] == last["top1/teacher"]


@pytest.mark.parametrize("hparams", [
    {"target": "linear", "icl": False, "linear_iters": 10},
    {"target": "minlogit", "icl": True},
])
def test_three_peers_end_to_end(hparams):
    trainer = Trainer(cell(hparams, group=("cifar_resnet8",) * 3, epochs=1))
    trainer.run()
    last = trainer.history[-1]
    assert {k for k in last if k.startswith("loss/")} == {f"loss/{t}/net{i}" for t in ("ce", "kl") for i in (1, 2, 3)}
    assert "top1/teacher" not in last and "top1/net3" in last
    assert trainer.inputs.num_train == 60  # nothing held out outside General
