"""Offline feature KD from a frozen teacher (at, at_kd, sp, cc, vid): every loss against numpy on the networks' real
features (teacher and student of different architectures), hand-computed CC and VID cases, gradients that reach the
student and its added modules but never the teacher, layer matching by position, and an end-to-end run with a
trained teacher of another architecture."""
import math

import harness.models  # noqa: F401  (first: the torchvision shim runs before timm is imported)
import numpy as np
import pytest
import timm
import torch

from harness.config.cell import Cell
from harness.models import adapter
from harness.training.engine import Trainer
from harness.training.method import Step, load_methods
from methods.common.offline_feature import VIDRegressor, cc_loss, vid_loss
from tests.helpers import np_at, np_ce, np_common, np_kl, np_sp, random_batch, timm_context, TINY_RECIPE, train_stages

METHODS = ["at", "at_kd", "sp", "cc", "vid"]
TERM = {"at": "at", "at_kd": "at", "sp": "sp", "cc": "cc", "vid": "vid"}
DATA = {"name": "fashion_mnist_mini", "train_per_class": 6, "test_per_class": 5}


pytestmark = pytest.mark.usefixtures("one_thread")


def make(name, teacher="cifar_wrn_16_2", student="cifar_resnet8", classes=3, size=(8, 8), frozen=True, **hparams):
    """Method ``name`` with a randomly initialised teacher standing in for the earlier stage's network.

    ``frozen`` False leaves the teacher's parameters trainable, so that a gradient reaching it would show."""
    cls = load_methods().get(name)
    torch.manual_seed(1)
    teacher_net = timm.create_model(teacher, num_classes=classes, in_chans=1).eval()
    if frozen:
        teacher_net.requires_grad_(False)
    ctx = timm_context((teacher, student), classes, size, num_train=6, load_stage=lambda stage: [teacher_net])
    torch.manual_seed(0)
    return cls(cls.HParams(**hparams), ctx)


def tiny_batch(n=6, size=(8, 8), seed=0, dtype=torch.float32):
    return random_batch(n, size, seed, dtype=dtype)


def golden_setup(name, **kwargs):
    """(method in float64, batch, its terms, student features, teacher features) on one batch."""
    method = make(name, **kwargs)
    method.modules.double()
    batch = tiny_batch(dtype=torch.float64)
    terms = method.losses(batch, Step(0, 0, 2, 1))
    with torch.no_grad():  # the student in train mode: the same batch statistics; the teacher in eval mode
        student = adapter.extract(method.student, batch.x)
        teacher = adapter.extract(method.teacher, batch.x)
    return method, batch, terms, student, teacher


# --- independent numpy references (explicit loops) ----------------------------------------------------------------

def np_linear(module, x):
    w, b = module.linear.weight.detach().numpy(), module.linear.bias.detach().numpy()
    x = x.reshape(len(x), -1)
    return np.array([[sum(w[o, i] * x[n, i] for i in range(x.shape[1])) + b[o] for o in range(w.shape[0])]
                     for n in range(len(x))])


def np_cc_consecutive(s, t):
    b, d = s.shape
    return sum(sum(abs(s[i, k] - t[i, k]) * abs(s[i + 1, k] - t[i + 1, k]) for k in range(d))
               for i in range(b - 1)) / (b - 1)


def np_unit_rows(e):
    return np.array([row / math.sqrt(sum(v * v for v in row)) for row in e])


def np_cc_kernel(s, t, kernel):
    def matrix(e):
        u = np_unit_rows(e)
        return np.array([[kernel(float(np.dot(u[i], u[j]))) for j in range(len(u))] for i in range(len(u))])

    ks, kt = matrix(s), matrix(t)
    return sum((ks[i, j] - kt[i, j]) ** 2 for i in range(len(s)) for j in range(len(s))) / len(s) ** 2


def np_gaussian_taylor(gamma, order):
    """The P-order Taylor expansion of exp(−γ‖x − y‖²) = exp(−2γ) exp(2γ c) for unit vectors with xᵀy = c."""
    return lambda c: sum(math.exp(-2 * gamma) * (2 * gamma * c) ** p / math.factorial(p) for p in range(order + 1))


def np_conv1x1(weight, x):
    """(O, I, 1, 1) weight on (B, I, H, W) maps, position by position."""
    w = weight[:, :, 0, 0]
    return np.einsum("oi,bihw->bohw", w, x)


def np_vid_layer(regressor, s, t):
    s, t = np_common(s, t)
    convs = [m.weight.detach().numpy() for m in regressor.mean if isinstance(m, torch.nn.Conv2d)]
    h = np.maximum(np_conv1x1(convs[0], s), 0)
    h = np.maximum(np_conv1x1(convs[1], h), 0)
    mu = np_conv1x1(convs[2], h)
    v = regressor.variance_preimage.detach().numpy()
    var = np.log1p(np.exp(v)) + regressor.eps
    b, c, hh, ww = t.shape
    total = sum(0.5 * ((mu[n, k, i, j] - t[n, k, i, j]) ** 2 / var[k] + math.log(var[k]))
                for n in range(b) for k in range(c) for i in range(hh) for j in range(ww))
    return total / t.size


def blocks(features):
    return [m.numpy() for m in features.blocks]


# --- golden values on the networks' real features -----------------------------------------------------------------

@pytest.mark.parametrize("teacher", ["cifar_resnet14", "cifar_wrn_16_2"])
def test_at_golden(teacher):
    method, batch, terms, s, t = golden_setup("at", teacher=teacher)
    assert set(terms) == {"ce", "at"}
    y = batch.y.numpy()
    assert terms["ce"].item() == pytest.approx(np_ce(s.logits.numpy(), y), rel=1e-10)
    expected = 1000.0 * np_at(blocks(s), blocks(t))
    assert expected > 0 and terms["at"].item() == pytest.approx(expected, rel=1e-8)


def test_at_kd_total_golden():
    method, batch, terms, s, t = golden_setup("at_kd")
    assert set(terms) == {"ce", "kd", "at"}
    zs, zt, y = s.logits.numpy(), t.logits.numpy(), batch.y.numpy()
    ce, kl, at = np_ce(zs, y), np_kl(zt, zs, 4.0), np_at(blocks(s), blocks(t))
    assert terms["ce"].item() == pytest.approx(0.1 * ce, rel=1e-10)
    assert terms["kd"].item() == pytest.approx(0.9 * 16 * kl, rel=1e-9)
    total = sum(v for v in terms.values()).item()
    assert total == pytest.approx(0.1 * ce + 0.9 * 16 * kl + 1000.0 * at, rel=1e-9)
    # other weights, no T²: each term follows its own hyper-parameter
    method2, _, terms2, s2, t2 = golden_setup("at_kd", ce_weight=0.5, kd_weight=2.0, temperature=2.0,
                                              t2_scaling=False, beta=10.0)
    zs2, zt2 = s2.logits.numpy(), t2.logits.numpy()
    assert terms2["ce"].item() == pytest.approx(0.5 * np_ce(zs2, y), rel=1e-10)
    assert terms2["kd"].item() == pytest.approx(2.0 * np_kl(zt2, zs2, 2.0), rel=1e-9)
    assert terms2["at"].item() == pytest.approx(10.0 * np_at(blocks(s2), blocks(t2)), rel=1e-8)


@pytest.mark.parametrize("teacher", ["cifar_resnet14", "cifar_wrn_16_2"])
def test_sp_golden(teacher):
    method, batch, terms, s, t = golden_setup("sp", teacher=teacher)
    assert set(terms) == {"ce", "sp"}
    expected = 3000.0 * np_sp(s.stages[-1].numpy(), t.stages[-1].numpy())
    assert expected > 0 and terms["sp"].item() == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("correlation", ["consecutive_difference", "gaussian_rbf_taylor", "bilinear"])
def test_cc_golden(correlation):
    method, batch, terms, s, t = golden_setup("cc", correlation=correlation, rbf_gamma=0.7, taylor_order=3)
    assert set(terms) == {"ce", "cc"}
    es = np_linear(method.modules["embed_student"], s.embedding.numpy())
    et = np_linear(method.modules["embed_teacher"], t.embedding.numpy())
    assert es.shape == et.shape == (6, 128)  # ResNet-8's 64 and WRN-16-2's 128 features, both embedded to 128
    if correlation == "consecutive_difference":
        expected = np_cc_consecutive(es, et)
    elif correlation == "gaussian_rbf_taylor":
        expected = np_cc_kernel(es, et, np_gaussian_taylor(0.7, 3))
    else:
        expected = np_cc_kernel(es, et, lambda c: c)
    assert expected > 0 and terms["cc"].item() == pytest.approx(0.02 * expected, rel=1e-8)


def test_vid_golden():
    method, batch, terms, s, t = golden_setup("vid")
    assert set(terms) == {"ce", "vid"}
    regressors = method.modules["regressors"]
    with torch.no_grad():  # variances away from their common start, so that each channel's own σ² matters
        for r in regressors:
            r.variance_preimage.copy_(torch.linspace(-1.0, 2.0, len(r.variance_preimage), dtype=torch.float64))
    terms = method.losses(batch, Step(0, 0, 2, 1))
    expected = sum(np_vid_layer(r, a, b) for r, a, b in zip(regressors, blocks(s), blocks(t)))
    assert terms["vid"].item() == pytest.approx(expected, rel=1e-8)


# --- hand-computed cases ------------------------------------------------------------------------------------------

def test_cc_consecutive_by_hand():
    s = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, 3.0]])
    # Δ = |s|: pairs (1,2)·(0,1) = 2 and (0,1)·(3,3) = 3, mean 2.5
    assert cc_loss(s, torch.zeros(3, 2)).item() == pytest.approx(2.5)
    assert cc_loss(s, s).item() == 0.0


def test_cc_kernels_by_hand():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # orthogonal: off-diagonal correlations 0
    t = torch.tensor([[1.0, 1.0], [3.0, 3.0]])  # parallel: off-diagonal correlations 1
    # bilinear: the two off-diagonal entries differ by 1 → 2 / 4
    assert cc_loss(s, t, "bilinear").item() == pytest.approx(0.5)
    g = 0.4  # Taylor order 1: K(c) = e^{−2γ}(1 + 2γc); the off-diagonal entries differ by e^{−2γ}·2γ
    assert cc_loss(s, t, "gaussian_rbf_taylor", g, 1).item() == pytest.approx(2 * (math.exp(-2 * g) * 2 * g) ** 2 / 4)
    assert cc_loss(s, t, "gaussian_rbf_taylor", g, 0).item() == 0.0  # order 0: a constant kernel


def test_vid_by_hand():
    regressor = VIDRegressor(2, 3)
    assert torch.allclose(regressor.variance(), torch.full((3,), 5.0))  # RepDistiller's start σ² = 5
    for conv in regressor.mean:
        if isinstance(conv, torch.nn.Conv2d):
            assert conv.bias is None and conv.kernel_size == (1, 1)
            torch.nn.init.zeros_(conv.weight)  # μ = 0
    target = torch.arange(3 * 4, dtype=torch.float32).view(1, 3, 2, 2)
    expected = np.mean(0.5 * (np.arange(12.0) ** 2 / 5.0 + math.log(5.0)))
    assert vid_loss(regressor, torch.randn(1, 2, 2, 2), target).item() == pytest.approx(expected, rel=1e-5)
    # a 4×4 target is pooled to the student's 2×2 (mean of each 2×2 cell) before the loss
    big = target.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert vid_loss(regressor, torch.randn(1, 2, 2, 2), big).item() == pytest.approx(expected, rel=1e-5)


# --- structure: regressors, embeddings, layer matching ------------------------------------------------------------

def test_vid_regressors_match_layers_by_position():
    method = make("vid", teacher="cifar_vgg8", size=(16, 16))  # the teacher has 4 blocks, the student 3
    regressors = method.modules["regressors"]
    assert len(regressors) == 3
    convs = [[m for m in r.mean if isinstance(m, torch.nn.Conv2d)] for r in regressors]
    # student block l (16/32/64 channels) → teacher block l (128/256/512), middle width the teacher's
    assert [(c[0].in_channels, c[0].out_channels, c[2].out_channels) for c in convs] == \
        [(16, 128, 128), (32, 256, 256), (64, 512, 512)]
    assert all(torch.allclose(r.variance(), torch.full_like(r.variance(), 5.0)) for r in regressors)
    narrow = make("vid", mid_channels=8, init_variance=2.0)
    first = [m for m in narrow.modules["regressors"][0].mean if isinstance(m, torch.nn.Conv2d)]
    assert (first[0].out_channels, first[2].out_channels) == (8, 32)
    assert torch.allclose(narrow.modules["regressors"][0].variance(), torch.full((32,), 2.0))


def test_at_matches_stages_by_position_across_architectures():
    method, batch, terms, s, t = golden_setup("at", teacher="cifar_vgg8", size=(16, 16))
    assert len(t.blocks) == 4 and len(s.blocks) == 3
    expected = 1000.0 * np_at(blocks(s), blocks(t)[:3])  # the teacher's 4th block is left out
    assert terms["at"].item() == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("teacher", ["cifar_resnet14", "cifar_wrn_16_2", "cifar_vgg8"])
def test_mixed_teachers_give_finite_positive_terms(name, teacher):
    method = make(name, teacher=teacher, size=(16, 16))
    terms = method.losses(tiny_batch(size=(16, 16)), Step(0, 0, 2, 1))
    assert all(math.isfinite(v.item()) for v in terms.values())
    assert terms[TERM[name]].item() > 0


def test_feature_methods_have_no_kd_term_by_default():
    for name in ("at", "sp", "cc", "vid"):
        hp = load_methods().get(name).HParams()
        assert (hp.ce_weight, hp.kd_weight, hp.temperature) == (1.0, 0.0, 4.0)
    betas = {name: load_methods().get(name).HParams().beta for name in METHODS}
    assert betas == {"at": 1000.0, "at_kd": 1000.0, "sp": 3000.0, "cc": 0.02, "vid": 1.0}
    hp = load_methods().get("at_kd").HParams()
    assert (hp.ce_weight, hp.kd_weight, hp.temperature, hp.t2_scaling) == (0.1, 0.9, 4.0, True)
    assert "kd" in make("sp", kd_weight=0.5).losses(tiny_batch(), None)


# --- gradients ----------------------------------------------------------------------------------------------------

EXTRA = {"cc": ["embed_student", "embed_teacher"], "vid": ["regressors"]}


@pytest.mark.parametrize("name", METHODS)
def test_gradients_reach_the_student_and_its_modules_never_the_teacher(name):
    method = make(name, frozen=False)  # a teacher with trainable parameters: any leak would give them a gradient
    terms = method.losses(tiny_batch(), Step(0, 0, 2, 1))
    terms[TERM[name]].backward(retain_graph=True)
    assert all(p.grad is None for p in method.teacher.parameters())
    assert sum(p.grad.abs().sum() for p in method.student.parameters() if p.grad is not None) > 0
    for key in EXTRA.get(name, []):
        for pname, p in method.modules[key].named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{key}.{pname}"
    sum(terms.values()).backward()
    assert all(p.grad is None for p in method.teacher.parameters())


@pytest.fixture(scope="module")
def stage_results(tmp_path_factory):
    """One result store for this module's end-to-end runs, so that the WRN-16-2 teacher is trained once."""
    return tmp_path_factory.mktemp("stages")


@pytest.mark.parametrize("name", ["cc", "vid"])
def test_added_modules_train_in_the_students_optimizer(name, stage_results):
    group = ("cifar_wrn_16_2", "cifar_resnet8")
    cell = Cell(method=name, hparams={}, group=group, dataset=DATA, recipe={**TINY_RECIPE, "epochs": 1}, seed=0)
    trainer = Trainer(cell, train_stages(cell, stage_results))
    method = trainer.method
    assert set(method.optimizers) == {"peers"}
    params = {id(p) for g in method.optimizers["peers"].param_groups for p in g["params"]}
    added = {id(p) for key in EXTRA[name] for p in method.modules[key].parameters()}
    assert added and added <= params
    assert not {id(p) for p in method.teacher.parameters()} & params
    before = {key: [p.detach().clone() for p in method.modules[key].parameters()] for key in EXTRA[name]}
    teacher_before = [p.detach().clone() for p in method.teacher.parameters()]
    trainer.run()
    assert all(math.isfinite(v) for k, v in trainer.history[-1].items() if k.startswith("loss/"))
    for key in EXTRA[name]:
        assert all(not torch.equal(a, b) for a, b in zip(before[key], method.modules[key].parameters()))
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, method.teacher.parameters()))
    counts = method.parameter_counts()
    assert set(counts["added"]) == set(EXTRA[name]) and set(counts["frozen"]) == {"teacher"}

