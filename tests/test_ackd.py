"""ACKD: each loss term on fixed tensors against numpy, the attention weights, the DnBm branch points, what is
evaluated and counted, which modules each of the alternating steps changes, and mixed teacher/student pairs."""
import math

import harness.models  # noqa: F401  (first: the torchvision shim runs before timm is imported)
import numpy as np
import pytest
import timm
import torch
from harness.config.recipe import OptimizerSpec, build_optimizer
from harness.training.method import Step, load_methods
from methods.ackd import adversarial_value, fuse, kd_loss, resolve_learners
from pydantic import ValidationError
from tests.helpers import np_ce, np_kl, np_softmax, random_batch, timm_context, tt

ZS = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]]
ZT = [[1.0, 1.5, 0.0], [-0.5, 2.0, 0.1]]
Y = [0, 2]
STEP = Step(0, 0, 1, 1)


def np_log_sigmoid(s):
    return -np.log1p(np.exp(-np.asarray(s, dtype=np.float64)))


def make(student="cifar_resnet8", teacher="cifar_resnet8", classes=3, chans=1, size=8, **hparams):
    cls = load_methods().get("ackd")
    torch.manual_seed(0)
    frozen_teacher = timm.create_model(teacher, num_classes=classes, in_chans=chans).requires_grad_(False).eval()
    ctx = timm_context((teacher, student), classes, size, chans, epochs=1, load_stage=lambda name: [frozen_teacher])
    method = cls(cls.HParams(**hparams), ctx)
    for name, group in method.optim_groups().items():  # as the engine does, with a plain SGD recipe optimizer
        spec = OptimizerSpec.model_validate(group.optimizer) if group.optimizer else OptimizerSpec(lr=0.1)
        method.optimizers[name] = build_optimizer(spec, group.params)
    method.modules.train()
    method.on_epoch_start(0)
    return method


def tiny_batch(n=4, chans=1, size=8, seed=0):
    return random_batch(n, size, seed, chans)


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return [not torch.equal(a, b) for a, b in zip(before, module.parameters())]


# --- loss pieces on fixed tensors ------------------------------------------------------------------------------
@pytest.mark.parametrize("t2", [True, False])
def test_kd_loss_both_directions(t2):
    t = 4.0
    scale = t * t if t2 else 1.0
    forward = kd_loss(tt(ZS), tt(ZT), t, t2, "forward").item()
    assert forward == pytest.approx(scale * np_kl(ZT, ZS, t), abs=1e-12)  # KL(p_target ‖ p_learner)
    reverse = kd_loss(tt(ZS), tt(ZT), t, t2, "reverse").item()
    assert reverse == pytest.approx(scale * np_kl(ZS, ZT, t), abs=1e-12)  # KL(p_learner ‖ p_target)
    assert abs(forward - reverse) > 1e-6


def test_kd_hand_value_and_constant_target():
    # T = 1, target (log 3, 0) → (3/4, 1/4); learner (0, 0) → uniform.
    learner, target = tt([[0.0, 0.0]], grad=True), tt([[math.log(3.0), 0.0]], grad=True)
    value = kd_loss(learner, target, 1.0, True, "forward")
    assert value.item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    reverse = kd_loss(learner, target, 1.0, True, "reverse")
    assert reverse.item() == pytest.approx(0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    (value + reverse).backward()
    assert target.grad is None and learner.grad.abs().sum() > 0


def test_fuse_is_the_weighted_sum_of_logits():
    za, zb = np.array(ZS), np.array(ZT)
    weights = np.array([[0.3, 0.7], [0.9, 0.1]])
    fused = fuse(tt(weights), [tt(za), tt(zb)]).numpy()
    np.testing.assert_allclose(fused, weights[:, :1] * za + weights[:, 1:] * zb, atol=1e-12)


@pytest.mark.parametrize("m", [2, 3])
def test_adversarial_value_against_numpy(m):
    rng = np.random.default_rng(m)
    s = rng.normal(size=(m, m, 5)) * 2  # s[i, j]: D_i's logits on learner j's maps, 5 samples
    value = adversarial_value([[tt(s[i, j]) for j in range(m)] for i in range(m)]).item()
    expected = np.mean([np.mean([np.mean(np_log_sigmoid(s[i, i])) + np.mean(np.log(1 - 1 / (1 + np.exp(-s[i, j]))))
                                 for j in range(m) if j != i]) for i in range(m)])
    assert value == pytest.approx(expected, abs=1e-12)
    assert value < 0


def test_adversarial_value_by_hand():
    # Every logit 0 → D = 1/2 everywhere → L_ad = 2 log(1/2); a confident, right D → L_ad near 0.
    zero = torch.zeros(3, dtype=torch.float64)
    assert adversarial_value([[zero, zero], [zero, zero]]).item() == pytest.approx(2 * math.log(0.5))
    big = torch.full((3,), 30.0, dtype=torch.float64)
    assert adversarial_value([[big, -big], [-big, big]]).item() == pytest.approx(0.0, abs=1e-12)


# --- the method's terms against an independent computation from its own outputs ---------------------------------
@pytest.mark.parametrize("hp", [{}, {"kl_direction": "reverse", "t2_scaling": False},
                                {"self_distill_from": "each", "temperature": 2.0},
                                {"adversarial": "fool", "kd_aux_weight": 0.5, "kd_target_weight": 2.0,
                                 "adversarial_weight": 0.3, "ce_weight": 0.7}])
def test_generator_terms_golden(hp):
    method = make(**hp)
    h = method.hp
    batch = tiny_batch()
    out = method.forward(batch.x)
    terms = method.generator_terms(out, batch.y)
    np_ = lambda z: z.detach().double().numpy()  # noqa: E731
    zt, zs, zg = np_(out.teacher), np_(out.target), np_(out.group)
    za = [np_(z) for z in out.aux_logits]
    a = np_(out.weights)
    y = batch.y.numpy()
    np.testing.assert_allclose(zg, sum(a[:, k: k + 1] * za[k] for k in range(2)), atol=1e-5)
    t, scale = h.temperature, (h.temperature ** 2 if h.t2_scaling else 1.0)

    def kl(target, learner):
        return np_kl(target, learner, t) if h.kl_direction == "forward" else np_kl(learner, target, t)

    assert terms["kd/aux"].item() == pytest.approx(h.kd_aux_weight * scale * kl(zt, zg), rel=1e-4, abs=1e-6)
    sources = [zg] if h.self_distill_from == "group" else za
    expected = h.kd_target_weight * scale * np.mean([kl(src, zs) for src in sources])
    assert terms["kd/net1"].item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert terms["ce/net1"].item() == pytest.approx(h.ce_weight * np_ce(zs, y), rel=1e-5)
    for k in range(2):
        assert terms[f"ce/aux{k + 1}"].item() == pytest.approx(h.ce_weight * np_ce(za[k], y), rel=1e-5)
    # L_ad from the discriminators' raw logits on every learner's maps, by the formula of Eq. 4-5.
    with torch.no_grad():
        s = [[np_(d(hm)) for hm in out.aux_maps] for d in method.discriminators]
    l_ad = np.mean([np.mean(np_log_sigmoid(s[i][i])) + np.mean(np_log_sigmoid(-s[i][1 - i])) for i in range(2)])
    sign = -1.0 if h.adversarial == "diverse" else 1.0
    assert terms["adv"].item() == pytest.approx(h.adversarial_weight * sign * l_ad, rel=1e-5)
    assert method.discriminator_loss(out).item() == pytest.approx(-l_ad, rel=1e-5)
    assert set(terms) == {"kd/aux", "kd/net1", "adv", "ce/net1", "ce/aux1", "ce/aux2"}


def test_defaults_are_the_papers():
    hp = make().hp
    assert (hp.kd_aux_weight, hp.kd_target_weight, hp.adversarial_weight, hp.ce_weight) == (1.0, 1.0, 1.0, 1.0)
    assert hp.temperature == 4.0 and hp.kl_direction == "forward" and hp.adversarial == "diverse"
    assert make().specs == [(3, 1), (2, 2)]  # D3B1 + D2B2 (Table 7's best, the Table 2 setting)


# --- attention ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hp", [{}, {"attention_input": "flatten"}, {"learners": ["D3B1", "D2B2", "D1B3"]}])
def test_attention_weights_sum_to_one_per_sample(hp):
    method = make(**hp)
    out = method.forward(tiny_batch(n=5).x)
    assert out.weights.shape == (5, len(method.specs))
    assert torch.all(out.weights > 0)
    torch.testing.assert_close(out.weights.sum(1), torch.ones(5))
    assert not torch.allclose(out.weights[0], out.weights[1])  # per sample, not one weight for the batch


def test_flattened_attention_reads_every_position():
    method = make(attention_input="flatten", attention_hidden=7)
    first = method.modules["attention"].mlp[0]
    assert (first.in_features, first.out_features) == (2 * 64 * 2 * 2, 7)  # ResNet-8 on 8×8: 64 × 2 × 2 maps


def test_uniform_attention_has_no_mlp():
    method = make(attention="uniform")
    assert "attention" not in method.modules
    out = method.forward(tiny_batch().x)
    torch.testing.assert_close(out.weights, torch.full((4, 2), 0.5))


# --- the DnBm learners -------------------------------------------------------------------------------------------
def test_resolve_learners():
    assert resolve_learners(None, 3) == [(3, 1), (2, 2)]
    assert resolve_learners(None, 4) == [(4, 1), (3, 2)]
    assert resolve_learners(("D1B3", "D3B1", "D3B1"), 3) == [(1, 3), (3, 1), (3, 1)]
    with pytest.raises(ValueError, match="D2B1.*n \\+ m - 1 = 3"):
        resolve_learners(("D2B1",), 3)
    with pytest.raises(ValueError, match="at least 2 stages"):
        resolve_learners(None, 1)


def test_hparam_validation():
    cls = load_methods().get("ackd")
    with pytest.raises(ValidationError):
        cls.HParams(learners=["d3b1"])
    with pytest.raises(ValidationError):
        cls.HParams(learners=[])
    with pytest.raises(ValidationError):
        cls.HParams(disc_optimizer={"name": "rmsprop", "lr": 1e-3})
    assert cls.group_error(cls.HParams(), ("cifar_resnet14", "cifar_resnet8")) is None
    assert "D2B1" in cls.group_error(cls.HParams(learners=["D2B1"]), ("cifar_resnet14", "cifar_resnet8"))
    assert cls.group_error(cls.HParams(learners=["D4B1", "D3B2"]), ("resnet34", "resnet18")) is None


@pytest.mark.parametrize("learners", [["D3B1"], ["D2B2"], ["D1B3"]])
def test_branch_point(learners):
    """A learner given the target learner's weights reproduces its logits: it branches at the right map."""
    method = make(learners=learners)
    method.modules.eval()
    head = method.auxiliary[0]
    missing, _ = head.load_state_dict(method.student.state_dict(), strict=False)
    assert not missing  # every parameter and buffer of the learner has a counterpart in the target learner
    x = tiny_batch().x
    with torch.no_grad():
        out = method.forward(x)
    torch.testing.assert_close(out.aux_logits[0], out.target)
    n, m = method.specs[0]
    own = {name.split(".")[0] for name, _ in head.named_parameters()}
    assert own == {f"layer{s}" for s in range(n, n + m)} | {"fc"}  # the m stages after the branch, and a classifier


def test_learners_start_from_their_own_initialisation():
    method = make()
    student_fc = method.student.fc.weight
    assert all(not torch.equal(head.fc.weight, student_fc) for head in method.auxiliary)
    assert not torch.equal(method.auxiliary[0].layer3[0].conv1.weight, method.auxiliary[1].layer3[0].conv1.weight)


# --- what is evaluated and counted -----------------------------------------------------------------------------
def test_only_the_target_learner_is_evaluated_and_counted():
    method = make()
    x = tiny_batch().x
    method.modules.eval()
    with torch.no_grad():
        outputs = method.predict(x)
        assert set(outputs) == {"net1", "teacher"}
        torch.testing.assert_close(outputs["net1"], method.student(x))
        torch.testing.assert_close(outputs["teacher"], method.teacher(x))
    assert method.peer_outputs() == ["net1"]
    assert [name for name, _ in method.deployed_networks()] == ["cifar_resnet8"]
    assert method.deployed_networks()[0][1] is method.student
    counts = method.parameter_counts()
    own = sum(p.numel() for p in timm.create_model("cifar_resnet8", num_classes=3, in_chans=1).parameters())
    assert counts["deployed"] == counts["peers"] == own == sum(p.numel() for p in method.student.parameters())
    added = {key: sum(p.numel() for p in method.modules[key].parameters())
             for key in ("auxiliary", "attention", "discriminators")}
    assert counts["added"] == added and all(v > 0 for v in added.values())
    assert set(counts["frozen"]) == {"teacher"}


def test_no_discriminators_without_an_adversarial_term():
    for hp in ({"learners": ["D3B1"]}, {"adversarial_weight": 0.0}):
        method = make(**hp)
        assert "discriminators" not in method.modules and set(method.optimizers) == {"peers"}
        terms = method.train_step(tiny_batch(), STEP)
        assert "adv" not in terms and "disc" not in terms


def test_optimizers():
    method = make()
    assert isinstance(method.optimizers["discriminators"], torch.optim.Adam)
    assert method.optimizers["discriminators"].defaults["betas"] == (0.5, 0.999)
    groups = method.optim_groups()
    assert groups["discriminators"].follow_schedule is False
    disc = {id(p) for p in method.discriminators.parameters()}
    peers = {id(p) for g in groups["peers"].params for p in g["params"]}
    learners = {id(p) for key in ("auxiliary", "attention") for p in method.modules[key].parameters()}
    assert peers == {id(p) for p in method.student.parameters()} | learners
    assert not peers & disc and not {id(p) for p in method.teacher.parameters()} & (peers | disc)


# --- the alternating steps ---------------------------------------------------------------------------------------
def test_discriminator_step_changes_only_the_discriminators():
    method = make()
    out = method.forward(tiny_batch().x)
    keys = list(method.modules)
    before = {key: snapshot(method.modules[key]) for key in keys}
    logged = method.discriminator_step(out)
    assert set(logged) == {"disc"}
    for key in keys:
        moved = changed(before[key], method.modules[key])
        assert all(moved) if key == "discriminators" else not any(moved), key


def test_generator_step_changes_the_learners_not_the_discriminators_nor_the_teacher():
    method = make()
    batch = tiny_batch()
    out = method.forward(batch.x)
    before = {key: snapshot(method.modules[key]) for key in method.modules}
    method.generator_step(out, batch.y)
    for key in ("peers", "auxiliary", "attention"):
        assert all(changed(before[key], method.modules[key])), key
    for key in ("discriminators", "teacher"):
        assert not any(changed(before[key], method.modules[key])), key
    assert all(p.grad is None for p in method.discriminators.parameters())
    assert all(p.requires_grad for p in method.discriminators.parameters())  # unfrozen again afterwards


def test_train_step_never_changes_the_teacher():
    method = make(teacher="cifar_resnet14")
    before = snapshot(method.teacher)
    buffers = [b.clone() for b in method.teacher.buffers()]
    terms = method.train_step(tiny_batch(), STEP)
    assert not any(changed(before, method.teacher))
    assert all(torch.equal(a, b) for a, b in zip(buffers, method.teacher.buffers()))  # eval-mode BN statistics
    assert set(terms) == {"kd/aux", "kd/net1", "adv", "ce/net1", "ce/aux1", "ce/aux2", "disc"}


def test_gradients_of_the_distillation_terms():
    method = make()
    out = method.forward(tiny_batch().x)
    terms = method.generator_terms(out, tiny_batch().y)
    # L_kd^s: the group prediction is a constant target; only the target learner moves.
    terms["kd/net1"].backward(retain_graph=True)
    assert all(p.grad is None for key in ("auxiliary", "attention") for p in method.modules[key].parameters())
    assert method.student.fc.weight.grad.abs().sum() > 0
    method.student.zero_grad(set_to_none=True)
    # L_kd^a: the auxiliary learners, the MLP and the shared trunk, not the target learner's own last stage.
    terms["kd/aux"].backward(retain_graph=True)
    assert all(p.grad is not None for key in ("auxiliary", "attention") for p in method.modules[key].parameters())
    assert method.student.fc.weight.grad is None and method.student.layer3[0].conv1.weight.grad is None
    assert method.student.layer1[0].conv1.weight.grad.abs().sum() > 0  # D2B2 branches after layer1
    assert method.student.layer2[0].conv1.weight.grad.abs().sum() > 0  # D3B1 branches after layer2


def test_diverse_learners_help_their_discriminators_and_fooling_ones_oppose_them():
    batch = tiny_batch()
    for mode, sign in (("diverse", 1.0), ("fool", -1.0)):
        method = make(adversarial=mode)
        out = method.forward(batch.x)
        adv = method.generator_terms(out, batch.y)["adv"]
        assert adv.item() == pytest.approx(sign * method.discriminator_loss(out).item(), rel=1e-6)


# --- teacher and student of different architectures -------------------------------------------------------------
@pytest.mark.parametrize("teacher,student", [("cifar_wrn_16_2", "cifar_resnet8"), ("cifar_resnet14", "cifar_resnet8"),
                                             ("cifar_resnet8", "cifar_wrn_16_1")])
def test_mixed_architectures_train_a_step(teacher, student):
    method = make(student=student, teacher=teacher, chans=3, size=16)
    batch = tiny_batch(chans=3, size=16)
    before = snapshot(method.modules)
    terms = method.train_step(batch, STEP)
    assert all(math.isfinite(v.item()) for v in terms.values())
    moved = changed(before, method.modules)
    trainable = [p.requires_grad for p in method.modules.parameters()]
    assert all(m for m, t in zip(moved, trainable) if t) and not any(m for m, t in zip(moved, trainable) if not t)


def test_self_distillation_target_is_the_group_prediction():
    # With one learner and uniform attention, the group logit is that learner's logit.
    method = make(learners=["D3B1"], attention="uniform")
    out = method.forward(tiny_batch().x)
    torch.testing.assert_close(out.group, out.aux_logits[0])
    p = np_softmax(out.group.detach().numpy(), 4.0)
    assert np.allclose(p.sum(1), 1.0)
