"""TSB: loss values against numpy, the temporal accumulator against hand computations, its variants and storage,
the warm-up, detached targets, the Table 5 ablation settings, and end-to-end runs with checkpoint round trips."""
import numpy as np
import pytest
import torch
from torch import nn

from harness.config.cell import Cell
from harness.data.batches import Batch
from harness.scheduling.trainable import load_checkpoint
from harness.training.engine import Trainer
from harness.training.method import MethodContext, Step, load_methods
from tests.helpers import np_ce, np_kl, np_softmax, TINY_RECIPE

Z1 = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]]
Z2 = [[1.0, 1.5, 0.0], [-0.5, 2.0, 0.1]]
Z3 = [[0.3, -0.2, 0.9], [1.2, 0.0, -0.7]]
Y = [0, 2]
DATA = {"name": "fashion_mnist_mini", "train_per_class": 6, "test_per_class": 5}


class Lookup(nn.Module):
    """A 'network' whose logits for sample k are row k of its own parameter (the input carries k)."""

    def __init__(self, table):
        super().__init__()
        self.table = nn.Parameter(torch.as_tensor(table, dtype=torch.float64).clone())

    def forward(self, x):
        return self.table[x[:, 0].long()]


def make(tables, **hparams):
    cls = load_methods().get("tsb")
    queue = [Lookup(t) for t in tables]
    ctx = MethodContext(group=tuple(f"lookup{i}" for i in range(len(queue))), num_classes=len(tables[0][0]),
                        in_chans=1, image_size=(1, 1), num_train=len(tables[0]), epochs=10, steps_per_epoch=1,
                        device=torch.device("cpu"), create_model=lambda name: queue.pop(0))
    return cls(cls.HParams(**{"warmup_epochs": 0, **hparams}), ctx)


def batch(index, y=None):
    index = torch.as_tensor(index)
    y = torch.zeros(len(index), dtype=torch.long) if y is None else torch.as_tensor(y)
    return Batch(views=[index.double()[:, None]], y=y, index=index)


def at(epoch, step=0, steps=1):
    return Step(epoch=epoch, step=step, epochs=10, steps_per_epoch=steps)


def buffer(method, peer):
    return method.accumulators[peer].table.double().numpy()


def np_reverse_kl(student_logits, target_probs, t):
    p = np_softmax(student_logits, t)
    return float(np.mean(np.sum(p * (np.log(p) - np.log(target_probs)), axis=1)))


def np_forward_kl(target_probs, student_logits, t):
    q = np.asarray(target_probs)
    return float(np.mean(np.sum(q * (np.log(q) - np.log(np_softmax(student_logits, t))), axis=1)))


# --- loss values ---------------------------------------------------------------------------------------------
def test_two_peers_epoch_one_golden():
    # Epoch 1, Alg. 1 order: Z = (1-β)·p, read out /(1-β) = p, so the TA target is the peer's prediction.
    t = 4.0
    terms = make([Z1, Z2]).losses(batch([0, 1], Y), at(0))
    si = (np_softmax(Z1, t) + np_softmax(Z2, t)) / 2
    assert set(terms) == {"ce/net1", "ce/net2", "ta/net1", "ta/net2", "si/net1", "si/net2"}
    assert terms["ce/net1"].item() == pytest.approx(np_ce(Z1, Y), abs=1e-12)
    assert terms["ta/net1"].item() == pytest.approx(0.5 * t * t * np_kl(Z2, Z1, t), rel=1e-6)
    assert terms["ta/net2"].item() == pytest.approx(0.5 * t * t * np_kl(Z1, Z2, t), rel=1e-6)
    assert terms["si/net1"].item() == pytest.approx(0.5 * t * t * np_forward_kl(si, Z1, t), rel=1e-9)
    assert terms["si/net2"].item() == pytest.approx(0.5 * t * t * np_forward_kl(si, Z2, t), rel=1e-9)


def test_three_peers_sum_ta_and_average_si():
    t = 2.0
    terms = make([Z1, Z2, Z3], temperature=t, lambda_ta=1.0, lambda_si=0.25, t2_scaling=False).losses(
        batch([0, 1], Y), at(0))
    si = (np_softmax(Z1, t) + np_softmax(Z2, t) + np_softmax(Z3, t)) / 3
    assert terms["ta/net1"].item() == pytest.approx(np_kl(Z2, Z1, t) + np_kl(Z3, Z1, t), rel=1e-6)
    assert terms["si/net3"].item() == pytest.approx(0.25 * np_forward_kl(si, Z3, t), rel=1e-9)


def test_reverse_kl_is_the_literal_eq_2():
    t = 4.0
    terms = make([Z1, Z2], kl_direction="reverse").losses(batch([0, 1], Y), at(0))
    si = (np_softmax(Z1, t) + np_softmax(Z2, t)) / 2
    assert terms["ta/net1"].item() == pytest.approx(0.5 * t * t * np_reverse_kl(Z1, np_softmax(Z2, t), t), rel=1e-6)
    assert terms["si/net2"].item() == pytest.approx(0.5 * t * t * np_reverse_kl(Z2, si, t), rel=1e-9)


def test_hand_computed_value():
    # Two classes, T = 1 with T² off: peer 1 (3/4, 1/4), peer 2 uniform; SI = (5/8, 3/8).
    z1, z2 = [[np.log(3.0), 0.0]], [[0.0, 0.0]]
    terms = make([z1, z2], temperature=1.0, lambda_ta=1.0, lambda_si=1.0).losses(batch([0]), at(0))
    assert terms["ta/net1"].item() == pytest.approx(0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(0.5 / 0.25), rel=1e-6)
    assert terms["si/net1"].item() == pytest.approx(
        0.625 * np.log(0.625 / 0.75) + 0.375 * np.log(0.375 / 0.25), rel=1e-9)


# --- the temporal accumulator ------------------------------------------------------------------------------
def log(p):
    return np.log(np.asarray(p, dtype=np.float64)).tolist()


def test_accumulator_two_epochs_by_hand():
    # β = 0.5, T = 1, two samples, batch size 1; epoch 1 visits 1 then 0, epoch 2 visits 0 then 1.
    peer2 = [[0.0, 0.0], [0.0, 0.0]]
    m = make([log([[0.6, 0.4], [0.8, 0.2]]), peer2], beta=0.5, temperature=1.0, t2_scaling=False)
    m.losses(batch([1]), at(0, 0, 2))
    np.testing.assert_allclose(buffer(m, 0), [[0.0, 0.0], [0.4, 0.1]], atol=1e-7)
    m.losses(batch([0]), at(0, 1, 2))
    np.testing.assert_allclose(buffer(m, 0), [[0.3, 0.2], [0.4, 0.1]], atol=1e-7)

    with torch.no_grad():  # peer 1 predicts differently in epoch 2
        m.peers[0].table.copy_(torch.tensor(log([[0.2, 0.8], [0.5, 0.5]])))
    terms = m.losses(batch([0]), at(1, 0, 2))
    np.testing.assert_allclose(buffer(m, 0), [[0.25, 0.5], [0.4, 0.1]], atol=1e-7)  # stored uncorrected
    target = np.array([[0.25, 0.5]]) / (1 - 0.5**2)  # = (1/3, 2/3)
    assert terms["ta/net2"].item() == pytest.approx(0.5 * np_forward_kl(target, [[0.0, 0.0]], 1.0), rel=1e-6)
    terms = m.losses(batch([1]), at(1, 1, 2))
    np.testing.assert_allclose(buffer(m, 0), [[0.25, 0.5], [0.45, 0.3]], atol=1e-7)
    assert terms["ta/net2"].item() == pytest.approx(0.5 * np_forward_kl([[0.6, 0.4]], [[0.0, 0.0]], 1.0), rel=1e-6)
    assert m.epochs_in_buffer == 2


@pytest.mark.parametrize("correction", ["epoch", "row_sum"])
def test_bias_correction_of_a_constant_prediction(correction):
    # A constant prediction p: Z = (1-β^t)·p after t epochs, and the corrected read-out is p in every epoch.
    t, beta = 4.0, 0.8
    m = make([Z1, Z2], bias_correction=correction)
    for epoch in range(4):
        terms = m.losses(batch([0, 1], Y), at(epoch))
        np.testing.assert_allclose(buffer(m, 1), (1 - beta ** (epoch + 1)) * np_softmax(Z2, t), rtol=1e-6)
        assert terms["ta/net1"].item() == pytest.approx(0.5 * t * t * np_kl(Z2, Z1, t), rel=1e-5)


def test_target_before_the_update():
    beta, t = 0.8, 4.0
    m = make([Z1, Z2], ta_target_includes_current=False)
    assert m.losses(batch([0, 1], Y), at(0))["ta/net1"].item() == 0.0  # nothing accumulated yet
    with torch.no_grad():
        m.peers[1].table.add_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    terms = m.losses(batch([0, 1], Y), at(1))
    target = (1 - beta) * np_softmax(Z2, t) / (1 - beta)  # epoch 1's prediction, not epoch 2's
    assert terms["ta/net1"].item() == pytest.approx(0.5 * t * t * np_forward_kl(target, Z1, t), rel=1e-6)


def test_per_epoch_folds_after_the_epoch_and_freezes_the_target():
    beta, t = 0.5, 1.0
    m = make([Z1, Z2], beta=beta, temperature=t, t2_scaling=False, ta_update="per_epoch")
    first = m.losses(batch([1]), at(0, 0, 2))
    assert first["ta/net1"].item() == 0.0 and not buffer(m, 1).any()  # no target, Z untouched in epoch 1
    m.losses(batch([0]), at(0, 1, 2))  # last step of epoch 1: folded
    p2 = np_softmax(Z2, t)
    np.testing.assert_allclose(buffer(m, 1), (1 - beta) * p2, rtol=1e-6)
    assert m.epochs_in_buffer == 1 and not m.visited.any()

    with torch.no_grad():
        m.peers[1].table.mul_(3.0)  # new predictions in epoch 2 do not reach the frozen targets
    for step, k in enumerate([0, 1]):
        terms = m.losses(batch([k]), at(1, step, 2))
        expected = 0.5 * np_forward_kl(p2[k:k + 1], [Z1[k]], t)
        assert terms["ta/net1"].item() == pytest.approx(expected, rel=1e-6)
        if step == 0:
            np.testing.assert_allclose(buffer(m, 1), (1 - beta) * p2, rtol=1e-6)
    np.testing.assert_allclose(buffer(m, 1), beta * (1 - beta) * p2 + (1 - beta) * np_softmax(np.array(Z2) * 3, t),
                               rtol=1e-6)
    assert m.epochs_in_buffer == 2


def run_epochs(m, epochs=3, seed=0):
    """Visit two samples per epoch in a random order with predictions that change every step."""
    generator, out = torch.Generator().manual_seed(seed), []
    for epoch in range(epochs):
        m.on_epoch_start(epoch)
        for step, k in enumerate(torch.randperm(2, generator=generator).tolist()):
            terms = m.losses(batch([k], [Y[k]]), at(epoch, step, 2))
            out.append({name: value.item() for name, value in terms.items()})
            with torch.no_grad():
                for peer in m.peers:
                    peer.table.add_(0.5 * torch.randn(peer.table.shape, generator=generator, dtype=torch.float64))
    return out


def test_per_epoch_equals_per_visit_without_the_current_prediction():
    a = run_epochs(make([Z1, Z2], ta_update="per_epoch"))
    b = run_epochs(make([Z1, Z2], ta_update="per_visit", ta_target_includes_current=False))
    for x, y in zip(a, b):  # the two round differently to the float32 buffer
        assert x == pytest.approx(y, rel=1e-4)
    assert any(row["ta/net1"] > 0 for row in a)


@pytest.mark.parametrize("update", ["per_visit", "per_epoch"])
def test_host_fp16_storage_matches_device(update):
    device = make([Z1, Z2], ta_update=update)
    host = make([Z1, Z2], ta_update=update, memory="host_fp16")
    assert host.accumulators[0].table.dtype == torch.float16 and host.accumulators[0].table.device.type == "cpu"
    a, b = run_epochs(device, 4), run_epochs(host, 4)
    # a stored value is rounded to fp16 (relative 2^-11) once per epoch and the older roundings decay with β:
    # the buffers agree to 2^-11 / (1-β); the KL terms to first order in that error.
    np.testing.assert_allclose(buffer(host, 0), buffer(device, 0), rtol=2**-11 / (1 - 0.8), atol=1e-7)
    for x, y in zip(a, b):
        assert x == pytest.approx(y, abs=5e-3)

    # From the same state, host storage is exactly device storage with its values rounded to fp16.
    rounded = make([Z1, Z2], ta_update=update)
    state = device.extra_state()
    host.load_extra_state(state)
    rounded.load_extra_state({**state, "accumulators": [z.half().float() for z in state["accumulators"]]})
    for m in (host, rounded):
        with torch.no_grad():
            m.peers[0].table.copy_(device.peers[0].table)
            m.peers[1].table.copy_(device.peers[1].table)
    x = host.losses(batch([0, 1], Y), at(4, 0, 1))
    y = rounded.losses(batch([0, 1], Y), at(4, 0, 1))
    assert {k: v.item() for k, v in x.items()} == pytest.approx({k: v.item() for k, v in y.items()}, rel=1e-6)
    np.testing.assert_allclose(buffer(host, 1), buffer(rounded, 1), rtol=2**-11)


# --- warm-up, gradients, ablations ------------------------------------------------------------------------
def test_warmup_zeroes_the_kd_terms_but_accumulates():
    m = make([Z1, Z2], warmup_epochs=2)
    for epoch in (0, 1):
        terms = m.losses(batch([0, 1], Y), at(epoch))
        assert terms["ta/net1"].item() == 0.0 and terms["si/net2"].item() == 0.0
    assert buffer(m, 1).any()  # the accumulator runs during the warm-up
    sum(m.losses(batch([0, 1], Y), at(1)).values()).backward()
    ce_only = torch.tensor(Z1, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.cross_entropy(ce_only, torch.tensor(Y)).backward()
    torch.testing.assert_close(m.peers[0].table.grad, ce_only.grad)
    terms = m.losses(batch([0, 1], Y), at(2))
    assert terms["ta/net1"].item() > 0 and terms["si/net2"].item() > 0

    si_always = make([Z1, Z2], warmup_epochs=2, warmup_applies_to_si=False).losses(batch([0, 1], Y), at(0))
    assert si_always["ta/net1"].item() == 0.0 and si_always["si/net1"].item() > 0


def test_targets_get_no_gradient():
    m = make([Z1, Z2], use_peer_kl=True)
    terms = m.losses(batch([0, 1], Y), at(0))
    (terms["ta/net1"] + terms["si/net1"] + terms["kl/net1"]).backward()
    assert m.peers[1].table.grad is None
    assert m.peers[0].table.grad.abs().sum() > 0
    assert not any(t.table.requires_grad for t in m.accumulators)


def test_table_5_ablations_are_settings():
    t = 4.0
    dml_ta = make([Z1, Z2], use_si=False).losses(batch([0, 1], Y), at(0))
    assert set(dml_ta) == {"ce/net1", "ce/net2", "ta/net1", "ta/net2"}
    dml_si = make([Z1, Z2], use_ta=False, use_peer_kl=True)
    assert dml_si.accumulators == []  # no buffer without TA
    terms = dml_si.losses(batch([0, 1], Y), at(0))
    assert set(terms) == {"ce/net1", "ce/net2", "kl/net1", "kl/net2", "si/net1", "si/net2"}
    assert terms["kl/net1"].item() == pytest.approx(0.5 * t * t * np_kl(Z2, Z1, t), rel=1e-9)
    three = make([Z1, Z2, Z3], use_ta=False, use_si=False, use_peer_kl=True).losses(batch([0, 1], Y), at(0))
    assert three["kl/net1"].item() == pytest.approx(0.5 * t * t * (np_kl(Z2, Z1, t) + np_kl(Z3, Z1, t)) / 2, rel=1e-9)


# --- end to end -----------------------------------------------------------------------------------------------
def cell(group=("cifar_resnet8", "cifar_resnet8"), epochs=2, **hparams):
    return Cell(method="tsb", hparams={"warmup_epochs": 1, **hparams}, group=group, dataset=DATA,
                recipe={**TINY_RECIPE, "epochs": epochs}, seed=0)


def weights(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.method.modules.parameters()])


def test_three_peers_end_to_end():
    trainer = Trainer(cell(group=("cifar_resnet8",) * 3, epochs=2))
    trainer.run()
    last = trainer.history[-1]
    assert {"loss/ta/net3", "loss/si/net3", "top1/net3", "top1/ens"} <= set(last)
    assert not any(key.endswith("/si") for key in last)  # the SI at T=1 is 'ens'
    assert last["loss/ta/net1"] > 0 and trainer.history[0]["loss/ta/net1"] == 0.0  # warm-up of one epoch
    assert trainer.method.epochs_in_buffer == 2
    sums = trainer.method.accumulators[2].table.sum(1)  # 60 images in batches of 32 + 28: all visited twice
    assert torch.allclose(sums, torch.full_like(sums, 1 - 0.8**2), atol=1e-5)


@pytest.mark.parametrize("hparams", [{}, {"ta_update": "per_epoch", "memory": "host_fp16"}])
def test_checkpoint_round_trip_restores_the_buffers_exactly(hparams, tmp_path):
    first = Trainer(cell(**hparams))
    first.train_epoch()
    first.epoch = 1
    torch.save(first.state_dict(), tmp_path / "state.pt")  # a file, as the engine does: an in-memory state
    resumed = Trainer(cell(**hparams))                      # would share the optimizers' momentum tensors
    resumed.load_state_dict(load_checkpoint(tmp_path / "state.pt"))
    assert resumed.method.epochs_in_buffer == first.method.epochs_in_buffer == 1
    for a, b in zip(resumed.method.accumulators, first.method.accumulators):
        assert torch.equal(a.table, b.table) and a.table is not b.table and a.table.any()
    # the resumed run continues exactly as the uninterrupted one
    uninterrupted, again = first.train_epoch(), resumed.train_epoch()
    assert torch.equal(weights(resumed), weights(first))
    for a, b in zip(resumed.method.accumulators, first.method.accumulators):
        assert torch.equal(a.table, b.table)
    assert uninterrupted["loss/ta/net2"] == again["loss/ta/net2"] > 0
    assert resumed.method.epochs_in_buffer == 2
