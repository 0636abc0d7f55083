"""The engine: seeded runs repeat exactly, a resumed run equals an uninterrupted one, bad losses stop clearly."""
import pytest
import torch

from harness.config.cell import Cell
from harness.scheduling.trainable import CorruptCheckpoint, load_checkpoint
from harness.training.engine import NonFiniteLoss, Trainer
from tests.helpers import TINY_DATA, tiny_cell


def weights(trainer: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in trainer.method.modules.parameters()])


def test_same_seed_same_numbers():
    a, b = Trainer(tiny_cell()), Trainer(tiny_cell())
    a.run(), b.run()
    assert [{k: v for k, v in h.items() if "time" not in k and "per_s" not in k} for h in a.history] == \
           [{k: v for k, v in h.items() if "time" not in k and "per_s" not in k} for h in b.history]
    assert torch.equal(weights(a), weights(b))
    c = Trainer(tiny_cell(seed=1))
    c.run()
    assert not torch.equal(weights(a), weights(c))


def test_resume_equals_uninterrupted(tmp_path):
    full = Trainer(tiny_cell(epochs=3))
    full.run()

    first = Trainer(tiny_cell(epochs=3))
    first.train_epoch(), first.evaluate()
    first.epoch, first.history = 1, [dict(full.history[0])]
    torch.save(first.state_dict(), tmp_path / "state.pt")

    resumed = Trainer(tiny_cell(epochs=3))
    resumed.load_state_dict(load_checkpoint(tmp_path / "state.pt"))
    summary = resumed.run()
    assert resumed.epoch == 3 and summary["epochs"] == 3
    assert torch.equal(weights(resumed), weights(full))
    assert resumed.history[-1]["top1/ens"] == full.history[-1]["top1/ens"]
    assert resumed.history[-1]["loss/kl/net1"] == full.history[-1]["loss/kl/net1"]


def test_checkpoint_of_another_cell_is_refused(tmp_path):
    a = Trainer(tiny_cell(seed=0))
    with pytest.raises(ValueError, match="belongs to cell"):
        Trainer(tiny_cell(seed=1)).load_state_dict(a.state_dict())


def test_corrupt_checkpoint_is_named(tmp_path):
    path = tmp_path / "state.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptCheckpoint, match=str(path)):
        load_checkpoint(path)


def test_nan_loss_stops_with_the_term_and_epoch():
    trainer = Trainer(tiny_cell(optimizer={"name": "sgd", "lr": 1e12}))
    with pytest.raises(NonFiniteLoss, match=r"loss/\w+/net\d is (nan|inf) in epoch \d"):
        trainer.run()


def test_metrics_of_every_output():
    trainer = Trainer(tiny_cell(epochs=1))
    trainer.run()
    last = trainer.history[-1]
    for key in ("top1/net1", "top1/net2", "top1/ens", "top1/avg", "top5/net1", "loss/ce/net1", "loss/kl/net2",
                "images_per_s", "lr/net1", "lr/net2"):
        assert key in last
    assert last["top1/avg"] == pytest.approx((last["top1/net1"] + last["top1/net2"]) / 2)
    assert all(0 <= last[k] <= 100 for k in last if k.startswith("top"))
    assert last["top5/net1"] >= last["top1/net1"]


def test_ind_trains_each_peer_on_its_own_labels_only():
    trainer = Trainer(tiny_cell(method="ind", epochs=1))
    trainer.run()
    assert set(k for k in trainer.history[-1] if k.startswith("loss/")) == {"loss/ce/net1", "loss/ce/net2"}


def test_per_peer_views_chosen_in_the_dataset_spec():
    cell = tiny_cell()
    per_peer = Cell(**{**cell.to_dict(), "group": cell.group, "dataset": {**TINY_DATA, "views": "per_peer"}})
    assert per_peer.hash != cell.hash
    trainer = Trainer(per_peer)
    batch = next(iter(trainer.train_batches.epoch(0)))
    assert len(batch.views) == 2 and not torch.equal(batch.view(0), batch.view(1))
    assert len(next(iter(Trainer(cell).train_batches.epoch(0))).views) == 1


def test_cli_names_the_missing_dataset(tmp_path, write_suite, capfd):
    from tests.helpers import cli, tiny_suite_dict

    path = write_suite(tiny_suite_dict(dataset={"name": "cifar100"}))
    code, _, err = cli(capfd, "run", path, "--data-root", tmp_path, "--results", tmp_path / "r")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "dataset cifar100" in lines[0] and str(tmp_path) in lines[0]


def test_training_cost_counts_every_network_and_leaves_the_run_alone():
    """Ind and DML run both networks forward once per step: twice one network's multiply-adds per image (torch's
    counter on the bare network, an independent count); measuring changes neither the weights nor the random
    stream, so the run that follows is the run that would have been."""
    import timm

    from harness.costs.networks import flops

    one = flops(timm.create_model("cifar_resnet8", num_classes=10, in_chans=1), (1, 28, 28)) / 2
    measured = Trainer(tiny_cell())
    before, rng = weights(measured).clone(), torch.random.get_rng_state()
    assert measured.costs()["train_forward_macs_per_image"] == pytest.approx(2 * one)
    assert torch.equal(weights(measured), before) and torch.equal(torch.random.get_rng_state(), rng)
    assert Trainer(tiny_cell("ind")).costs()["train_forward_macs_per_image"] == pytest.approx(2 * one)
    untouched = Trainer(tiny_cell())
    measured.run(), untouched.run()
    assert torch.equal(weights(measured), weights(untouched))


def test_a_cost_that_cannot_be_measured_does_not_fail_the_trial(monkeypatch):
    import harness.training.step_cost

    trainer = Trainer(tiny_cell())
    monkeypatch.setattr(harness.training.step_cost, "training_forward_macs", lambda *a: 1 / 0)
    assert trainer.costs() == {"train_forward_macs_per_image": None, "error": "ZeroDivisionError: division by zero"}
