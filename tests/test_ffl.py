"""FFL: loss terms on fixed logits against numpy, the ramp-up, where gradients flow, the fusion module and its
optimizer, the shared-trunk and separate-network structures, and end-to-end runs with a checkpoint round trip."""
import copy
import math

import harness.models  # noqa: F401  (first: the torchvision shim runs before timm is imported)
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from harness.config.cell import Cell
from harness.training.engine import Trainer
from harness.training.method import Step, load_methods
from methods.ffl import FusionModule, ffl_terms, rampup_weight
from tests.helpers import np_ce, np_kl, np_softmax, random_batch, timm_context, TINY_RECIPE

Z1 = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]]
Z2 = [[1.0, 1.5, 0.0], [-0.5, 2.0, 0.1]]
ZF = [[0.3, -0.2, 0.9], [1.2, 0.0, -0.7]]
Y = [0, 2]
DATA = {"name": "fashion_mnist_mini", "train_per_class": 6, "test_per_class": 5}


def tensors(*arrays, grad=False):
    return [torch.tensor(a, dtype=torch.float64, requires_grad=grad) for a in arrays]


def make(group=("cifar_resnet8", "cifar_resnet8"), classes=3, **hparams):
    cls = load_methods().get("ffl")
    ctx = timm_context(group, classes, 8)
    return cls(cls.HParams(**hparams), ctx)


def count(params):
    return sum(p.numel() for p in {id(p): p for p in params}.values())


# --- the loss ------------------------------------------------------------------------------------------------
def test_loss_golden_values():
    t, w = 3.0, 0.37
    z1, z2, zf = tensors(Z1, Z2, ZF)
    terms = ffl_terms(z1, z2, zf, torch.tensor(Y), w, temperature=t)
    ens = (np.array(Z1) + np.array(Z2)) / 2
    assert terms["ce/net1"].item() == pytest.approx(np_ce(Z1, Y), abs=1e-12)
    assert terms["ce/net2"].item() == pytest.approx(np_ce(Z2, Y), abs=1e-12)
    assert terms["ce/fused"].item() == pytest.approx(np_ce(ZF, Y), abs=1e-12)
    assert terms["kl/net1"].item() == pytest.approx(w * t * t * np_kl(ZF, Z1, t), abs=1e-12)
    assert terms["kl/net2"].item() == pytest.approx(w * t * t * np_kl(ZF, Z2, t), abs=1e-12)
    assert terms["kl/fused"].item() == pytest.approx(w * t * t * np_kl(ens, ZF, t), abs=1e-12)
    plain = ffl_terms(z1, z2, zf, torch.tensor(Y), 1.0, temperature=t, t2_scaling=False)
    assert plain["kl/fused"].item() == pytest.approx(np_kl(ens, ZF, t), abs=1e-12)


def test_official_target_epsilon():
    t, w, eps = 3.0, 0.5, 1e-7
    terms = ffl_terms(*tensors(Z1, Z2, ZF), torch.tensor(Y), w, temperature=t, eps=eps)
    p = np_softmax(ZF, t) + eps  # the official KLLoss: (p + ε)(log(p + ε) − log q), summed over classes
    expected = w * t * t * np.mean(np.sum(p * (np.log(p) - np.log(np_softmax(Z1, t))), axis=1))
    assert terms["kl/net1"].item() == pytest.approx(expected, abs=1e-12)
    assert abs(terms["kl/net1"].item() - w * t * t * np_kl(ZF, Z1, t)) > 1e-9  # the ε is really applied
    method = make()
    assert method.hp.target_eps == 1e-7


def test_hand_computed_value():
    # T = 1, two classes: z_f = (log 3, 0) → p_f = (3/4, 1/4); z1 = (0, 0) → uniform; z2 = (0, log 3).
    z1, z2, zf = tensors([[0.0, 0.0]], [[0.0, math.log(3.0)]], [[math.log(3.0), 0.0]])
    terms = ffl_terms(z1, z2, zf, torch.tensor([0]), 1.0, temperature=1.0)
    assert terms["kl/net1"].item() == pytest.approx(0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5))
    # ensemble logits (0, log 3 / 2) → p_ens = (1, √3) / (1 + √3)
    p = np.array([1.0, math.sqrt(3.0)]) / (1 + math.sqrt(3.0))
    expected = p[0] * math.log(p[0] / 0.75) + p[1] * math.log(p[1] / 0.25)
    assert terms["kl/fused"].item() == pytest.approx(expected)
    assert terms["ce/fused"].item() == pytest.approx(-math.log(0.75))


def test_rampup():
    assert rampup_weight(0, 80) == pytest.approx(math.exp(-5))
    assert rampup_weight(40, 80) == pytest.approx(math.exp(-5 / 4))
    assert rampup_weight(80, 80) == 1.0 and rampup_weight(300, 80) == 1.0
    assert rampup_weight(10, 0) == 1.0
    step = Step(epoch=3, step=5, epochs=300, steps_per_epoch=10)
    assert make().ramp(step) == pytest.approx(math.exp(-5 * (1 - 3 / 80) ** 2))  # per epoch, as the official code
    assert make(rampup="step").ramp(step) == pytest.approx(math.exp(-5 * (1 - 3.5 / 80) ** 2))
    assert make(rampup_epochs=20).ramp(step) == pytest.approx(math.exp(-5 * (1 - 3 / 20) ** 2))


def test_targets_get_no_gradient():
    z1, z2, zf = tensors(Z1, Z2, ZF, grad=True)
    terms = ffl_terms(z1, z2, zf, torch.tensor(Y), 0.5)
    terms["kl/net1"].backward(retain_graph=True)
    assert zf.grad is None and z2.grad is None and z1.grad.abs().sum() > 0
    terms["kl/fused"].backward()
    assert z1.grad is not None and z2.grad is None  # z1.grad is still only kl/net1's
    assert zf.grad.abs().sum() > 0


@pytest.mark.parametrize("detach", [False, True])
def test_fused_loss_reaches_the_subnetworks_unless_detached(detach):
    method = make(detach_fused_features=detach)
    method.losses(random_batch(), Step(0, 0, 2, 1))["ce/fused"].backward()
    assert all(p.grad is not None for p in method.modules["fusion"].parameters())
    for peer in method.peers:
        grads = [p.grad for p in peer.parameters()]
        if detach:
            assert all(g is None for g in grads)
        else:
            assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_joint_update_steps_every_optimizer_on_the_summed_loss():
    method, lr = make(), 0.1
    reference = copy.deepcopy(method.modules)
    method.optimizers = {name: torch.optim.SGD([p for g in group.params for p in g["params"]], lr=lr)
                         for name, group in method.optim_groups().items()}
    batch, step = random_batch(), Step(5, 0, 10, 1)
    ref_method = copy.copy(method)
    ref_method.modules = reference
    sum(ref_method.losses(batch, step).values()).backward()
    method.train_step(batch, step)
    for (name, new), old in zip(method.modules.named_parameters(), reference.parameters()):
        assert torch.allclose(new, old - lr * old.grad, atol=1e-6), name
    assert not torch.equal(method.modules["fusion"].fc.weight, reference["fusion"].fc.weight)


# --- the fusion module and its optimizer ------------------------------------------------------------------------
def test_fusion_module_layers_and_spatial_alignment():
    torch.manual_seed(0)
    fusion = FusionModule((4, 6), 5, 3).eval()
    assert fusion.depthwise.groups == 10 and fusion.depthwise.out_channels == 10
    assert fusion.pointwise.kernel_size == (1, 1) and fusion.pointwise.out_channels == 5
    a, b = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)
    with torch.no_grad():
        out = fusion(a, b)
        assert out.shape == (2, 3)
        assert torch.allclose(out, fusion(F.avg_pool2d(a, 2), b), atol=1e-6)  # the larger map pooled down
        x = torch.cat([F.avg_pool2d(a, 2), b], 1)
        x = F.relu(fusion.bn1(fusion.depthwise(x)))
        x = F.relu(fusion.bn2(fusion.pointwise(x)))
        assert torch.allclose(out, fusion.fc(x.mean((2, 3))), atol=1e-6)
        fusion.spatial_align = "interpolate"
        up = F.interpolate(b, size=(8, 8), mode="bilinear", align_corners=False)
        assert torch.allclose(fusion(a, b), fusion(a, up), atol=1e-6)


def trainer(group=("cifar_resnet8", "cifar_resnet8"), epochs=2, hparams=None, **recipe):
    return Trainer(Cell(method="ffl", hparams=hparams or {}, group=group, dataset=DATA,
                        recipe={**TINY_RECIPE, "epochs": epochs, **recipe}, seed=0))


def test_fusion_optimizer_updates_only_fusion_parameters_with_its_own_weight_decay():
    optimizer = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}
    tr = trainer(optimizer=optimizer)
    method = tr.method
    fusion_ids = {id(p) for p in method.modules["fusion"].parameters()}
    (group,) = tr.method.optimizers["fusion"].param_groups
    assert {id(p) for p in group["params"]} == fusion_ids
    assert group["weight_decay"] == 1e-5 and group["lr"] == 0.1 and group["nesterov"] and group["momentum"] == 0.9
    peer_groups = method.optimizers["peers"].param_groups
    peer_ids = [id(p) for g in peer_groups for p in g["params"]]
    assert len(peer_ids) == len(set(peer_ids)) == len({id(p) for p in method.peers.parameters()})
    assert not fusion_ids & set(peer_ids) and all(g["weight_decay"] == 1e-4 for g in peer_groups)
    assert set(tr.schedulers) == {"peers", "fusion"}

    # With zero gradients one Nesterov step only decays: p ← p − lr (1 + m) wd p, and only the fusion module's.
    method.modules.double()  # in place: the optimizers keep the same parameters; float64 resolves the tiny decay
    before = {name: p.detach().clone() for name, p in method.modules.named_parameters()}
    for p in method.modules.parameters():
        p.grad = torch.zeros_like(p)
    method.optimizers["fusion"].step()
    for name, p in method.modules.named_parameters():
        expected = before[name] * (1 - 0.1 * 1.9 * 1e-5) if name.startswith("fusion.") else before[name]
        assert torch.allclose(p, expected, rtol=0, atol=1e-15), name
        assert name.startswith("fusion.") or torch.equal(p, before[name]), name
    assert not torch.equal(method.modules["fusion"].depthwise.weight, before["fusion.depthwise.weight"])

    explicit = trainer(hparams={"fusion_lr": 0.02, "fusion_weight_decay": 0.0})
    (group,) = explicit.method.optimizers["fusion"].param_groups
    assert group["lr"] == 0.02 and group["weight_decay"] == 0.0 and group["initial_lr"] == 0.02


# --- structure ----------------------------------------------------------------------------------------------------
def test_same_architecture_shares_the_trunk():
    method = make()
    single = timm.create_model("cifar_resnet8", num_classes=3, in_chans=1)
    full = count(single.parameters())
    p1, p2 = method.peers
    assert method.shared and p1.trunk is p2.trunk
    trunk = count(p1.trunk.parameters())
    assert method.deployed_parameters() == trunk + 2 * (full - trunk) < 2 * full
    assert method.fusion_parameters() == count(method.modules["fusion"].parameters()) > 0
    assert not any(torch.equal(a, b) for a, b in zip(p1.head.parameters(), p2.head.parameters()) if a.dim() > 1)
    fusion = method.modules["fusion"]
    assert fusion.depthwise.in_channels == 128 and fusion.pointwise.out_channels == 64  # official 2C → C

    method.modules.eval()
    x = random_batch().x
    with torch.no_grad():
        out = method.predict(x)
        assert set(out) == {"net1", "net2", "fused"}
        assert torch.allclose(out["net1"], p1(x)) and torch.allclose(out["net2"], p2.head(p1.trunk(x)))

    copied = make(branch_init="copy")
    assert all(torch.equal(a, b) for a, b in zip(copied.peers[0].head.parameters(), copied.peers[1].head.parameters()))
    separate = make(shared_trunk=False)
    assert not separate.shared and separate.deployed_parameters() == 2 * full


def test_mixed_pair_builds_separate_networks():
    method = make(("cifar_resnet8", "cifar_wrn_16_2"))
    assert not method.shared
    nets = [timm.create_model(n, num_classes=3, in_chans=1) for n in ("cifar_resnet8", "cifar_wrn_16_2")]
    assert method.deployed_parameters() == sum(count(n.parameters()) for n in nets)
    fusion = method.modules["fusion"]
    assert fusion.depthwise.in_channels == 64 + 128 and fusion.pointwise.out_channels == 96
    assert make(("cifar_resnet8", "cifar_wrn_16_2"), fusion_channels="sum").modules["fusion"].fc.in_features == 192
    with pytest.raises(ValueError, match="one architecture"):
        make(("cifar_resnet8", "cifar_resnet14"), shared_trunk=True)


def test_exactly_two_peers():
    cls = load_methods().get("ffl")
    assert cls.min_peers == cls.max_peers == 2
    with pytest.raises(ValueError, match="exactly 2"):
        make(("cifar_resnet8",) * 3)


# --- end to end -------------------------------------------------------------------------------------------------
def test_end_to_end_shared_trunk_and_checkpoint_round_trip():
    tr = trainer()
    summary = tr.run()
    last = tr.history[-1]
    assert summary["epochs"] == 2 and tr.method.shared
    for key in ("top1/net1", "top1/net2", "top1/ens", "top1/fused", "loss/ce/fused", "loss/kl/fused", "loss/kl/net2"):
        assert key in last and math.isfinite(last[key])
    assert last["loss/kl/net1"] > 0

    state = tr.state_dict()
    restored = trainer()
    restored.load_state_dict(state)
    assert restored.method.peers[0].trunk is restored.method.peers[1].trunk
    for (name, a), b in zip(tr.method.modules.state_dict().items(), restored.method.modules.state_dict().values()):
        assert torch.equal(a, b), name
    for name in ("peers", "fusion"):
        a, b = tr.method.optimizers[name].state_dict(), restored.method.optimizers[name].state_dict()
        assert a["state"].keys() == b["state"].keys() and len(a["state"]) > 0
        for k in a["state"]:
            assert torch.equal(a["state"][k]["momentum_buffer"], b["state"][k]["momentum_buffer"])
        assert tr.schedulers[name].state_dict() == restored.schedulers[name].state_dict()
    assert restored.evaluate() == tr.evaluate()


def test_end_to_end_mixed_pair():
    tr = trainer(group=("cifar_resnet8", "cifar_resnet14"))
    tr.run()
    assert not tr.method.shared
    last = tr.history[-1]
    assert all(math.isfinite(last[k]) for k in ("top1/fused", "top1/ens", "loss/ce/fused", "loss/kl/fused"))
