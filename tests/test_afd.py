"""AFD: LSGAN and logit terms on fixed tensors against numpy, the discriminator against a numpy forward pass, the
ring of discriminators (who sees which map), which parameters each of the three updates moves, mixed
architectures, the adversarial learning-rate schedule, and a checkpoint that resumes to the same next loss."""
import io

import harness.models  # noqa: F401  (first: the torchvision shim runs before timm is imported)
import numpy as np
import pytest
import torch
from harness.config.cell import Cell
from harness.config.recipe import OptimizerSpec, build_optimizer
from harness.models import adapter
from harness.training.engine import Trainer
from harness.training.method import Step, load_methods
from methods.afd import (Discriminator, adversarial_lr_factor, lsgan_discriminator_loss, lsgan_generator_loss,
                         ring_sources)
from tests.helpers import changed_params, np_ce, np_kl, param_snapshot, random_batch, timm_context, TINY_RECIPE

R8 = "cifar_resnet8"
DATA = {"name": "fashion_mnist_mini", "train_per_class": 4, "test_per_class": 2}


def make(group=(R8, R8), classes=3, size=16, optimizers=True, **hparams):
    """AFD on ``group`` for size×size one-channel images, with the engine's optimizers (SGD for the recipe's)."""
    cls = load_methods().get("afd")
    ctx = timm_context(group, classes, size)
    torch.manual_seed(0)
    method = cls(cls.HParams(**hparams), ctx)
    if optimizers:
        for name, group in method.optim_groups().items():
            spec = OptimizerSpec.model_validate(group.optimizer) if group.optimizer else \
                OptimizerSpec(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4)
            params = [{k: v for k, v in g.items() if k != "model"} if isinstance(g, dict) else g for g in group.params]
            method.optimizers[name] = build_optimizer(spec, params)
    return method


def tiny_batch(n=4, size=16, seed=0):
    return random_batch(n, size, seed)


# --- numpy references -------------------------------------------------------------------------------------------
def np_conv(x, w, b, stride):
    """Valid 2-D convolution (cross-correlation) of x (N, C, H, W) with w (O, C, kh, kw), by loops."""
    n, _, h, wd = x.shape
    _, _, kh, kw = w.shape
    ho, wo = (h - kh) // stride[0] + 1, (wd - kw) // stride[1] + 1
    out = np.zeros((n, w.shape[0], ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, :, i * stride[0]:i * stride[0] + kh, j * stride[1]:j * stride[1] + kw]
            out[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w) + b
    return out


def np_discriminator(d, x):
    """conv → BN with batch statistics (biased variance, eps 1e-5) → leaky ReLU → conv → sigmoid, in numpy."""
    p = {k: v.detach().double().numpy() for k, v in d.state_dict().items()}
    x = np.asarray(x.detach().double().numpy())
    h = np_conv(x, p["conv1.weight"], p["conv1.bias"], d.conv1.stride)
    mean, var = h.mean(axis=(0, 2, 3), keepdims=True), h.var(axis=(0, 2, 3), keepdims=True)
    h = (h - mean) / np.sqrt(var + 1e-5) * p["bn.weight"][None, :, None, None] + p["bn.bias"][None, :, None, None]
    h = np.where(h > 0, h, d.slope * h)
    h = np_conv(h, p["conv2.weight"], p["conv2.bias"], d.conv2.stride)
    return 1 / (1 + np.exp(-h)) if d.sigmoid else h


# --- the losses ---------------------------------------------------------------------------------------------------
def test_lsgan_losses_golden():
    rng = np.random.default_rng(0)
    real, fake = rng.uniform(size=(3, 1, 2, 2)), rng.uniform(size=(3, 1, 2, 2))
    d = lsgan_discriminator_loss(torch.tensor(real), torch.tensor(fake)).item()
    g = lsgan_generator_loss(torch.tensor(fake)).item()
    assert d == pytest.approx(np.mean((real - 1) ** 2) + np.mean(fake ** 2), abs=1e-12)
    assert g == pytest.approx(np.mean((fake - 1) ** 2), abs=1e-12)
    # by hand: a perfect D scores 0; D unsure (0.5 everywhere) scores 0.25 + 0.25; G fully caught scores 1
    ones, zeros, halves = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3), torch.full((2, 1, 3, 3), 0.5)
    assert lsgan_discriminator_loss(ones, zeros).item() == 0.0
    assert lsgan_discriminator_loss(halves, halves).item() == pytest.approx(0.5)
    assert lsgan_generator_loss(zeros).item() == 1.0 and lsgan_generator_loss(ones).item() == 0.0


@pytest.mark.parametrize("shape,out", [((4, 5, 4), (2, 1)), ((4, 2, 2), (1, 1)), ((4, 1, 3), (1, 1))])
def test_discriminator_matches_numpy(shape, out):
    torch.manual_seed(1)
    d = Discriminator(shape, slope=0.2).double()
    with torch.no_grad():
        d.bn.weight.uniform_(0.5, 1.5)
        d.bn.bias.uniform_(-0.5, 0.5)
    assert d.conv1.out_channels == 2  # C / 2
    x = torch.randn(3, *shape, dtype=torch.float64)
    y = d(x)
    assert tuple(y.shape) == (3, 1, *out) and bool(((y > 0) & (y < 1)).all())
    np.testing.assert_allclose(y.detach().numpy(), np_discriminator(d, x), atol=1e-12)


def test_loss_terms_and_totals_golden_on_fixed_tensors():
    t, w, kl_w = 3.0, 0.7, 0.6
    method = make(optimizers=False, adv_weight=w, kl_weight=kl_w, temperature=t)
    method.modules.double()
    rng = np.random.default_rng(2)
    maps = [torch.tensor(rng.uniform(size=(3, 64, 4, 4))) for _ in range(2)]
    fakes = method.fakes(maps)
    assert all(f is m for f, m in zip(fakes, maps))  # equal shapes: no transfer layer
    g, d = method.generator_terms(fakes), method.discriminator_terms(maps, fakes)
    d1, d2 = method.discriminators
    # D_1: net2 real, net1 fake; D_2: net1 real, net2 fake
    expect_g = [w * np.mean((np_discriminator(d1, maps[0]) - 1) ** 2),
                w * np.mean((np_discriminator(d2, maps[1]) - 1) ** 2)]
    expect_d = [np.mean((np_discriminator(d1, maps[1]) - 1) ** 2) + np.mean(np_discriminator(d1, maps[0]) ** 2),
                np.mean((np_discriminator(d2, maps[0]) - 1) ** 2) + np.mean(np_discriminator(d2, maps[1]) ** 2)]
    for k in range(2):
        assert g[f"adv/net{k + 1}"].item() == pytest.approx(expect_g[k], abs=1e-12)
        assert d[f"disc/net{k + 1}"].item() == pytest.approx(expect_d[k], abs=1e-12)
    assert sum(v.item() for v in g.values()) == pytest.approx(sum(expect_g), abs=1e-12)
    assert sum(v.item() for v in d.values()) == pytest.approx(sum(expect_d), abs=1e-12)

    z = [[[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], [[1.0, 1.5, 0.0], [-0.5, 2.0, 0.1]], [[0.3, -0.2, 0.9], [1.2, 0.0, -0.7]]]
    y = [0, 2]
    logits = [torch.tensor(a, dtype=torch.float64) for a in z]
    terms = method.logit_terms(logits[:2], torch.tensor(y))
    assert terms["kl/net1"].item() == pytest.approx(kl_w * t * t * np_kl(z[1], z[0], t), abs=1e-12)
    assert terms["kl/net2"].item() == pytest.approx(kl_w * t * t * np_kl(z[0], z[1], t), abs=1e-12)
    assert terms["ce/net2"].item() == pytest.approx(np_ce(z[1], y), abs=1e-12)

    for mode in ("all", "ring"):  # K = 3: DML's mean over both others, or the ring's predecessor only
        method3 = make((R8,) * 3, optimizers=False, temperature=t, logit_peers=mode)
        terms = method3.logit_terms(logits, torch.tensor(y))
        for k in range(3):
            prev = (k - 1) % 3
            others = [prev] if mode == "ring" else [l for l in range(3) if l != k]
            expected = t * t * np.mean([np_kl(z[l], z[k], t) for l in others])
            assert terms[f"kl/net{k + 1}"].item() == pytest.approx(expected, abs=1e-12)
            assert terms[f"ce/net{k + 1}"].item() == pytest.approx(np_ce(z[k], y), abs=1e-12)
        total = sum(v.item() for v in terms.values())
        assert total == pytest.approx(sum(np_ce(z[k], y) for k in range(3)) + sum(
            t * t * np.mean([np_kl(z[l], z[k], t) for l in ([(k - 1) % 3] if mode == "ring" else
                                                             [l for l in range(3) if l != k])]) for k in range(3)))


def test_peer_target_gets_no_gradient():
    method = make(optimizers=False)
    logits = [torch.randn(4, 3, requires_grad=True) for _ in range(2)]
    method.logit_terms(logits, torch.arange(4) % 3)["kl/net1"].backward()
    assert logits[1].grad is None and logits[0].grad.abs().sum() > 0


# --- the ring -------------------------------------------------------------------------------------------------
def test_ring_sources():
    assert ring_sources(2) == [1, 0]  # the pair: each learns from the other
    assert ring_sources(3) == [2, 0, 1]  # net1 ← net3, net2 ← net1, net3 ← net2
    assert ring_sources(4) == [3, 0, 1, 2]


def test_each_discriminator_sees_exactly_its_two_networks():
    method = make((R8,) * 3, optimizers=False)
    assert method.sources == [2, 0, 1]
    seen = {k: [] for k in range(3)}
    for k, d in enumerate(method.discriminators):
        d.register_forward_pre_hook(lambda m, args, k=k: seen[k].append(args[0]))
    maps = [torch.full((2, 64, 4, 4), float(k + 1)) for k in range(3)]  # peer k's map is filled with k + 1
    method.generator_terms(method.fakes(maps))
    assert {k: [float(x.unique()) for x in v] for k, v in seen.items()} == {0: [1.0], 1: [2.0], 2: [3.0]}
    for v in seen.values():
        v.clear()
    method.discriminator_terms(maps, method.fakes(maps))
    # (real, fake): D1 (net3, net1), D2 (net1, net2), D3 (net2, net3)
    assert {k: [float(x.unique()) for x in v] for k, v in seen.items()} == {0: [3.0, 1.0], 1: [1.0, 2.0],
                                                                           2: [2.0, 3.0]}


def test_ring_in_a_real_training_step(monkeypatch):
    """Through a whole train_step: D_k's inputs are the last maps of peers s(k) and k (storage compared)."""
    method = make((R8,) * 3)
    produced = []  # (peer, data_ptr of its last map) in the generator step
    extract = adapter.extract

    def recording(model, x):
        features = extract(model, x)
        produced.append((next(i for i, p in enumerate(method.peers) if p is model), features.last.data_ptr()))
        return features

    monkeypatch.setattr(adapter, "extract", recording)
    seen = {k: [] for k in range(3)}
    for k, d in enumerate(method.discriminators):
        d.register_forward_pre_hook(lambda m, args, k=k: seen[k].append(args[0].data_ptr()))
    method.train_step(tiny_batch(), Step(0, 0, 2, 1))
    owner = {ptr: peer for peer, ptr in produced}
    assert sorted(owner.values()) == [0, 1, 2]
    # generator step: own map; discriminator step: predecessor's map (real), then own map (fake)
    assert {k: [owner[p] for p in v] for k, v in seen.items()} == {0: [0, 2, 0], 1: [1, 0, 1], 2: [2, 1, 2]}


# --- the three updates -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("group", [(R8, R8), (R8, "cifar_wrn_16_2")])
def test_each_update_moves_only_its_own_parameters(group):
    method = make(group)
    batch = tiny_batch()
    peers, discs = method.peers, method.discriminators
    transfers = method.modules["transfers"] if "transfers" in method.modules else torch.nn.Module()
    head_ids = {id(p) for peer in peers for p in peer.get_classifier().parameters()}
    heads = {n for n, p in peers.named_parameters() if id(p) in head_ids}
    assert len(heads) == 4  # weight and bias of each classifier
    every_peer = {n for n, _ in peers.named_parameters()}

    before = [param_snapshot(m) for m in (peers, discs, transfers)]
    method.logit_step(batch)
    assert changed_params(peers, before[0]) == every_peer
    assert not changed_params(discs, before[1]) and not changed_params(transfers, before[2])

    before = [param_snapshot(m) for m in (peers, discs, transfers)]
    _, maps, fakes = method.generator_step(batch)
    assert changed_params(peers, before[0]) == every_peer - heads  # the classifiers get no adversarial gradient
    assert not changed_params(discs, before[1])
    assert changed_params(transfers, before[2]) == {n for n, _ in transfers.named_parameters()}

    before = [param_snapshot(m) for m in (peers, discs, transfers)]
    method.discriminator_step(maps, fakes)
    assert changed_params(discs, before[1]) == {n for n, _ in discs.named_parameters()}
    assert not changed_params(peers, before[0]) and not changed_params(transfers, before[2])


def test_optimizers():
    method = make((R8, "cifar_wrn_16_2"), feature_lr=3e-5, disc_betas=(0.5, 0.999))
    groups = method.optim_groups()
    assert set(groups) == {"peers", "features", "discriminators"}
    assert [g["model"] for g in groups["peers"].params] == [R8, "cifar_wrn_16_2"]
    feature = {id(p) for p in groups["features"].params}
    heads = {id(p) for peer in method.peers for p in peer.get_classifier().parameters()}
    assert not feature & heads
    assert {id(p) for p in method.modules["transfers"].parameters()} <= feature
    assert len(feature) == sum(1 for _ in method.peers.parameters()) - len(heads) + \
        sum(1 for _ in method.modules["transfers"].parameters())
    assert {id(p) for p in groups["discriminators"].params} == {id(p) for p in method.discriminators.parameters()}
    assert not groups["features"].follow_schedule and not groups["discriminators"].follow_schedule
    f, d = method.optimizers["features"], method.optimizers["discriminators"]
    assert isinstance(f, torch.optim.Adam) and isinstance(d, torch.optim.Adam)
    assert f.defaults["lr"] == 3e-5 and f.defaults["weight_decay"] == 0.1 and f.defaults["betas"] == (0.9, 0.999)
    assert d.defaults["lr"] == 2e-5 and d.defaults["betas"] == (0.5, 0.999)


def test_mixed_architectures_get_transfer_layers():
    method = make((R8, "cifar_wrn_16_2", "cifar_vgg8"), size=28)  # last maps 64×7×7, 128×7×7, 512×3×3
    assert set(method.modules["transfers"]) == {"net1_to_net3", "net2_to_net1", "net3_to_net2"}
    assert [d.conv1.in_channels for d in method.discriminators] == [512, 64, 128]  # the real (source) map's
    batch = tiny_batch(size=28)
    maps = [adapter.extract(p, batch.x).last for p in method.peers]
    fakes = method.fakes(maps)
    assert [tuple(f.shape[1:]) for f in fakes] == [(512, 3, 3), (64, 7, 7), (128, 7, 7)]
    terms = method.train_step(batch, Step(0, 0, 2, 1))
    assert all(torch.isfinite(v) for v in terms.values()) and len(terms) == 12
    same = make((R8, R8), transfer="always")
    assert set(same.modules["transfers"]) == {"net1_to_net2", "net2_to_net1"}


def test_small_maps_shrink_the_discriminator_kernels():
    d = Discriminator((8, 1, 1))
    assert d.conv1.kernel_size == (1, 1) and d.conv2.kernel_size == (1, 1) and d(torch.randn(3, 8, 1, 1)).shape == \
        (3, 1, 1, 1)
    method = make((R8, R8), size=8)  # 2×2 last maps
    assert method.discriminators[0].conv1.kernel_size == (2, 2) and method.discriminators[0].conv2.stride == (1, 1)
    assert all(torch.isfinite(v) for v in method.train_step(tiny_batch(size=8), Step(0, 0, 2, 1)).values())


def test_adversarial_learning_rate_schedule():
    assert [adversarial_lr_factor(e, 300, (0.25, 0.5), 0.1) for e in (0, 74, 75, 149, 150, 299)] == \
        pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert adversarial_lr_factor(5, 10, (), 0.1) == 1
    method = make()
    batch = tiny_batch()
    method.train_step(batch, Step(0, 0, 4, 1))
    assert method.optimizers["features"].param_groups[0]["lr"] == pytest.approx(2e-5)
    method.train_step(batch, Step(2, 0, 4, 1))  # epoch 2 of 4: past 0.25 and 0.5
    assert method.optimizers["features"].param_groups[0]["lr"] == pytest.approx(2e-7)
    assert method.optimizers["discriminators"].param_groups[0]["lr"] == pytest.approx(2e-7)
    assert method.optimizers["peers"].param_groups[0]["lr"] == 0.1  # the recipe's optimizer is not touched
    fresh = make()
    fresh.optimizers["features"].load_state_dict(method.optimizers["features"].state_dict())
    fresh.set_adversarial_lr(Step(1, 0, 4, 1))
    assert fresh.optimizers["features"].param_groups[0]["lr"] == pytest.approx(2e-6)  # from the restored base


# --- end to end ---------------------------------------------------------------------------------------------------
def trainer(k=2):
    cell = Cell(method="afd", hparams={}, group=(R8,) * k, dataset=DATA, recipe=TINY_RECIPE, seed=0, label="afd",
                suite="test_afd")
    return Trainer(cell)


def test_checkpoint_resume_gives_the_same_next_loss():
    tr = trainer()
    steps = len(tr.train_batches)
    tr.history.append({**tr.train_epoch(), "epoch": 1})
    tr.epoch = 1
    buffer = io.BytesIO()
    torch.save(tr.state_dict(), buffer)
    batch = next(iter(tr.train_batches.epoch(1)))
    step = Step(1, 0, tr.recipe.epochs, steps)
    expected = tr.method.train_step(batch, step)

    buffer.seek(0)
    resumed = trainer()
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    got = resumed.method.train_step(batch, step)
    assert got.keys() == expected.keys() and {k.split("/")[0] for k in got} == {"ce", "kl", "adv", "disc"}
    for name in got:
        assert torch.equal(got[name], expected[name]), name
    for a, b in zip(tr.method.modules.state_dict().values(), resumed.method.modules.state_dict().values()):
        assert torch.equal(a, b)
    # epoch 1 of 2 is past both milestones (0.5 and 1.0 of the run)
    assert resumed.method.optimizers["discriminators"].param_groups[0]["lr"] == pytest.approx(2e-7)
