"""Online feature KD on DML (dml_fitnet, dml_at, dml_nst, dml_sp, dml_rkd, dml_pkt): every term against numpy on the
peers' real features for K = 3, partners' features getting no gradient, mixed architectures, FitNet's regressors and
their optimizer groups, the warm-up, and end-to-end runs (K = 2 mixed, K = 3) with a checkpoint resume."""
import io
import math

import harness.models  # noqa: F401  (first: the torchvision shim runs before timm is imported)
import numpy as np
import pytest
import torch

from harness.config.cell import Cell
from harness.models import adapter
from harness.training.engine import Trainer
from harness.training.method import Step, load_methods
from methods.common.online_feature import pair_key
from tests.helpers import np_at, np_ce, np_hint, np_kl, np_nst, np_pkt, np_rkd_parts, np_sp, random_batch, timm_context, TINY_RECIPE

METHODS = ["dml_fitnet", "dml_at", "dml_nst", "dml_sp", "dml_rkd", "dml_pkt"]
DATA = {"name": "fashion_mnist_mini", "train_per_class": 6, "test_per_class": 5}
BETA = {"dml_fitnet": 1.0, "dml_at": 1000.0, "dml_nst": 50.0, "dml_sp": 3000.0, "dml_rkd": 1.0, "dml_pkt": 30000.0}
TERM = {"dml_fitnet": "hint", "dml_at": "at", "dml_nst": "nst", "dml_sp": "sp", "dml_rkd": "rkd", "dml_pkt": "pkt"}


pytestmark = pytest.mark.usefixtures("one_thread")


def make(name, group=("cifar_resnet8", "cifar_resnet8"), classes=3, size=(8, 8), **hparams):
    cls = load_methods().get(name)
    ctx = timm_context(group, classes, size)
    torch.manual_seed(0)
    return cls(cls.HParams(**hparams), ctx)


def np_pair(name, method, k, l, feats):
    """The feature loss of peer k against peer l, from numpy references on the extracted features."""
    if name == "dml_fitnet":
        with torch.no_grad():
            hint = method.connector(k, l)(feats[k].stages[2])
        return np_hint(hint.numpy(), feats[l].stages[2].numpy())
    if name in ("dml_at", "dml_nst"):
        ref = np_at if name == "dml_at" else np_nst
        return ref([m.numpy() for m in feats[k].blocks], [m.numpy() for m in feats[l].blocks])
    if name == "dml_sp":
        return np_sp(feats[k].stages[-1].numpy(), feats[l].stages[-1].numpy())
    e_k, e_l = feats[k].embedding.numpy(), feats[l].embedding.numpy()
    if name == "dml_rkd":
        d, a = np_rkd_parts(e_k, e_l)
        return 25 * d + 50 * a
    return np_pkt(e_k, e_l)


# --- the loss -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", METHODS)
def test_terms_golden_for_three_peers(name):
    t = 4.0
    method = make(name, group=("cifar_resnet8", "cifar_resnet14", "cifar_resnet8"))
    method.modules.double()
    batch = random_batch(dtype=torch.float64)
    terms = method.losses(batch, Step(0, 0, 2, 1))
    with torch.no_grad():
        feats = [adapter.extract(peer, batch.x) for peer in method.peers]  # train mode: the same batch statistics
    logits = [f.logits.numpy() for f in feats]
    y = batch.y.numpy()
    assert set(terms) == {f"{kind}/net{k}" for kind in ("ce", "kl", TERM[name]) for k in (1, 2, 3)}
    for k in range(3):
        others = [l for l in range(3) if l != k]
        assert terms[f"ce/net{k + 1}"].item() == pytest.approx(np_ce(logits[k], y), abs=1e-10)
        kl = t * t * np.mean([np_kl(logits[l], logits[k], t) for l in others])
        assert terms[f"kl/net{k + 1}"].item() == pytest.approx(kl, rel=1e-9, abs=1e-12)
        feat = BETA[name] * np.mean([np_pair(name, method, k, l, feats) for l in others])
        assert feat > 0
        assert terms[f"{TERM[name]}/net{k + 1}"].item() == pytest.approx(feat, rel=1e-8)


def test_sum_over_partners_weights_and_temperature():
    base = make("dml_sp", group=("cifar_resnet8",) * 3)
    other = make("dml_sp", group=("cifar_resnet8",) * 3, peer_reduction="sum", beta=7.0, kl_weight=0.5,
                 temperature=2.0, t2_scaling=False)
    other.modules.load_state_dict(base.modules.state_dict())
    batch = random_batch()
    a, b = base.losses(batch, None), other.losses(batch, None)
    assert b["sp/net2"].item() == pytest.approx(a["sp/net2"].item() / 3000 * 7 * 2, rel=1e-5)  # mean → sum, β 7
    logits = [peer(batch.x).detach().numpy() for peer in base.peers]
    expected = 0.5 * sum(np_kl(logits[l], logits[0], 2.0) for l in (1, 2))  # no T², summed, weight 0.5
    assert b["kl/net1"].item() == pytest.approx(expected, rel=1e-5)
    assert a["kl/net1"].item() == pytest.approx(16 * np.mean([np_kl(logits[l], logits[0], 4.0) for l in (1, 2)]),
                                                rel=1e-5)


def test_warmup_zeroes_kl_and_feature_terms():
    method = make("dml_at", warmup_epochs=2)
    batch = random_batch()
    early, late = method.losses(batch, Step(1, 0, 5, 1)), method.losses(batch, Step(2, 0, 5, 1))
    assert early["kl/net1"].item() == 0 and early["at/net2"].item() == 0 and early["ce/net1"].item() > 0
    assert late["kl/net1"].item() > 0 and late["at/net2"].item() > 0


# --- gradients ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", METHODS)
def test_partner_features_get_no_gradient(name):
    method = make(name, group=("cifar_resnet8", "cifar_resnet14"))
    terms = method.losses(random_batch(), Step(0, 0, 2, 1))
    terms[f"{TERM[name]}/net1"].backward(retain_graph=True)
    peer1, peer2 = method.peers
    assert all(p.grad is None for p in peer2.parameters())  # the partner's features are detached
    assert sum(p.grad.abs().sum() for p in peer1.parameters() if p.grad is not None) > 0
    (terms["ce/net1"] + terms["kl/net1"]).backward()
    assert all(p.grad is None for p in peer2.parameters())  # the whole loss of net1 leaves net2 alone
    if name == "dml_fitnet":
        mine, theirs = method.connector(0, 1), method.connector(1, 0)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mine.parameters())
        assert all(p.grad is None for p in theirs.parameters())


# --- mixed architectures and FitNet's regressors ------------------------------------------------------------------

@pytest.mark.parametrize("name", METHODS)
def test_mixed_widths_depths_and_stage_counts(name):
    group = ("cifar_resnet8", "cifar_wrn_16_2", "cifar_vgg8")  # widths 64/128/512, 3 vs 4 blocks, last map 4 vs 1
    method = make(name, group=group, size=(16, 16))
    terms = method.losses(random_batch(size=(16, 16)), Step(0, 0, 2, 1))
    assert all(math.isfinite(v.item()) for v in terms.values())
    assert all(terms[f"{TERM[name]}/net{k}"].item() > 0 for k in (1, 2, 3))


def test_fitnet_regressors_map_each_hint_to_the_partners_map():
    group = ("cifar_resnet8", "cifar_wrn_16_2", "cifar_vgg8")
    method = make("dml_fitnet", group=group, size=(28, 28))
    connectors = method.modules["connectors"]
    assert set(connectors) == {pair_key(k, l) for k in range(3) for l in range(3) if k != l}
    x = torch.zeros(2, 1, 28, 28)
    method.modules.eval()
    with torch.no_grad():
        hints = [adapter.extract(peer, x).stages[2] for peer in method.peers]
        assert [tuple(h.shape[1:]) for h in hints] == [(32, 14, 14), (64, 14, 14), (256, 7, 7)]
        for k in range(3):
            for l in range(3):
                if k != l:
                    assert method.connector(k, l)(hints[k]).shape == hints[l].shape
    assert connectors["net1_from_net3"].conv.stride == (2, 2)  # 14 → 7
    assert type(connectors["net3_from_net1"].conv).__name__ == "ConvTranspose2d"  # 7 → 14
    counts = method.parameter_counts()
    assert counts["added"]["connectors"] == sum(p.numel() for p in connectors.parameters()) > 0


def test_fitnet_identity_between_equal_shapes_and_hint_layer_checks():
    same = make("dml_fitnet", group=("cifar_resnet8", "cifar_resnet14"), regressor="when_shapes_differ")
    assert "connectors" not in same.modules and same.connector(0, 1) is None
    assert same.losses(random_batch(), None)["hint/net1"].item() > 0
    mixed = make("dml_fitnet", group=("cifar_resnet8", "cifar_wrn_16_2"), regressor="when_shapes_differ")
    assert set(mixed.modules["connectors"]) == {"net1_from_net2", "net2_from_net1"}
    always = make("dml_fitnet", group=("cifar_resnet8", "cifar_resnet14"))
    assert always.connector(0, 1).conv.kernel_size == (1, 1)  # RepDistiller's ConvReg even for equal shapes
    cls = load_methods().get("dml_fitnet")
    assert cls.group_error(cls.HParams(hint_layer=4), ("cifar_resnet8", "cifar_resnet14")) is not None
    assert cls.group_error(cls.HParams(), ("cifar_resnet8", "cifar_resnet14")) is None
    with pytest.raises(ValueError, match="hint_layer"):
        make("dml_fitnet", hint_layer=4)


def test_connectors_train_in_their_students_parameter_group():
    recipe = {**TINY_RECIPE, "epochs": 1, "peer_lr": {"cifar_resnet14": 0.01}}
    tr = Trainer(Cell(method="dml_fitnet", hparams={}, group=("cifar_resnet8", "cifar_resnet14"), dataset=DATA,
                      recipe=recipe, seed=0))
    method = tr.method
    groups = method.optimizers["peers"].param_groups
    assert [g["model"] for g in groups] == ["cifar_resnet8", "cifar_resnet14"]
    for k, group in enumerate(groups):
        expected = {id(p) for p in method.peers[k].parameters()} | {
            id(p) for p in method.connector(k, 1 - k).parameters()}
        assert {id(p) for p in group["params"]} == expected
    assert groups[0]["lr"] == 0.05 and groups[1]["lr"] == 0.01


# --- end to end ---------------------------------------------------------------------------------------------------

def trainer(name, group, epochs=2):
    return Trainer(Cell(method=name, hparams={}, group=group, dataset=DATA, recipe={**TINY_RECIPE, "epochs": epochs},
                        seed=0))


@pytest.mark.parametrize("name", METHODS)
def test_end_to_end_mixed_pair(name):
    tr = trainer(name, ("cifar_resnet8", "cifar_resnet14"))
    tr.run()
    last = tr.history[-1]
    assert {k.split("/", 1)[1] for k in last if k.startswith("top1/")} == {"net1", "net2", "ens", "avg"}
    for key in (f"loss/{TERM[name]}/net1", f"loss/{TERM[name]}/net2", "loss/kl/net1", "loss/ce/net2"):
        assert math.isfinite(last[key]) and last[key] > 0, key


def test_end_to_end_three_peers_and_resume():
    group = ("cifar_resnet8", "cifar_resnet14", "cifar_resnet8")
    full = trainer("dml_fitnet", group)
    states = []
    full.run(lambda t, metrics: states.append(io.BytesIO()) or torch.save(t.state_dict(), states[-1]))
    assert len(full.method.modules["connectors"]) == 6
    states[0].seek(0)
    resumed = trainer("dml_fitnet", group)
    resumed.load_state_dict(torch.load(states[0], weights_only=False))
    resumed.run()
    for (name, a), b in zip(full.method.modules.named_parameters(), resumed.method.modules.parameters()):
        assert torch.equal(a, b), name
    assert resumed.history[-1]["loss/hint/net3"] == full.history[-1]["loss/hint/net3"]
