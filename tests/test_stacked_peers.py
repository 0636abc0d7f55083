"""Peers stacked into one grouped network (issue 19) compute what the K separate networks compute: forward,
backward and an SGD step of the module alone, then whole cells of ind, dml, kdcl and tsb trained both ways, to
float tolerance on the CPU.  A network that mixes channels, a method that reaches its peers one at a time and a
group of different architectures are refused in one line."""
import copy

import pytest
import timm
import torch

import harness.models  # noqa: F401
from harness.config.cell import Cell
from harness.models.stacked import StackedPeers, StackingError
from harness.suite.schema import SuiteError, load_suite
from harness.training.engine import Runtime, Trainer
from harness.training.method import Step

from tests.helpers import tiny_suite_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def networks(name="cifar_resnet8", k=3, **kwargs):
    torch.manual_seed(0)
    return [timm.create_model(name, num_classes=10, **kwargs) for _ in range(k)]


def peer_grads(stacked: StackedPeers) -> list[dict]:
    """Each peer's gradients, split as the state dict splits the weights."""
    grads = {name: p.grad for name, p in stacked.net.named_parameters()}
    return [{name: g.chunk(stacked.k, 0)[k] for name, g in grads.items()} for k in range(stacked.k)]


def test_forward_backward_and_sgd_step_equal_separate_networks():
    separate = networks()
    stacked = StackedPeers(copy.deepcopy(separate))
    torch.manual_seed(1)
    x = [torch.randn(6, 3, 32, 32) for _ in separate]
    y = torch.randint(0, 10, (6,))
    sgd = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    opts = [torch.optim.SGD(m.parameters(), **sgd) for m in separate]
    opt = torch.optim.SGD(stacked.parameters(), **sgd)
    # the separate networks are the reference, computed without oneDNN: on some CPUs (an AMD EPYC without AVX-512,
    # measured) its convolution backward of the second step differs from PyTorch's own kernels by up to 5e-4, while
    # the grouped convolution and PyTorch's kernels agree to 1e-7
    def reference():
        return torch.backends.mkldnn.flags(enabled=False)

    for _ in range(2):  # the second step uses the momentum of the first
        with reference():
            logits = [m(v) for m, v in zip(separate, x)]
        stacked_logits = stacked(x)
        for a, b in zip(logits, stacked_logits):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        for o in opts:
            o.zero_grad()
        opt.zero_grad()
        with reference():
            sum(torch.nn.functional.cross_entropy(z, y) * (k + 1) for k, z in enumerate(logits)).backward()
        sum(torch.nn.functional.cross_entropy(z, y) * (k + 1) for k, z in enumerate(stacked_logits)).backward()
        for model, grads in zip(separate, peer_grads(stacked)):
            for name, p in model.named_parameters():
                torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6)
        for o in opts:
            o.step()
        opt.step()
    for model, state in zip(separate, stacked.peer_state_dicts()):
        for name, value in model.state_dict().items():  # weights and BN running statistics
            torch.testing.assert_close(state[name], value, rtol=1e-4, atol=1e-6)


def test_state_dict_reads_as_a_module_list_both_ways():
    separate = networks(k=2)
    stacked = StackedPeers(separate)
    plain = torch.nn.ModuleList(separate).state_dict()
    state = stacked.state_dict()
    assert set(state) == set(plain)
    assert all(state[k].shape == plain[k].shape for k in plain)
    other = StackedPeers([timm.create_model("cifar_resnet8", num_classes=10) for _ in range(2)])
    other.load_state_dict(plain)  # a checkpoint of separate peers loads into stacked ones
    x = [torch.randn(2, 3, 32, 32)] * 2
    other.eval(), stacked.eval()
    for a, b in zip(other(x), stacked(x)):
        torch.testing.assert_close(a, b)
    unstacked = stacked.unstack()  # and back to K ordinary timm models
    assert all(type(u) is type(separate[0]) for u in unstacked)
    for u, z in zip(unstacked, stacked(x)):
        torch.testing.assert_close(u.eval()(x[0]), z, rtol=1e-4, atol=1e-6)


def test_features_are_split_per_peer():
    from harness.models.adapter import extract

    separate = networks(k=2)
    stacked = StackedPeers(copy.deepcopy(separate)).eval()
    x = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)]
    for model, v, feats in zip(separate, x, stacked.features(x)):
        own = extract(model.eval(), v)
        for a, b in zip([own.logits, own.last, own.embedding, *own.stages],
                        [feats.logits, feats.last, feats.embedding, *feats.stages]):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_networks_that_mix_channels_or_differ_are_refused():
    with pytest.raises(StackingError, match="CifarShuffleNetV1 cannot be stacked: its forward mixes channels"):
        StackedPeers(networks("cifar_shufflenetv1", k=2))
    with pytest.raises(StackingError, match="differ in their layers"):
        StackedPeers([timm.create_model("cifar_resnet8"), timm.create_model("cifar_resnet14")])


def cells_of(write_suite, methods, **overrides):
    suite = tiny_suite_dict(dataset={"name": "fashion_mnist_mini", "train_per_class": 12, "test_per_class": 10},
                            methods=methods, seeds=[0], **overrides)
    return load_suite(write_suite(suite)).cells


@pytest.mark.parametrize("method", ["ind", {"name": "dml", "temperature": 2},
                                    {"name": "kdcl", "target": "general", "val_per_class": 2},
                                    {"name": "tsb", "warmup_epochs": 0}], ids=["ind", "dml", "kdcl", "tsb"])
def test_a_cell_steps_the_same_stacked(write_suite, method):
    """The engine's first training step (the method's losses, backward, the recipe's SGD with momentum and weight
    decay) of a real cell, separate and stacked: equal to float tolerance.  Only a step is compared: training a
    small network on tiny batches is chaotic (a 3e-7 change of one weight grows to 1e-3 in four steps, with or
    without stacking), so a whole run agrees only as closely as two runs of either mode on different hardware."""
    cell = cells_of(write_suite, [method])[0]
    trainers = [Trainer(Cell.from_dict(cell.to_dict()), Runtime(device="cpu", channels_last=False, stack_peers=s))
                for s in (False, True)]
    assert [t.method.stacked for t in trainers] == [False, True]
    terms = []
    for trainer in trainers:
        trainer.method.modules.train()
        trainer.method.on_epoch_start(0)
        batch = next(iter(trainer.train_batches.epoch(0)))
        terms.append(trainer.method.train_step(batch, Step(0, 0, trainer.recipe.epochs, len(trainer.train_batches))))
    assert set(terms[0]) == set(terms[1]) and len(terms[0]) >= 2
    for name in terms[0]:
        torch.testing.assert_close(terms[1][name], terms[0][name], rtol=1e-5, atol=1e-7, msg=name)
    plain, grouped = (t.method.modules.state_dict() for t in trainers)
    assert set(plain) == set(grouped)
    for name, value in plain.items():
        torch.testing.assert_close(grouped[name], value, rtol=1e-4, atol=1e-6, msg=name)
    assert any(not torch.equal(value, trainers[0].method.modules.state_dict()[name])
               for name, value in Trainer(Cell.from_dict(cell.to_dict()), Runtime(device="cpu", channels_last=False))
               .method.modules.state_dict().items()), "the step changed nothing"


def test_a_stacked_cell_runs_to_its_end_and_saves_ordinary_networks(write_suite, tmp_path):
    cell = cells_of(write_suite, [{"name": "dml", "temperature": 2}])[0]
    trainer = Trainer(Cell.from_dict(cell.to_dict()), Runtime(device="cpu", channels_last=False, stack_peers=True))
    summary = trainer.run()
    assert summary["epochs"] == trainer.recipe.epochs
    assert {"net1", "net2", "ens"} <= set(summary["last"])
    networks = trainer.method.deployed_networks()
    assert [name for name, _ in networks] == list(cell.group)
    assert all(type(net).__name__ == "CifarResNet" for _, net in networks)
    # the unstacked networks predict what the stacked peers predict
    trainer.method.modules.eval()
    x = torch.randn(4, 1, 28, 28)
    stacked_logits = trainer.method.predict(x)
    for k, (_, net) in enumerate(networks):
        torch.testing.assert_close(net.eval()(x), stacked_logits[f"net{k + 1}"], rtol=1e-4, atol=1e-5)


def test_validate_refuses_what_cannot_stack(write_suite):
    suite = tiny_suite_dict(methods=["ind", {"name": "dml", "update": "sequential"}, "afd"],
                            groups=[["cifar_resnet8", "cifar_resnet8"], ["cifar_resnet8", "cifar_resnet14"],
                                    ["cifar_shufflenetv1", "cifar_shufflenetv1"]],
                            resources={"cpu": 1, "stack_peers": True})
    with pytest.raises(SuiteError) as caught:
        load_suite(write_suite(suite))
    text = "\n".join(caught.value.lines)
    assert "groups[0] with method 'dml': method dml updates its peers one after another" in text
    assert "groups[0] with method 'afd': method afd reaches its peers one at a time" in text
    assert "cifar_resnet8+cifar_resnet14 is not two or more networks of one architecture" in text
    assert "groups[2]: cifar_shufflenetv1: CifarShuffleNetV1 cannot be stacked" in text
    assert "groups[0] with method 'ind'" not in text


def test_a_checkpoint_of_the_other_mode_is_refused_in_one_line(write_suite):
    cell = cells_of(write_suite, ["ind"])[0]
    separate = Trainer(Cell.from_dict(cell.to_dict()), Runtime(device="cpu", channels_last=False))
    stacked = Trainer(Cell.from_dict(cell.to_dict()), Runtime(device="cpu", channels_last=False, stack_peers=True))
    with pytest.raises(ValueError, match="trained with separate peers, this run asks for resources.stack_peers: true"):
        stacked.load_state_dict(separate.state_dict())


def test_the_build_time_check_compares_in_full_fp32_and_restores_tf32():
    """The check of stacked against separate outputs (tolerance 1e-4) runs with TF32 off: on a GPU, TF32's
    10-bit products (on by default for cuDNN convolutions) differ by more and raised a false StackingError.
    The user's TF32 settings are restored afterwards."""
    seen = []
    nets = [timm.create_model("cifar_resnet8", num_classes=10) for _ in range(2)]
    nets[0].register_forward_hook(
        lambda *_: seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)))
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        StackedPeers(nets)
        assert seen and set(seen) == {(False, False)}  # (the stacked copy of nets[0] carries the hook too)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
