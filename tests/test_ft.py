"""FT, FT+KD and FT's paraphraser stage: the factor loss and the paraphraser's reconstruction loss against numpy
(explicit-loop convolutions), the stage plan (teacher → paraphraser → student, the teacher shared with KD), and a
student step in which neither the teacher nor the paraphraser gets a gradient."""
import math

import harness.models  # noqa: F401  (first: the torchvision shim runs before timm is imported)
import numpy as np
import pytest
import torch

from harness.config.cell import Cell
from harness.data.batches import Batch
from harness.results.store import ResultStore
from harness.results.weights import load_networks
from harness.training.engine import Trainer
from harness.training.method import Step
from harness.training.stages import stages_of, waves
from methods.common.factor_transfer import Paraphraser, Translator, factor, factor_loss, reconstruction_loss
from tests.helpers import np_adaptive_pool, np_conv_same, np_kl, np_softmax, TINY_RECIPE, train_stages, tt

DATA = {"name": "fashion_mnist_mini", "train_per_class": 6, "test_per_class": 5}
RNG = np.random.default_rng(7)


# --- independent numpy references ---------------------------------------------------------------------------------

def np_factor(f, kind):
    b = f.shape[0]
    v = (f ** 2).mean(axis=1).reshape(b, -1) if kind == "channel_mean" else f.reshape(b, -1)
    return v / np.sqrt((v ** 2).sum(axis=1, keepdims=True))


def np_factor_loss(s, t, kind):
    h, w = min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3])
    s, t = np_adaptive_pool(s, h, w), np_adaptive_pool(t, h, w)
    return float(np.abs(np_factor(s, kind) - np_factor(t, kind)).mean())


def np_conv_transpose3x3(x, w, bias):
    """Transposed convolution, stride 1, padding 1, by its definition: every input pixel scatters w[c, o, u, v]
    to out[o, i+u-1, j+v-1] (positions outside the output are cropped by the padding)."""
    b, c, h, wd = x.shape
    out = np.zeros((b, w.shape[1], h, wd)) + bias[None, :, None, None]
    for i in range(h):
        for j in range(wd):
            for u in range(3):
                for v in range(3):
                    y, z = i + u - 1, j + v - 1
                    if 0 <= y < h and 0 <= z < wd:
                        out[:, :, y, z] += x[:, :, i, j] @ w[:, :, u, v]
    return out


def np_leaky(x):
    return np.where(x > 0, x, 0.1 * x)


def np_paraphraser(p: Paraphraser, f):
    """(factor, reconstruction) from the module's weights."""
    convs = [m for m in p.encoder if isinstance(m, torch.nn.Conv2d)]
    deconvs = [m for m in p.decoder if isinstance(m, torch.nn.ConvTranspose2d)]
    x = f
    for conv in convs:
        x = np_leaky(np_conv_same(x, conv.weight.detach().numpy(), conv.bias.detach().numpy()))
    code = x
    for deconv in deconvs:
        x = np_leaky(np_conv_transpose3x3(x, deconv.weight.detach().numpy(), deconv.bias.detach().numpy()))
    return code, x


# --- the losses ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["channel_mean", "flatten"])
def test_factor_loss_golden_with_pooling(kind):
    s = RNG.normal(size=(3, 2, 4, 4))
    t = RNG.normal(size=(3, 2, 2, 2))  # the student factor is larger: it is pooled
    assert factor_loss(tt(s), tt(t), kind).item() == pytest.approx(np_factor_loss(s, t, kind), abs=1e-12)
    assert factor_loss(tt(t), tt(s), kind).item() == pytest.approx(np_factor_loss(t, s, kind), abs=1e-12)


def test_factor_by_hand():
    f = np.zeros((1, 2, 1, 2))
    f[0, :, 0, 0] = [1.0, 1.0]  # mean_c f² = 1 at position 0
    f[0, :, 0, 1] = [2.0, 0.0]  # mean_c f² = 2 at position 1
    np.testing.assert_allclose(factor(tt(f)).numpy(), [[1 / math.sqrt(5), 2 / math.sqrt(5)]], atol=1e-12)
    np.testing.assert_allclose(factor(tt(f), "flatten").numpy(), [[1, 2, 1, 0] / np.sqrt(6)], atol=1e-12)
    # two maps equal up to scale have the same factor
    assert factor_loss(tt(f), tt(3 * f)).item() == pytest.approx(0.0, abs=1e-12)


def test_factor_loss_sends_no_gradient_to_the_teacher():
    s, t = tt(RNG.normal(size=(2, 3, 2, 2)), grad=True), tt(RNG.normal(size=(2, 3, 2, 2)), grad=True)
    factor_loss(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


@pytest.mark.parametrize("kind", ["mse", "l1"])
def test_paraphraser_reconstruction_loss_golden(kind):
    torch.manual_seed(0)
    p = Paraphraser(4, rate=0.5).double()
    f = np.abs(RNG.normal(size=(2, 4, 3, 3)))  # a post-ReLU map
    code, rec = np_paraphraser(p, f)
    expected = ((rec - f) ** 2).mean() if kind == "mse" else np.abs(rec - f).mean()
    assert p.encode(tt(f)).shape == (2, 2, 3, 3) and p.factor_channels == 2
    np.testing.assert_allclose(p.encode(tt(f)).detach().numpy(), code, atol=1e-12)
    assert reconstruction_loss(p(tt(f)), tt(f), kind).item() == pytest.approx(float(expected), abs=1e-12)


def test_modules_layers():
    p = Paraphraser(64, 0.5)
    assert [type(m).__name__ for m in p.encoder] == ["Conv2d", "LeakyReLU"] * 3
    assert [m.out_channels for m in p.decoder if hasattr(m, "out_channels")] == [32, 64, 64]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in Paraphraser(8, 0.5, batch_norm=True).modules()) == 6
    t = Translator(16, 32)
    assert [type(m).__name__ for m in t.encoder] == ["Conv2d", "BatchNorm2d", "LeakyReLU"] * 3
    assert t(torch.randn(2, 16, 4, 4)).shape == (2, 32, 4, 4)
    assert all(m.negative_slope == 0.1 for m in t.modules() if isinstance(m, torch.nn.LeakyReLU))


# --- the stage plan ------------------------------------------------------------------------------------------------

def cell(method="ft", seed=0, group=("cifar_resnet14", "cifar_resnet8"), **hparams):
    return Cell(method=method, hparams=hparams, group=group, dataset=DATA, recipe=TINY_RECIPE, seed=seed, label=method)


def test_waves_teacher_then_paraphraser_then_student_with_the_teacher_shared_with_kd():
    ft, kd = cell(), cell("kd")
    plan = waves([ft, kd])
    assert [sorted(c.method for c in wave) for wave in plan] == [["ind"], ["ft_paraphraser", "kd"], ["ft"]]
    teacher = stages_of(kd)["teacher"].cell
    assert plan[0][0].hash == teacher.hash == stages_of(ft)["teacher"].cell.hash
    paraphraser = stages_of(ft)["paraphraser"].cell
    assert stages_of(paraphraser)["teacher"].cell.hash == teacher.hash
    assert paraphraser.group == ("cifar_resnet14",) and paraphraser.dataset == DATA and paraphraser.seed == 0
    # 30 epochs, but never more than the student's own run (2 here)
    assert paraphraser.recipe["epochs"] == 2 and paraphraser.recipe["optimizer"]["lr"] == 0.01
    long_run = Cell(**{**ft.to_dict(), "group": ft.group, "recipe": {**TINY_RECIPE, "epochs": 240}})
    assert stages_of(long_run)["paraphraser"].cell.recipe["epochs"] == 30
    assert paraphraser.recipe["schedule"] == {"name": "constant"}
    assert paraphraser.recipe["batch_size"] == TINY_RECIPE["batch_size"]
    assert paraphraser.recipe["optimizer"]["weight_decay"] == TINY_RECIPE["optimizer"]["weight_decay"]


def test_paraphraser_is_shared_by_what_does_not_change_it():
    base = stages_of(cell())["paraphraser"].cell
    assert stages_of(cell("ft_kd", beta=500, factor="flatten"))["paraphraser"].cell.hash == base.hash
    assert stages_of(cell(rate=0.25))["paraphraser"].cell.hash != base.hash
    assert stages_of(cell(teacher_seed=3))["paraphraser"].cell.hash != base.hash
    # one paraphraser per student seed by default, as each RepDistiller run trains its own; or a shared one
    assert stages_of(cell(seed=1))["paraphraser"].cell.seed == 1
    shared = [stages_of(cell(seed=s, paraphraser_seed=0))["paraphraser"].cell.hash for s in (0, 1)]
    assert shared[0] == shared[1] == base.hash
    # the teacher's own recipe and its early stop reach the paraphraser's teacher
    stopped = stages_of(cell(teacher_stop_epoch=1, teacher_recipe={"base": "quickstart", "epochs": 3}))
    inner = stages_of(stopped["paraphraser"].cell)["teacher"].cell
    assert inner.hash == stopped["teacher"].cell.hash and inner.stop_epoch == 1 and inner.recipe["epochs"] == 3


def test_a_checkpoint_teacher_gives_a_paraphraser_on_that_checkpoint(tmp_path):
    path = str(tmp_path / "teacher.pt")
    ft = cell(teacher_checkpoint=path, teacher_sha256="ab" * 32)
    plan = waves([ft])
    assert [[c.method for c in wave] for wave in plan] == [["ft_paraphraser"], ["ft"]]
    inner = stages_of(plan[0][0])["teacher"]
    assert (inner.checkpoint, inner.sha256, inner.models) == (path, "ab" * 32, ("cifar_resnet14",))


# --- training ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("ft_stages")


def ft_trainer(store, method="ft", **hparams):
    c = Cell(method=method, hparams={"paraphraser_epochs": 1, **hparams}, group=("cifar_resnet8", "cifar_resnet8"),
             dataset=DATA, recipe={**TINY_RECIPE, "epochs": 1}, seed=0, label=method)
    return Trainer(c, train_stages(c, store))


def first_batch(trainer) -> Batch:
    return next(iter(trainer.train_batches.epoch(0)))


def test_the_paraphraser_stage_saves_only_the_paraphraser_and_learns_to_reconstruct(store):
    trainer = ft_trainer(store)
    stage = trainer.stages["paraphraser"].cell
    networks, provenance = load_networks(ResultStore(store).weights_path(stage.hash))
    assert networks == [] and set(provenance["modules"]) == {"paraphraser"}
    saved = provenance["modules"]["paraphraser"]
    for key, value in trainer.method.paraphraser.state_dict().items():
        assert torch.equal(value, saved[key])

    stage_trainer = Trainer(stage, trainer.runtime)
    method = stage_trainer.method
    assert method.deployed_networks() == [] and set(method.saved_modules()) == {"paraphraser"}
    method.on_epoch_start(0)
    x = first_batch(stage_trainer).x
    with torch.no_grad():
        last = method.teacher.forward_features(x)
        outputs = method.predict(x)
    expected = torch.nn.functional.mse_loss(method.paraphraser(last), last)
    assert method.losses(first_batch(stage_trainer), Step(0, 0, 1, 1))["reconstruction"].item() == \
        pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(outputs["net1"], method.teacher(x), atol=1e-5)
    assert set(outputs) == {"net1", "reconstructed"} and method.peer_outputs() == ["net1"]


@pytest.mark.parametrize("method", ["ft", "ft_kd"])
def test_teacher_and_paraphraser_get_no_gradient_in_the_students_step(store, method):
    trainer = ft_trainer(store, method)
    m = trainer.method
    frozen = {key: {k: v.clone() for k, v in m.modules[key].state_dict().items()} for key in ("teacher", "paraphraser")}
    moving = {key: [p.detach().clone() for p in m.modules[key].parameters()] for key in ("peers", "translator")}
    m.modules.train()
    m.on_epoch_start(0)
    assert not m.teacher.training and not m.paraphraser.training
    terms = m.train_step(first_batch(trainer), Step(0, 0, 1, 1))
    assert set(terms) == ({"ce", "ft", "kd"} if method == "ft_kd" else {"ce", "ft"})
    for key, state in frozen.items():
        assert all(p.grad is None and not p.requires_grad for p in m.modules[key].parameters())
        for k, v in m.modules[key].state_dict().items():
            assert torch.equal(v, state[k]), f"{key}.{k} changed"  # BN statistics included
    for key, before in moving.items():
        assert all(not torch.equal(a, b) for a, b in zip(before, m.modules[key].parameters()))
    counts = m.parameter_counts()
    assert set(counts["frozen"]) == {"teacher", "paraphraser"} and set(counts["added"]) == {"translator"}


def test_ft_terms_by_their_formulas(store):
    trainer = ft_trainer(store, "ft_kd", beta=7.0, ce_weight=0.5, kd_weight=0.3, temperature=2.0)
    m = trainer.method
    m.modules.train()
    m.on_epoch_start(0)
    batch = first_batch(trainer)
    torch.manual_seed(0)
    terms = m.losses(batch, Step(0, 0, 1, 1))
    with torch.no_grad():  # in train mode again: BatchNorm uses the batch's statistics, the same outputs
        z_t = m.teacher(batch.x).double().numpy()
        f_t = m.paraphraser.encode(m.teacher.forward_features(batch.x)).double().numpy()
        f_s_map = m.student.forward_features(batch.x)
        z_s = m.student.forward_head(f_s_map).double().numpy()
        f_s = m.translator(f_s_map).double().numpy()
    y = batch.y.numpy()
    ce = float(np.mean(-np.log(np_softmax(z_s)[np.arange(len(y)), y])))
    assert terms["ce"].item() == pytest.approx(0.5 * ce, rel=1e-4)
    assert terms["kd"].item() == pytest.approx(0.3 * 4.0 * np_kl(z_t, z_s, 2.0), rel=1e-3, abs=1e-6)
    assert terms["ft"].item() == pytest.approx(7.0 * np_factor_loss(f_s, f_t, "channel_mean"), rel=1e-4)
