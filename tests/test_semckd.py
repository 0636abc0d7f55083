"""SemCKD: the cross-layer attention and loss against a numpy version of the authors' formulas (similarity rows,
query/key MLPs, softmax over teacher stages, per-pair regressors with BatchNorm, attention-weighted MSE), the
zero-padded similarity width and its inference from the number of steps, partial batches, and gradients."""
import harness.models  # noqa: F401  (first: the torchvision shim runs before timm is imported)
import numpy as np
import pytest
import torch

from harness.config.cell import Cell
from harness.training.engine import Trainer
from harness.training.method import Step
from methods.semckd import CrossLayerAttention, inferred_batch_size, semckd_loss
from tests.helpers import np_adaptive_pool, np_conv_same, TINY_RECIPE, train_stages, tt

DATA = {"name": "fashion_mnist_mini", "train_per_class": 6, "test_per_class": 5}
RNG = np.random.default_rng(3)


# --- numpy reference -----------------------------------------------------------------------------------------------

def np_batchnorm_train(x, gamma, beta, eps=1e-5):
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)  # biased, as BatchNorm normalises with
    return (x - mean) / np.sqrt(var + eps) * gamma[None, :, None, None] + beta[None, :, None, None]


def np_regressor(seq, x):
    conv1, bn1, _, conv2, bn2, _, conv3 = seq
    p = lambda t: t.detach().numpy()  # noqa: E731
    x = np.maximum(np_batchnorm_train(np_conv_same(x, p(conv1.weight)), p(bn1.weight), p(bn1.bias)), 0)
    x = np.maximum(np_batchnorm_train(np_conv_same(x, p(conv2.weight)), p(bn2.weight), p(bn2.bias)), 0)
    return np_conv_same(x, p(conv3.weight))


def np_embed(mlp, rows):
    """Linear → ReLU → Linear → L2-normalise; the rows use the first len(row) input weights (zero padding)."""
    w1, b1 = mlp.linear1.weight.detach().numpy(), mlp.linear1.bias.detach().numpy()
    w2, b2 = mlp.linear2.weight.detach().numpy(), mlp.linear2.bias.detach().numpy()
    h = np.maximum(rows @ w1[:, :rows.shape[1]].T + b1, 0)
    e = h @ w2.T + b2
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def np_semckd(module: CrossLayerAttention, fs, ft):
    b = fs[0].shape[0]
    grams = lambda maps: [f.reshape(b, -1) @ f.reshape(b, -1).T for f in maps]  # noqa: E731
    q = np.stack([np_embed(m, g) for m, g in zip(module.query, grams(fs))], 1)  # (B, S, d)
    k = np.stack([np_embed(m, g) for m, g in zip(module.key, grams(ft))], 1)  # (B, T, d)
    energy = np.einsum("bsd,btd->bst", q, k)
    att = np.exp(energy - energy.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    total = 0.0
    for i, s in enumerate(fs):
        for j, t in enumerate(ft):
            if s.shape[2] > t.shape[2]:
                value, target = np_regressor(module.regressors[i][j], np_adaptive_pool(s, *t.shape[2:])), t
            else:
                value, target = np_regressor(module.regressors[i][j], s), np_adaptive_pool(t, *s.shape[2:])
            for n in range(b):
                total += att[n, i, j] * ((value[n] - target[n]) ** 2).mean()
    return total / (b * len(fs)), att


STUDENT_CHANNELS, TEACHER_CHANNELS = [2, 3], [2, 4]


def maps(batch):
    fs = [RNG.normal(size=(batch, 2, 4, 4)), RNG.normal(size=(batch, 3, 2, 2))]
    ft = [RNG.normal(size=(batch, 2, 2, 2)), RNG.normal(size=(batch, 4, 4, 4))]  # both pooling directions
    return fs, ft


def attention_module(width, factor=1):
    torch.manual_seed(0)
    module = CrossLayerAttention(width, STUDENT_CHANNELS, TEACHER_CHANNELS, factor).double()
    with torch.no_grad():  # BatchNorm affine parameters away from their (1, 0) init
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return module.train()


# --- golden values -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch,width", [(4, 4), (3, 5)])  # a full batch; a narrower one, zero-padded
def test_semckd_loss_golden(batch, width):
    module = attention_module(width)
    fs, ft = maps(batch)
    expected, att = np_semckd(module, fs, ft)
    assert module([tt(f) for f in fs], [tt(f) for f in ft]).item() == pytest.approx(expected, rel=1e-10)
    got = module.attention([tt(f) for f in fs], [tt(f) for f in ft]).detach().numpy()
    np.testing.assert_allclose(got, att, atol=1e-12)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-12)


def test_semckd_loss_by_hand():
    # one sample, one student stage, two teacher stages: errors 1 and 4, attention (0.25, 0.75) → 3.25
    values = [[tt(np.ones((1, 1, 1, 1))), tt(np.zeros((1, 2, 1, 1)))]]
    targets = [[tt(np.zeros((1, 1, 1, 1))), tt(np.full((1, 2, 1, 1), 2.0))]]
    assert semckd_loss(values, targets, tt([[[0.25, 0.75]]])).item() == pytest.approx(3.25)
    # two samples and two student stages: the sum is divided by B · S = 4
    values = [[tt(np.ones((2, 1, 1, 1)))], [tt(np.ones((2, 1, 1, 1)))]]
    targets = [[tt(np.zeros((2, 1, 1, 1)))], [tt(np.zeros((2, 1, 1, 1)))]]
    assert semckd_loss(values, targets, tt(np.ones((2, 2, 1)))).item() == pytest.approx(1.0)


def test_query_key_width_and_regressor_shapes():
    module = CrossLayerAttention(64, [16, 32], [32, 64, 128])
    assert module.query[0].linear1.in_features == 64 and module.query[0].linear2.out_features == 16
    assert module.query[0].linear1.out_features == 32 and len(module.key) == 3
    regressor = module.regressors[1][2]
    assert [m.out_channels for m in regressor if isinstance(m, torch.nn.Conv2d)] == [256, 256, 128]
    assert [m.kernel_size for m in regressor if isinstance(m, torch.nn.Conv2d)] == [(1, 1), (3, 3), (1, 1)]
    assert all(m.bias is None for m in regressor if isinstance(m, torch.nn.Conv2d))
    with pytest.raises(ValueError, match="wider than the attention's similarity width 64"):
        module.attention([torch.randn(65, 16, 2, 2)] * 2, [torch.randn(65, 32, 2, 2)] * 3)


def test_gradients_reach_the_student_through_values_and_queries_not_the_teacher():
    module = attention_module(4)
    fs, ft = maps(4)
    s, t = [tt(f, grad=True) for f in fs], [tt(f, grad=True) for f in ft]
    module(s, t).backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in s)
    assert all(f.grad is None for f in t)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    # the student's similarity rows alone (the queries) carry gradient to the student too
    s2 = [tt(f, grad=True) for f in fs]
    module.attention(s2, [tt(f) for f in ft])[:, :, 0].sum().backward()
    assert all(f.grad.abs().sum() > 0 for f in s2)


def test_inferred_batch_size():
    assert inferred_batch_size(50000, 782) == 64  # CIFAR-100 at 64: 781 full batches and one of 16
    assert inferred_batch_size(50000, 391) == 128
    assert inferred_batch_size(1281167, 5005) == 256
    assert inferred_batch_size(45000, 704) == 64  # KDCL-General's held-out split
    assert inferred_batch_size(10, 1) == 10
    for n in range(1, 200):
        for b in range(1, 70):
            steps = -(-n // b)
            width = inferred_batch_size(n, steps)
            assert width >= min(b, n)  # never narrower than a batch
            if steps > 1 and n - (steps - 1) * b < steps:
                assert width == b


# --- in training ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("semckd_stages")


def trainer_of(store, **hparams):
    c = Cell(method="semckd", hparams=hparams, group=("cifar_resnet8", "cifar_resnet8"), dataset=DATA,
             recipe={**TINY_RECIPE, "epochs": 1}, seed=0, label="semckd")
    return Trainer(c, train_stages(c, store))


def test_partial_batches_are_skipped_and_the_teacher_gets_no_gradient(store):
    trainer = trainer_of(store)
    m = trainer.method
    assert m.modules["attention"].width == 32  # the recipe's batch size (60 images in batches of 32)
    full, partial = list(trainer.train_batches.epoch(0))
    assert len(full) == 32 and len(partial) == 28
    teacher = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    m.modules.train()
    m.on_epoch_start(0)
    terms = m.train_step(full, Step(0, 0, 1, 2))
    assert set(terms) == {"ce", "kd", "semckd"} and all(torch.isfinite(v) for v in terms.values())
    assert all(p.grad is None for p in m.teacher.parameters())
    assert all(torch.equal(v, teacher[k]) for k, v in m.teacher.state_dict().items())
    before = [p.detach().clone() for p in m.modules.parameters()]
    assert m.train_step(partial, Step(0, 1, 1, 2)) == {}
    assert all(torch.equal(a, b) for a, b in zip(before, m.modules.parameters()))

    kept = trainer_of(store, skip_partial_batches=False).method
    kept.modules.train()
    kept.on_epoch_start(0)
    kept.train_step(full, Step(0, 0, 1, 2))
    before = [p.detach().clone() for p in kept.student.parameters()]
    assert set(kept.train_step(partial, Step(0, 1, 1, 2))) == {"ce", "kd", "semckd"}
    assert not torch.equal(before[0], next(kept.student.parameters()))


def test_loss_terms_and_weights(store):
    trainer = trainer_of(store, beta=2.0, ce_weight=0.0, kd_weight=0.0, similarity_width=32)
    m = trainer.method
    assert m.modules["attention"].width == 32
    m.modules.train()
    m.on_epoch_start(0)
    batch = next(iter(trainer.train_batches.epoch(0)))
    terms = m.losses(batch, Step(0, 0, 1, 2))
    assert terms["ce"].item() == 0.0 and terms["kd"].item() == 0.0
    with torch.no_grad():
        s = m.student.forward_intermediates(batch.x)[1][1:]
        t = m.teacher.forward_intermediates(batch.x)[1][1:]
        direct = m.modules["attention"](s, t)
    assert terms["semckd"].item() == pytest.approx(2.0 * direct.item(), rel=1e-5)
