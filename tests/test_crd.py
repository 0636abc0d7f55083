"""CRD pieces (methods/common/contrastive.py) and online CRD on DML (dml_crd): the NCE loss, the bank scores with their constant Z
and the momentum update against numpy, the negative sampler's rules, the method's every term against an independent
computation for K = 3, gradients (partners' embeddings get none), parameter groups and counts, the warm-up, and
end-to-end runs (K = 2 mixed, K = 3) whose checkpoint resumes to the same end state, banks included."""
import io
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
from methods.common.contrastive import (Embed, MemoryBank, NegativeSampler, bank_bytes, clamp_negatives,
                                        contrast_scores, momentum_update, nce_loss)
from methods.dml_crd import reader_slot
from tests.helpers import np_ce, np_kl, np_nce, np_normalise, np_scores, random_batch, timm_context, TINY_RECIPE

DATA = {"name": "fashion_mnist_mini", "train_per_class": 6, "test_per_class": 5}


# --- numpy references -------------------------------------------------------------------------------------------


# --- the pieces -------------------------------------------------------------------------------------------------

def test_nce_loss_golden():
    scores = torch.tensor([[0.9, 0.01, 0.2, 0.003], [0.05, 0.4, 0.02, 0.1], [2.0, 1e-4, 0.3, 0.7]],
                          dtype=torch.float64)
    for n in (10, 1000):
        assert nce_loss(scores, n).item() == pytest.approx(np_nce(scores.numpy(), n), rel=1e-12)
    # a better-separated positive (higher s_i0, lower s_ij) has a lower loss
    sharper = scores.clone()
    sharper[:, 0] *= 10
    sharper[:, 1:] /= 10
    assert nce_loss(sharper, 10) < nce_loss(scores, 10)


def test_embed_is_linear_then_l2_normalised():
    torch.manual_seed(0)
    head = Embed(5, 3).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    out = head(x)
    w, b = head.linear.weight.detach().numpy(), head.linear.bias.detach().numpy()
    np.testing.assert_allclose(out.detach().numpy(), np_normalise(x.numpy() @ w.T + b), rtol=1e-12)
    np.testing.assert_allclose(out.norm(dim=1).detach().numpy(), 1.0, rtol=1e-12)


def test_bank_initialisation_and_buffers():
    torch.manual_seed(0)
    bank = MemoryBank(500, 128, 0.5, readers=2)
    bound = 1 / math.sqrt(128 / 3)
    assert bank.memory.shape == (500, 128) and bank.memory.abs().max() <= bound
    assert bank.memory.norm(dim=1).mean().item() == pytest.approx(1.0, abs=0.05)  # rows of norm ≈ 1
    assert torch.equal(bank.z, torch.tensor([-1.0, -1.0]))
    assert set(bank.state_dict()) == {"memory", "z"}  # persistent: checkpoints hold them
    assert not any(b.requires_grad for b in bank.buffers()) and not list(bank.parameters())
    assert bank_bytes(50_000) == 25_600_000 and bank_bytes(1_281_167) == 655_957_504


def test_bank_scores_golden_and_z_fixed_on_first_read():
    torch.manual_seed(1)
    bank = MemoryBank(7, 4, readers=2)
    memory = bank.memory.numpy().copy()
    anchor = torch.nn.functional.normalize(torch.randn(2, 4), dim=1)
    index = torch.tensor([[3, 0, 5, 6], [1, 2, 2, 4]])
    tau = 0.07
    raw, z = np_scores(anchor.numpy(), memory, index.numpy(), tau)
    got = bank.scores(anchor, index, tau, reader=1)
    np.testing.assert_allclose(got.numpy(), raw / z, rtol=1e-5)
    assert bank.z[1].item() == pytest.approx(z, rel=1e-6) and bank.z[0].item() == -1.0  # reader 0 not set yet
    np.testing.assert_allclose(contrast_scores(anchor, bank.read(index), tau).numpy(), raw, rtol=1e-5)
    # Z is a constant from then on: another anchor is divided by the first Z, not by its own mean
    other = torch.nn.functional.normalize(torch.randn(2, 4), dim=1)
    raw2, z2 = np_scores(other.numpy(), memory, index.numpy(), tau)
    assert abs(z2 - z) > 1e-3 * z
    np.testing.assert_allclose(bank.scores(other, index, tau, reader=1).numpy(), raw2 / z, rtol=1e-5)
    # the other reader fixes its own constant
    bank.scores(other, index, tau, reader=0)
    assert bank.z[0].item() == pytest.approx(z2, rel=1e-6) and bank.z[1].item() == pytest.approx(z, rel=1e-6)


def test_bank_update_follows_momentum_equation_with_renormalisation():
    torch.manual_seed(2)
    bank = MemoryBank(6, 3, momentum=0.3)
    before = bank.memory.numpy().copy()
    index = torch.tensor([4, 1])
    v = torch.tensor([[1.0, 2.0, -1.0], [0.0, -3.0, 0.5]], requires_grad=True)
    bank.update(index, v)
    after = bank.memory.numpy()
    for row, i in enumerate(index.tolist()):
        mixed = 0.3 * before[i] + 0.7 * v.detach().numpy()[row]
        np.testing.assert_allclose(after[i], mixed / np.linalg.norm(mixed), rtol=1e-6)
        assert np.linalg.norm(after[i]) == pytest.approx(1.0, rel=1e-6)
    untouched = [0, 2, 3, 5]
    np.testing.assert_array_equal(after[untouched], before[untouched])
    assert not bank.memory.requires_grad
    np.testing.assert_allclose(momentum_update(torch.tensor(before[[4]]), v[:1].detach(), 0.3).numpy(),
                               after[[4]], rtol=1e-6)


def test_clamp_negatives():
    assert clamp_negatives(16384, 50_000) == 16384
    assert clamp_negatives(16384, 16385) == 16384
    assert clamp_negatives(16384, 60) == 59
    with pytest.raises(ValueError):
        clamp_negatives(16384, 1)
    with pytest.raises(ValueError):
        NegativeSampler(10, 10)  # more than N − 1


LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1])  # 20 samples, 3 classes


@pytest.mark.parametrize("replacement", [False, True])
def test_sampler_other_class_with_known_labels(replacement):
    torch.manual_seed(3)
    sampler = NegativeSampler(20, 6, "other_class", replacement, labels=LABELS)
    index = torch.tensor([0, 5, 7, 19])
    out = sampler.sample(index, LABELS[index])
    assert out.shape == (4, 7) and torch.equal(out[:, 0], index)
    negatives = out[:, 1:]
    assert (negatives != index[:, None]).all()
    assert (LABELS[negatives] != LABELS[index][:, None]).all()
    if not replacement:  # pools of 13 or 14 ≥ 6: distinct negatives
        assert all(len(set(row.tolist())) == 6 for row in negatives)
    # over many draws every other-class sample appears: the draw covers the whole pool
    seen = torch.cat([sampler.sample(index, LABELS[index])[0, 1:] for _ in range(60)])
    assert set(seen.tolist()) == {i for i in range(20) if LABELS[i] != 0}


def test_sampler_short_pool_draws_with_replacement():
    torch.manual_seed(4)
    sampler = NegativeSampler(20, 19, "other_class", replacement=False, labels=LABELS)  # pools of 13-14 < 19
    index = torch.tensor([3, 4])
    negatives = sampler.sample(index, LABELS[index])[:, 1:]
    assert (LABELS[negatives] != LABELS[index][:, None]).all()
    assert all(len(set(row.tolist())) < 19 for row in negatives)  # repeats were needed


def test_sampler_learns_labels_from_batches():
    torch.manual_seed(5)
    sampler = NegativeSampler(20, 12, "other_class", replacement=False)
    assert (sampler.labels == -1).all()
    index = torch.arange(10)
    sampler.observe(index, LABELS[index])
    assert torch.equal(sampler.labels[:10], LABELS[:10]) and (sampler.labels[10:] == -1).all()
    anchor = torch.tensor([0])  # class 0; known class-0 samples are 0, 3, 6, 9
    assert sampler.pool_sizes(anchor, LABELS[anchor]).item() == 16
    seen = set()
    for _ in range(50):
        seen |= set(sampler.sample(anchor, LABELS[anchor])[0, 1:].tolist())
    assert not seen & {0, 3, 6, 9}
    assert {12, 15, 18} <= seen  # unseen samples of class 0 may be drawn while their label is unknown
    sampler.observe(torch.arange(20), LABELS)
    assert not set(sampler.sample(anchor, LABELS[anchor])[0, 1:].tolist()) & {0, 3, 6, 9, 12, 15, 18}
    assert "labels" in sampler.state_dict()


def test_sampler_any_rule_and_empty_pool():
    torch.manual_seed(6)
    sampler = NegativeSampler(5, 4, "any", replacement=False)
    index = torch.tensor([2, 4])
    out = sampler.sample(index, torch.tensor([0, 0]))
    assert [sorted(row) for row in out[:, 1:].tolist()] == [[0, 1, 3, 4], [0, 1, 2, 3]]  # every other sample once
    lonely = NegativeSampler(3, 1, "other_class", labels=torch.tensor([0, 0, 0]))
    with pytest.raises(ValueError, match="no possible negative"):
        lonely.sample(torch.tensor([1]), torch.tensor([0]))


def test_sampler_auto_replacement_by_dataset_size():
    assert NegativeSampler(50_000, 16384, "any").replacement is False  # RepDistiller's CIFAR loader
    assert NegativeSampler(1_281_167, 16384, "any").replacement is True  # its ImageNet loader


# --- the method -------------------------------------------------------------------------------------------------

def make(group=("cifar_resnet8",) * 3, num_train=12, classes=3, size=(8, 8), **hparams):
    cls = load_methods().get("dml_crd")
    ctx = timm_context(group, classes, size, num_train=num_train)
    torch.manual_seed(0)
    return cls(cls.HParams(**hparams), ctx)


def tiny_batch(n=4, size=(8, 8), seed=0):
    return random_batch(n, size, seed, index=torch.tensor([2, 7, 5, 10]))


FIXED_INDEX = torch.tensor([[2, 0, 4, 11, 9], [7, 3, 1, 6, 11], [5, 8, 6, 1, 0], [10, 4, 9, 3, 0]])


def test_hparams_defaults_and_sizes():
    method = make()
    hp = method.hp
    assert (hp.temperature, hp.kl_weight, hp.t2_scaling, hp.peer_reduction) == (4.0, 1.0, True, "mean")
    assert (hp.beta, hp.feat_dim, hp.num_negatives, hp.nce_temperature, hp.momentum) == (0.8, 128, 16384, 0.07, 0.5)
    assert (hp.negatives, hp.replacement, hp.warmup_epochs) == ("other_class", None, 0)
    assert method.num_negatives == 11 and method.sampler.num_negatives == 11  # clamped to N − 1
    assert make(num_train=20_000).num_negatives == 16384
    assert [bank.memory.shape for bank in method.banks] == [(12, 128)] * 3
    assert [bank.z.shape for bank in method.banks] == [(2,)] * 3
    assert [reader_slot(k, l) for l in range(3) for k in range(3) if k != l] == [0, 1, 0, 1, 0, 1]


def test_every_term_golden_three_peers():
    method = make(beta=0.5, nce_temperature=0.2, momentum=0.4, temperature=3.0, kl_weight=0.7)
    method.sampler.sample = lambda index, y: FIXED_INDEX  # fixed negatives
    batch = tiny_batch()
    banks = [b.memory.numpy().copy() for b in method.banks]
    terms = method.losses(batch, Step(0, 0, 2, 1))
    assert set(terms) == {f"{t}/net{k}" for t in ("ce", "kl", "crd") for k in (1, 2, 3)}

    # Independent computation from the peers' features (train-mode BN uses batch statistics: the same outputs).
    with torch.no_grad():
        feats = [adapter.extract(p, batch.x) for p in method.peers]
    logits = [f.logits.double().numpy() for f in feats]
    emb = []
    for head, f in zip(method.embeds, feats):
        w, b = head.linear.weight.detach().double().numpy(), head.linear.bias.detach().double().numpy()
        emb.append(np_normalise(f.embedding.double().numpy() @ w.T + b))
    y = batch.y.numpy()
    for k in range(3):
        others = [l for l in range(3) if l != k]
        assert terms[f"ce/net{k + 1}"].item() == pytest.approx(np_ce(logits[k], y), rel=1e-5)
        kl = np.mean([np_kl(logits[l], logits[k], 3.0) for l in others])
        assert terms[f"kl/net{k + 1}"].item() == pytest.approx(0.7 * 9 * kl, rel=1e-4)
        nce = []
        for l in others:
            raw, z = np_scores(emb[k], banks[l], FIXED_INDEX.numpy(), 0.2)
            nce.append(np_nce(raw / z, 12))
            assert method.banks[l].z[reader_slot(k, l)].item() == pytest.approx(z, rel=1e-5)
        assert terms[f"crd/net{k + 1}"].item() == pytest.approx(0.5 * np.mean(nce), rel=1e-5)

    # Every bank took its own peer's embedding of the batch, once: normalise(0.4·m + 0.6·v).
    for l, bank in enumerate(method.banks):
        expected = banks[l].astype(np.float64).copy()
        for row, i in enumerate(batch.index.tolist()):
            expected[i] = np_normalise((0.4 * banks[l][i] + 0.6 * emb[l][row])[None])[0]
        np.testing.assert_allclose(bank.memory.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_sum_reduction_doubles_the_three_peer_crd_term():
    mean, total = make(), make(peer_reduction="sum")
    for method in (mean, total):
        method.sampler.sample = lambda index, y: FIXED_INDEX
    a, b = mean.losses(tiny_batch(), None), total.losses(tiny_batch(), None)
    for k in (1, 2, 3):
        assert b[f"crd/net{k}"].item() == pytest.approx(2 * a[f"crd/net{k}"].item(), rel=1e-5)


def test_partner_embeddings_get_no_gradient():
    method = make()
    terms = method.losses(tiny_batch(), None)
    terms["crd/net1"].backward()
    # CRD acts on the pooled embedding: peer 1's classifier is not on its path; everything below it and the head is
    classifier = {id(p) for p in method.peers[0].get_classifier().parameters()}
    own = [p for p in method.peers[0].parameters() if id(p) not in classifier] + list(method.embeds[0].parameters())
    assert all(p.grad is not None for p in own) and all(p.grad.abs().sum() > 0 for p in own)
    assert all(p.grad is None for p in method.peers[0].get_classifier().parameters())
    for k in (1, 2):  # peers 2 and 3 and their heads: reached only through their (detached) banks
        assert all(p.grad is None for p in method.peers[k].parameters())
        assert all(p.grad is None for p in method.embeds[k].parameters())
    assert not any(b.requires_grad for bank in method.banks for b in bank.buffers())


def test_z_constants_set_once_and_sampler_learns_labels():
    method = make()
    batch = tiny_batch()
    method.losses(batch, None)
    z = [bank.z.clone() for bank in method.banks]
    assert all((zz > 0).all() for zz in z)
    assert torch.equal(method.sampler.labels[batch.index], batch.y)
    method.losses(tiny_batch(seed=1), None)
    assert all(torch.equal(a, bank.z) for a, bank in zip(z, method.banks))


def test_warmup_zeroes_kl_and_crd_but_updates_banks():
    method = make(warmup_epochs=1)
    before = [b.memory.clone() for b in method.banks]
    terms = method.losses(tiny_batch(), Step(0, 0, 2, 1))
    for k in (1, 2, 3):
        assert terms[f"kl/net{k}"].item() == 0.0 and terms[f"crd/net{k}"].item() == 0.0
        assert terms[f"ce/net{k}"].item() > 0
    assert all(not torch.equal(a, b.memory) for a, b in zip(before, method.banks))
    later = method.losses(tiny_batch(), Step(1, 0, 2, 1))
    assert all(later[f"crd/net{k}"].item() > 0 for k in (1, 2, 3))


def test_heads_train_in_their_peers_group_and_are_counted_apart():
    recipe = {**TINY_RECIPE, "epochs": 1, "peer_lr": {"cifar_wrn_16_2": 0.01}}
    tr = Trainer(Cell(method="dml_crd", hparams={}, group=("cifar_resnet8", "cifar_wrn_16_2"), dataset=DATA,
                      recipe=recipe, seed=0))
    method = tr.method
    groups = method.optimizers["peers"].param_groups
    assert [g["model"] for g in groups] == ["cifar_resnet8", "cifar_wrn_16_2"]
    for k, group in enumerate(groups):
        expected = {id(p) for p in method.peers[k].parameters()} | {id(p) for p in method.embeds[k].parameters()}
        assert {id(p) for p in group["params"]} == expected
    assert groups[0]["lr"] == 0.05 and groups[1]["lr"] == 0.01
    widths = [timm.create_model(n, num_classes=10, in_chans=1).num_features for n in method.ctx.group]
    assert [h.linear.in_features for h in method.embeds] == widths and widths == [64, 128]
    counts = method.parameter_counts()
    n = method.ctx.num_train
    assert counts["added"] == {"embed": sum((w + 1) * 128 for w in widths), "memory": 0, "negatives": 0}
    assert counts["added_buffers_bytes"]["memory"] == 2 * (n * 128 * 4 + 4)
    assert counts["added_buffers_bytes"]["negatives"] == n * 8
    assert counts["deployed"] == sum(p.numel() for p in method.peers.parameters())


# --- end to end ---------------------------------------------------------------------------------------------------

def snapshot(trainer: Trainer) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(trainer.state_dict(), buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("group", [("cifar_resnet8", "cifar_resnet14"), ("cifar_resnet8",) * 3],
                         ids=["K2-mixed", "K3"])
def test_end_to_end_and_resume(group):
    def trainer():
        return Trainer(Cell(method="dml_crd", hparams={}, group=group, dataset=DATA,
                            recipe={**TINY_RECIPE, "epochs": 2}, seed=0))

    tr = trainer()
    initial = [b.memory.clone() for b in tr.method.banks]
    states = []
    tr.run(lambda t, metrics: states.append(snapshot(t)))
    last = tr.history[-1]
    k = len(group)
    assert {key.split("/", 1)[1] for key in last if key.startswith("top1/")} == \
        {f"net{i + 1}" for i in range(k)} | {"ens", "avg"}
    for i in range(1, k + 1):
        for term in ("ce", "kl", "crd"):
            assert math.isfinite(last[f"loss/{term}/net{i}"]) and last[f"loss/{term}/net{i}"] > 0
    method = tr.method
    n = method.ctx.num_train
    assert method.num_negatives == n - 1  # 60 images: 16,384 clamped to 59
    assert (method.sampler.labels >= 0).all()  # every label seen in epoch 1
    for bank, start in zip(method.banks, initial):
        moved = (bank.memory != start).any(1)
        assert moved.sum() >= n - 1  # the engine may drop one last image
        np.testing.assert_allclose(bank.memory[moved].norm(dim=1).numpy(), 1.0, rtol=1e-5)
        assert (bank.z > 0).all()

    resumed = trainer()
    epoch1 = torch.load(states[0], weights_only=False)
    resumed.load_state_dict(epoch1)
    for l, bank in enumerate(resumed.method.banks):  # the banks come back from the checkpoint, not from the init
        assert torch.equal(bank.memory, epoch1["modules"][f"memory.{l}.memory"])
        assert not torch.equal(bank.memory, initial[l]) and (bank.z > 0).all()
    resumed.run()
    for a, b in zip(resumed.method.modules.parameters(), method.modules.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(resumed.method.modules.buffers(), method.modules.buffers()):
        assert torch.equal(a, b)  # banks, their constants, the label table, BN statistics
    timing = {"images_per_s", "train_time_s", "eval_time_s"}
    assert {key: v for key, v in resumed.history[-1].items() if key not in timing} == \
        {key: v for key, v in last.items() if key not in timing}


def test_the_sampler_draws_the_same_negatives_with_one_host_sync(monkeypatch):
    """CRD's sampler read the class counts through a masked selection and ``int(y.max())``, then asked twice
    whether any anchor's pool was empty or short: four host syncs per draw on a GPU.  Knowing the number of
    classes, it counts with a fixed-size scatter and reads both flags at once: no scalar read in the dispatched
    ops, one ``.tolist()``, and the very same negatives."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from methods.common.contrastive import NegativeSampler

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    y = torch.arange(100) % 10
    drawn, syncing, reads = [], [], []
    real_tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(1) or real_tolist(self))
    for classes in (0, 10):
        sampler = NegativeSampler(100, 20, "other_class", replacement=False, num_classes=classes)
        sampler.observe(torch.arange(100), y)
        torch.manual_seed(0)
        reads.clear()
        with Ops() as ops:
            drawn.append(sampler.sample(torch.arange(8), y[:8]))
        syncing.append({n for n in ops.names if n in ("aten._local_scalar_dense", "aten.bincount", "aten.nonzero")})
    assert torch.equal(drawn[0], drawn[1])
    assert syncing[0] and syncing[1] == set() and reads == [1]
    assert not (y[drawn[1][:, 1:]] == y[:8, None]).any()  # negatives of other classes only
