"""AMLN: each loss term on fixed tensors against numpy, the assembled Eq. 9 terms, the alternating discriminator /
generator updates, peers of different architectures, the Table 6 cases, and a checkpoint that resumes exactly."""
import copy
import io

import harness.models  # noqa: F401  (first: the torchvision shim runs before timm is imported)
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from harness.config.recipe import OptimizerSpec, build_optimizer
from harness.reporting.listing import list_methods
from harness.training.method import Step, load_methods
from methods.amln import (CASES, AlignmentContainer, BlockDiscriminator, discriminator_loss, feature_distance,
                          generator_loss, outcome_kl, pair_key, pool_to)
from tests.helpers import changed_params, np_ce, np_kl, np_softmax, param_snapshot, random_batch, timm_context, tt

Z1 = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]]
Z2 = [[1.0, 1.5, 0.0], [-0.5, 2.0, 0.1]]
Y = [0, 2]


def make(group=("cifar_resnet8", "cifar_resnet8"), classes=3, size=8, **hparams):
    """An AMLN method on tiny images, with the optimizers the engine would build (recipe SGD, its Adam)."""
    cls = load_methods().get("amln")
    ctx = timm_context(group, classes, size)
    torch.manual_seed(0)
    method = cls(cls.HParams(**hparams), ctx)
    sgd = OptimizerSpec(name="sgd", lr=0.1, nesterov=True, weight_decay=1e-4)
    for name, group in method.optim_groups().items():
        spec = OptimizerSpec.model_validate(group.optimizer) if group.optimizer else sgd
        method.optimizers[name] = build_optimizer(spec, group.params)
    return method


def np_ce_label(logits, label):
    logits = np.asarray(logits, dtype=np.float64)
    return np_ce(logits, np.full(len(logits), label))


# --- loss pieces on fixed tensors ------------------------------------------------------------------------------
def test_outcome_kl_golden_both_directions():
    t = 3.0
    z1, z2 = tt(Z1), tt(Z2)
    assert outcome_kl(z1, z2, t).item() == pytest.approx(t * t * np_kl(Z2, Z1, t), abs=1e-12)
    p, q = np_softmax(Z1, t), np_softmax(Z2, t)  # Eq. 7 as printed: KL(ρ_self ‖ ρ_partner)
    reverse = t * t * np.mean(np.sum(p * np.log(p / q), axis=1))
    assert outcome_kl(z1, z2, t, "reverse").item() == pytest.approx(reverse, abs=1e-12)
    assert abs(reverse - t * t * np_kl(Z2, Z1, t)) > 1e-6  # the two directions really differ here
    # the partner is a detached target in both directions
    z1, z2 = tt(Z1, grad=True), tt(Z2, grad=True)
    (outcome_kl(z1, z2, t) + outcome_kl(z1, z2, t, "reverse")).backward()
    assert z2.grad is None and z1.grad.abs().sum() > 0


def test_adversarial_losses_golden():
    own, partner = np.array(Z1), np.array(Z2)[:, :2]
    own = own[:, :2]
    ce_d = np_ce_label(own, 0) + np_ce_label(partner, 1)
    assert discriminator_loss(tt(own), tt(partner)).item() == pytest.approx(ce_d, abs=1e-12)
    assert generator_loss(tt(own)).item() == pytest.approx(np_ce_label(own, 1), abs=1e-12)
    d_own, d_partner = np_softmax(own)[:, 1], np_softmax(partner)[:, 1]  # D(x) = P(partner)
    linear_d = -(np.mean(1 - d_own) + np.mean(d_partner))
    assert discriminator_loss(tt(own), tt(partner), "linear").item() == pytest.approx(linear_d, abs=1e-12)
    assert generator_loss(tt(own), "linear").item() == pytest.approx(np.mean(1 - d_own), abs=1e-12)


def test_adversarial_hand_values():
    # logits (0, 0): D says 1/2 for every class → CE = log 2 per term
    zero = torch.zeros(3, 2, dtype=torch.float64)
    assert discriminator_loss(zero, zero).item() == pytest.approx(2 * np.log(2), abs=1e-12)
    assert generator_loss(zero).item() == pytest.approx(np.log(2), abs=1e-12)
    # D certain of the partner class on the own feature (log 3: P = 3/4) → generator's linear loss 1/4
    fooled = torch.tensor([[0.0, np.log(3.0)]], dtype=torch.float64)
    assert generator_loss(fooled, "linear").item() == pytest.approx(0.25, abs=1e-12)


def test_feature_distance_golden():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 2, 2, 2)), rng.normal(size=(3, 2, 2, 2))
    assert feature_distance(tt(a), tt(b)).item() == pytest.approx(np.mean((a - b) ** 2), abs=1e-12)
    l2 = np.mean(np.sqrt(((a - b) ** 2).reshape(3, -1).sum(1)))
    assert feature_distance(tt(a), tt(b), "l2").item() == pytest.approx(l2, abs=1e-12)


# --- modules ---------------------------------------------------------------------------------------------------
def test_pool_to_averages_channel_groups_and_windows():
    x = np.arange(2 * 4 * 4 * 4, dtype=np.float64).reshape(2, 4, 4, 4)
    out = pool_to(tt(x), (2, 2, 2)).numpy()
    expected = x.reshape(2, 2, 2, 2, 2, 2, 2).mean(axis=(2, 4, 6))  # (n, c, 2, h, 2, w, 2)
    np.testing.assert_allclose(out, expected, atol=1e-12)
    same = tt(x)
    assert pool_to(same, (4, 4, 4)) is same


def test_discriminator_and_container_shapes():
    d = BlockDiscriminator((32, 16, 16), (16, 8, 8), reduction=2)
    assert d.common == (16, 8, 8) and d.sigma.in_channels == 16 and d.sigma.out_channels == 8
    convs = [m for m in d.body if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3 and convs[-1].out_channels == 2  # three convs, the last with two outputs
    assert sum(isinstance(m, torch.nn.ReLU) for m in d.body) == 2
    assert d(torch.randn(3, 32, 16, 16)).shape == (3, 2) and d(torch.randn(3, 16, 8, 8)).shape == (3, 2)
    c = AlignmentContainer((16, 28, 28), (128, 7, 7))
    assert c.depthwise.stride == (4, 4) and c.depthwise.groups == 16
    assert c(torch.randn(2, 16, 28, 28)).shape == (2, 128, 7, 7)
    assert AlignmentContainer((64, 3, 3), (32, 7, 7))(torch.randn(2, 64, 3, 3)).shape == (2, 32, 7, 7)


# --- the method's terms --------------------------------------------------------------------------------------------
def test_peer_terms_golden():
    t, beta = 3.0, 0.5
    method = make(beta=beta)
    batch = random_batch()
    feats = method.features(batch, [0, 1])
    y = batch.y.numpy()
    terms = method.peer_terms(feats, [0, 1], batch.y)
    disc = method.discriminator_terms(feats, [0, 1])
    assert set(terms) == {f"{k}/net{j}" for k in ("ce", "kl", "adv", "feat") for j in (1, 2)}
    with torch.no_grad():
        for j, l in ((0, 1), (1, 0)):
            zj, zl = feats[j].logits.numpy(), feats[l].logits.numpy()
            ds, cs = method.discriminators[pair_key(j, l)], method.containers[pair_key(j, l)]
            assert len(ds) == len(cs) == 3  # one per block
            own = [d(feats[j].blocks[b]).numpy() for b, d in enumerate(ds)]
            partner = [d(feats[l].blocks[b]).numpy() for b, d in enumerate(ds)]
            target = feats[l].last.numpy()
            aligned = [c(feats[j].blocks[b]).numpy() for b, c in enumerate(cs)]
            expected = {
                "ce": np_ce(zj, y),
                "kl": t * t * np_kl(zl, zj, t),
                "adv": sum(np_ce_label(o, 1) for o in own),
                "feat": beta * sum(np.mean((a - target) ** 2) for a in aligned),
            }
            for key, value in expected.items():
                assert terms[f"{key}/net{j + 1}"].item() == pytest.approx(value, rel=1e-5, abs=1e-6), key
            expected_disc = sum(np_ce_label(o, 0) + np_ce_label(p, 1) for o, p in zip(own, partner))
            assert disc[f"disc/net{j + 1}"].item() == pytest.approx(expected_disc, rel=1e-5)
    # Eq. 9: the step minimises the sum of these terms
    total = sum(v.item() for v in terms.values())
    assert total == pytest.approx(sum(float(v.detach()) for v in method.losses(batch, Step(0, 0, 1, 1)).values()), rel=1e-5)


def test_partner_is_detached_and_discriminators_get_no_generator_gradient():
    method = make()
    feats = method.features(random_batch(), [0, 1])
    from methods.amln import frozen

    with frozen(method.discriminators):
        terms = method.peer_terms(feats, [0], random_batch().y)
    torch.stack(list(terms.values())).sum().backward()
    assert all(p.grad is None for p in method.peers[1].parameters())
    assert all(p.grad is None for p in method.discriminators.parameters())
    assert all(p.grad is None for p in method.containers[pair_key(1, 0)].parameters())
    assert all(p.grad is not None for p in method.containers[pair_key(0, 1)].parameters())
    assert all(p.requires_grad for p in method.discriminators.parameters())  # restored after the block


def test_three_peers_mean_and_sum_over_partners():
    mean = make(group=("cifar_resnet8",) * 3)
    total = make(group=("cifar_resnet8",) * 3, peer_reduction="sum")
    assert len(mean.discriminators) == len(mean.containers) == 6  # every ordered pair
    batch = random_batch()
    a = mean.peer_terms(mean.features(batch, [0, 1, 2]), [0, 1, 2], batch.y)
    b = total.peer_terms(total.features(batch, [0, 1, 2]), [0, 1, 2], batch.y)
    for key in a:
        factor = 1.0 if key.startswith("ce/") else 2.0
        assert b[key].item() == pytest.approx(factor * a[key].item(), rel=1e-5)


# --- alternating updates ---------------------------------------------------------------------------------------
def test_discriminator_step_then_generator_step_touch_disjoint_weights():
    method = make()
    batch = random_batch()
    feats = method.features(batch, [0, 1])
    peers_and_containers = torch.nn.ModuleDict({"peers": method.peers, "containers": method.containers})
    before_d, before_g = param_snapshot(method.discriminators), param_snapshot(peers_and_containers)
    method.discriminator_step(feats, [0, 1])
    assert changed_params(method.discriminators, before_d) == set(before_d)  # every discriminator weight moved
    assert not changed_params(peers_and_containers, before_g)
    before_d = param_snapshot(method.discriminators)
    method.generator_step(feats, [0, 1], batch.y)
    assert not changed_params(method.discriminators, before_d)
    assert changed_params(peers_and_containers, before_g) == set(before_g)


@pytest.mark.parametrize("update", ["joint", "sequential"])
def test_train_step_updates_everything(update):
    method = make(update=update)
    before = param_snapshot(method.modules)
    terms = method.train_step(random_batch(), Step(0, 0, 1, 1))
    assert set(terms) == {f"{k}/net{j}" for k in ("ce", "kl", "adv", "feat", "disc") for j in (1, 2)}
    assert all(torch.isfinite(v) for v in terms.values())
    assert changed_params(method.modules, before) == set(before)


def test_discriminator_optimizer_is_its_own_adam():
    method = make()
    groups = method.optim_groups()
    assert groups["discriminators"].optimizer == {"name": "adam", "lr": 2e-4, "betas": [0.5, 0.999],
                                                  "weight_decay": 0.0}
    assert groups["discriminators"].follow_schedule is False
    d_ids = {id(p) for p in method.discriminators.parameters()}
    peer_ids = {id(p) for g in groups["peers"].params for p in g["params"]}
    assert not d_ids & peer_ids
    assert peer_ids == {id(p) for p in method.peers.parameters()} | {id(p) for p in method.containers.parameters()}
    assert isinstance(method.optimizers["discriminators"], torch.optim.Adam)


# --- different architectures ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("group", [("cifar_resnet8", "cifar_wrn_16_2"), ("cifar_vgg8", "cifar_resnet8")])
def test_different_architectures_train_a_step(group):
    method = make(group=group, size=16)
    batch = random_batch(size=16)
    feats = method.features(batch, [0, 1])
    for j, l in ((0, 1), (1, 0)):
        cs = method.containers[pair_key(j, l)]
        assert len(cs) == min(len(feats[0].blocks), len(feats[1].blocks)) == 3
        for b, c in enumerate(cs):
            assert c(feats[j].blocks[b]).shape == feats[l].last.shape
        for b, d in enumerate(method.discriminators[pair_key(j, l)]):
            assert d.common == tuple(min(x, z) for x, z in zip(feats[j].blocks[b].shape[1:],
                                                               feats[l].blocks[b].shape[1:]))
    before = param_snapshot(method.modules)
    terms = method.train_step(batch, Step(0, 0, 1, 1))
    assert all(torch.isfinite(v) for v in terms.values())
    assert changed_params(method.modules, before) == set(before)


# --- Table 6 cases -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list("ABCDE"))
def test_table6_cases_toggle_terms(case):
    paper = {"A": set(), "B": {"kl"}, "C": {"kl", "feat"}, "D": {"kl", "adv"}, "E": {"kl", "adv", "feat"}}
    method = make(case=case)
    switches = CASES[case]
    assert {k: getattr(method.hp, k) for k in switches} == switches
    terms = method.train_step(random_batch(), Step(0, 0, 1, 1))
    kinds = {name.split("/")[0] for name in terms} - {"ce", "disc"}
    assert kinds == paper[case]
    assert ("disc/net1" in terms) == ("adv" in paper[case])
    assert ("discriminators" in method.modules) == ("adv" in paper[case])
    assert ("containers" in method.modules) == ("feat" in paper[case])
    assert ("discriminators" in method.optimizers) == ("adv" in paper[case])


def test_case_agrees_with_switches_or_is_rejected():
    params = load_methods().get("amln").HParams
    assert params(case="C", use_adversarial=False) == params(case="C")
    assert params(case="D").use_feature is False and params().use_feature is True
    with pytest.raises(ValidationError, match="contradicts"):
        params(case="C", use_adversarial=True)
    with pytest.raises(ValidationError):
        params(case="F")
    # the switches alone reproduce a case
    no_ld = make(use_adversarial=False)
    assert "discriminators" not in no_ld.modules and "containers" in no_ld.modules


def test_case_b_is_dml_at_t3():
    """Case B's terms equal this harness's DML with T = 3 on the same logits."""
    from methods.common.losses import soft_targets
    from methods.dml import DMLParams, dml_terms

    z = [tt(Z1), tt(Z2)]
    method = make(case="B")

    class LogitsOnly:  # case B reads nothing but the logits
        def __init__(self, logits):
            self.logits = logits

    terms = method.peer_terms([LogitsOnly(z[0]), LogitsOnly(z[1])], [0, 1], torch.tensor(Y))
    hp = DMLParams(temperature=3.0)
    for k in range(2):
        ref = dml_terms(z, [soft_targets(v, 3.0) for v in z], torch.tensor(Y), k, hp)
        assert terms[f"kl/net{k + 1}"].item() == pytest.approx(ref[f"kl/net{k + 1}"].item(), abs=1e-12)
        assert terms[f"ce/net{k + 1}"].item() == pytest.approx(ref[f"ce/net{k + 1}"].item(), abs=1e-12)


def test_listed_with_case_choices():
    listing = list_methods()
    assert "amln" in listing and "(A|B|C|D|E)" in listing and "use_adversarial" in listing


# --- checkpoint and resume -------------------------------------------------------------------------------------------
def test_checkpoint_resume_gives_the_same_next_loss():
    """What the engine checkpoints (modules, every optimizer, extra state) restores the next steps exactly."""
    batches = [random_batch(seed=s) for s in range(4)]
    first = make()
    for i in range(2):
        first.train_step(batches[i], Step(0, i, 1, 4))
    buffer = io.BytesIO()
    torch.save({"modules": first.modules.state_dict(), "method": first.extra_state(),
                "optimizers": {k: o.state_dict() for k, o in first.optimizers.items()}}, buffer)

    def resumed(drop_discriminator_state=False):
        buffer.seek(0)
        state = torch.load(buffer, weights_only=False)
        method = make()
        method.modules.load_state_dict(state["modules"])
        method.load_extra_state(state["method"])
        for name, optimizer in method.optimizers.items():
            if not (drop_discriminator_state and name == "discriminators"):
                optimizer.load_state_dict(state["optimizers"][name])
        return method

    methods = [first, resumed(), resumed(drop_discriminator_state=True)]
    for i in (2, 3):
        out = [{k: v.item() for k, v in m.train_step(copy.deepcopy(batches[i]), Step(0, i, 1, 4)).items()}
               for m in methods]
        assert out[0] == out[1]
    assert out[2]["adv/net1"] != out[0]["adv/net1"]  # the discriminators' Adam state matters
    for a, b in zip(first.modules.parameters(), methods[1].modules.parameters()):
        assert torch.equal(a, b)


def test_resnet34_cut_into_the_papers_three_blocks():
    """AMLN's b = 1, 2, 3: with ``blocks: 3`` a four-stage ResNet-34 gets three discriminators and containers per
    pair, on its last three stages (layer2..4); by default every stage (four) as before; CIFAR networks have three."""
    from harness.models import adapter
    from methods.amln import AMLN
    from tests.helpers import timm_context

    def built(**hp):
        return AMLN(AMLN.HParams(**hp), timm_context(("resnet34", "resnet34"), 10, 64, 3))

    three, four = built(blocks=3), built()
    assert [len(three.discriminators[k]) for k in three.discriminators] == [3, 3]
    assert [len(four.discriminators[k]) for k in four.discriminators] == [4, 4]
    maps = three.block_maps(adapter.probe(three.peers[0], (3, 64, 64)))
    assert [m.shape[1] for m in maps] == [128, 256, 512]
    assert "blocks" not in AMLN.HParams().cell_dict() and AMLN.HParams(blocks=3).cell_dict()["blocks"] == 3
