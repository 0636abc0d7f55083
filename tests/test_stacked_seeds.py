"""Several seeds of one cell trained as one grouped network (``resources.stack_seeds``, issue 19): a bundle's first
step equals each seed's own first step for ind, dml, kdcl and tsb; a bundle runs to its end, resumes from its
checkpoint, fails a NaN seed alone, and ``harness validate`` refuses what cannot stack in one line each."""
import copy
import math

import pytest
import torch

from harness.config.cell import Cell
from harness.suite.schema import SuiteError, load_suite
from harness.training.bundle import SeedBundle
from harness.training.engine import Runtime, Trainer
from harness.training.method import Step

from tests.helpers import tiny_suite_dict

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = Runtime(device="cpu", channels_last=False)


def seed_cells(write_suite, method, seeds=(0, 1, 2), group=("cifar_resnet8", "cifar_resnet8"), **overrides):
    suite = tiny_suite_dict(dataset={"name": "fashion_mnist_mini", "train_per_class": 12, "test_per_class": 10},
                            methods=[method], seeds=list(seeds), groups=[list(group)], **overrides)
    return [Cell.from_dict(c.to_dict()) for c in load_suite(write_suite(suite)).cells]


@pytest.mark.parametrize("method", ["ind", {"name": "dml", "temperature": 2},
                                    {"name": "kdcl", "target": "general", "val_per_class": 2},
                                    {"name": "tsb", "warmup_epochs": 0}], ids=["ind", "dml", "kdcl", "tsb"])
def test_a_bundle_steps_every_seed_as_it_steps_alone(write_suite, method):
    """Terms and every weight and BN statistic after one step (the recipe's SGD with momentum and weight decay)
    equal each seed's own separate step, to float tolerance; the seeds really differ from one another."""
    cells = seed_cells(write_suite, method)
    bundle = SeedBundle(cells, CPU)
    bundle.start_epoch(0)
    batches = {s: next(iter(trainer.train_batches.epoch(0))) for s, trainer in enumerate(bundle.trainers)}
    stacked_terms = bundle.train_step(batches, Step(0, 0, bundle.recipe.epochs, bundle.steps))
    after = bundle.stack.peer_state_dicts()
    k = len(cells[0].group)
    for s, cell in enumerate(cells):
        alone = Trainer(cell, CPU)
        alone.method.modules.train()
        alone.method.on_epoch_start(0)
        batch = next(iter(alone.train_batches.epoch(0)))
        terms = alone.method.train_step(batch, Step(0, 0, alone.recipe.epochs, len(alone.train_batches)))
        assert set(terms) == set(stacked_terms[s]) and len(terms) >= 2
        for name, value in terms.items():
            torch.testing.assert_close(stacked_terms[s][name], value, rtol=1e-5, atol=1e-7, msg=f"seed {s} {name}")
        for j, peer in enumerate(alone.method.peers):
            for name, value in peer.state_dict().items():
                torch.testing.assert_close(after[s * k + j][name], value, rtol=1e-4, atol=1e-6,
                                           msg=f"seed {s} net{j + 1} {name}")
    first = [stacked_terms[s]["ce/net1"] for s in range(len(cells))]
    assert len({float(v) for v in first}) == len(cells), "the seeds trained on the same batch and weights"


def test_a_bundle_runs_to_its_end_and_resumes_from_its_checkpoint(write_suite):
    cells = seed_cells(write_suite, {"name": "dml", "temperature": 2}, seeds=(0, 1))
    whole = SeedBundle(cells, CPU)
    summaries = whole.run()
    assert set(summaries) == {c.hash for c in cells} and not whole.failed
    assert all(s["epochs"] == whole.recipe.epochs for s in summaries.values())
    # each seed's saved networks are ordinary ones that predict what the bundle predicts
    trainer = whole.trainers[1]
    networks = trainer.method.deployed_networks()
    assert [name for name, _ in networks] == list(cells[1].group)
    assert all(type(net).__name__ == "CifarResNet" for _, net in networks)
    whole.stack.eval()
    trainer.method.modules.eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        logits = trainer.method.predict(x)  # not primed: the shared network's own eval pass
        for j, (_, net) in enumerate(networks):
            torch.testing.assert_close(net.eval()(x), logits[f"net{j + 1}"], rtol=1e-4, atol=1e-5)

    # stop after epoch 1, resume a new bundle from the checkpoint: the same histories as the uninterrupted run
    first = SeedBundle(cells, CPU)
    first.last_epoch = 1
    first.run()
    state = first.state_dict()
    again = SeedBundle(cells, CPU)
    again.load_state_dict(state)
    assert again.epoch == 1 and again.restarts == 1
    again.run()
    for a, b in zip(whole.trainers, again.trainers):
        assert [h["epoch"] for h in b.history] == [h["epoch"] for h in a.history]
        for ha, hb in zip(a.history, b.history):
            assert hb["top1/ens"] == pytest.approx(ha["top1/ens"], abs=1e-6)
            assert hb["loss/ce/net1"] == pytest.approx(ha["loss/ce/net1"], rel=1e-4)

    # a checkpoint of another set of seeds, or of one cell alone, is refused in one line
    other = SeedBundle(cells[:1] + seed_cells(write_suite, {"name": "dml", "temperature": 2}, seeds=(5,)), CPU)
    with pytest.raises(ValueError, match="checkpoint of the stacked seeds .* the bundle starts over"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="checkpoint of one cell trained alone"):
        again.load_state_dict(Trainer(cells[0], CPU).state_dict())
    with pytest.raises(ValueError, match="checkpoint of the stacked seeds .*, not of cell .* alone; it starts over"):
        Trainer(cells[0], CPU).load_state_dict(state)  # the cell trained by itself later (its other seed finished)


def test_kdcl_general_bundles_validate_each_seed_on_its_own_split(write_suite):
    """KDCL-General's weights come from an eval pass of each seed's networks on its own held-out split at every
    epoch's start: through the shared stack, in eval mode, as the seed's separate run computes them."""
    cells = seed_cells(write_suite, {"name": "kdcl", "target": "general", "val_per_class": 2}, seeds=(0, 1))
    bundle = SeedBundle(cells, CPU)
    bundle.run()
    assert not bundle.failed
    for cell, trainer in zip(cells, bundle.trainers):
        alone = Trainer(cell, CPU)
        alone.method.modules.load_state_dict(trainer.method.modules.state_dict() | {
            f"peers.{j}.{key}": value for j, state in enumerate(trainer.method.peers.peer_state_dicts())
            for key, value in state.items()})
        expected = alone.method.validation_errors()
        torch.testing.assert_close(trainer.method.validation_errors(), expected, rtol=1e-4, atol=1e-6)
        assert "general/w/net1" in trainer.history[-1]


def test_a_seed_whose_loss_is_nan_fails_alone(write_suite):
    cells = seed_cells(write_suite, "ind", seeds=(0, 1))
    bundle = SeedBundle(cells, CPU)
    with torch.no_grad():  # seed 1's first network is broken; seed 0 shares the grouped layers with it
        weight = bundle.stack.net.conv1.weight  # (networks × out channels, ...): network k's block of rows
        rows = weight.shape[0] // bundle.stack.k
        weight[bundle.k * rows:(bundle.k + 1) * rows].fill_(float("nan"))
    summaries = bundle.run()
    assert list(summaries) == [cells[0].hash]
    assert "NonFiniteLoss" in bundle.failed[cells[1].hash] and "ce/net1 is nan in epoch 1" in bundle.failed[cells[1].hash]
    assert all(math.isfinite(h["loss/ce/net1"]) for h in bundle.trainers[0].history)
    assert len(bundle.trainers[0].history) == bundle.recipe.epochs


def test_validate_refuses_what_cannot_stack_seeds(write_suite):
    suite = tiny_suite_dict(methods=["ind", {"name": "dml", "update": "sequential"}, "afd"],
                            groups=[["cifar_resnet8", "cifar_resnet8"], ["cifar_resnet8", "cifar_resnet14"],
                                    ["cifar_shufflenetv1"]],
                            resources={"cpu": 1, "stack_seeds": True, "grad_accumulation": 2})
    with pytest.raises(SuiteError) as caught:
        load_suite(write_suite(suite))
    text = "\n".join(caught.value.lines)
    assert "resources.stack_seeds: groups[0] with method 'dml': method dml updates its peers one after another" in text
    assert "resources.stack_seeds: groups[0] with method 'afd': method afd reaches its peers one at a time" in text
    assert "cifar_resnet8+cifar_resnet14 mixes architectures" in text
    assert "resources.stack_seeds: groups[2]: cifar_shufflenetv1: CifarShuffleNetV1 cannot be stacked" in text
    assert "resources.stack_seeds: grad_accumulation 2" in text
    assert "groups[0] with method 'ind'" not in text
    # one network per cell is enough where the seeds make the stack
    load_suite(write_suite(tiny_suite_dict(methods=["ind"], groups=[["cifar_resnet8"]],
                                           resources={"cpu": 1, "stack_seeds": True})))


def test_harness_run_trains_each_bundle_as_one_trial_with_a_record_per_seed(tmp_path, ray_address, capfd):
    """``harness run`` with stack_seeds: two bundles of three seeds, six ok records with their own weights, each
    saying it was stacked; a second run finds every cell finished."""
    import yaml

    from tests.helpers import harness_main, records

    suite = tiny_suite_dict(seeds=[0, 1, 2], resources={"cpu": 1, "stack_seeds": True})
    path = tmp_path / "seeds.yaml"
    path.write_text(yaml.safe_dump(suite))
    results, reports = tmp_path / "results", tmp_path / "reports"
    code, out = harness_main(capfd, "run", path, "--results", results, "--reports", reports, address=ray_address)
    assert code == 0, out
    assert "stack_seeds: 6 cells train as 2 bundle(s) of seeds, one trial each" in out
    assert "ind cifar_resnet8+cifar_resnet8 seed 0 (and seeds 1, 2, stacked) epoch 2/2" in out
    assert "[6/6 done, 0 running, 0 failed" in out and out.count("finished ") >= 6
    final = records(results)
    assert len(final) == 6 and all(r["status"] == "ok" for r in final.values())
    for record in final.values():
        assert record["parallel"]["stacked_seeds"] == 3 and record["hardware"]["gpu_share"] == 0
        assert record["params"]["deployed"] == record["params"]["peers"] > 0
        assert (results / record["weights"]["file"]).is_file() and len(record["history"]) == 2
    trials = {r["trial"] for r in final.values()}
    assert len(trials) == 2  # one trial per bundle
    for method in ("ind", "dml"):
        accs = {r["last"]["net1"]["top1"] for r in final.values() if r["cell"]["method"] == method}
        assert len(accs) > 1, "the seeds of a bundle trained identically"
    md = (reports / "tiny.md").read_text()  # the report says how its trials ran
    assert "3 seeds stacked in one network" in md
    code, out = harness_main(capfd, "run", path, "--results", results, "--reports", reports, address=ray_address)
    assert code == 0 and "6 finished already, 0 to run" in out


def test_gpu_auto_and_the_memory_check_count_every_stacked_seed(write_suite):
    """A trial of stacked seeds holds all of them: ``gpu: auto`` packs by the bundle's memory, and a share too small
    for the bundle is refused in one line."""
    from harness.costs.capacity import capacity_errors
    from harness.costs.memory import GIB, cell_memory

    recipe = {**tiny_suite_dict()["recipe"], "batch_size": 1024}
    suite = load_suite(write_suite(tiny_suite_dict(
        dataset={"name": "cifar100"}, groups=[["cifar_wrn_40_2", "cifar_wrn_40_2"]], methods=["ind"],
        seeds=[0, 1, 2], recipe=recipe, resources={"cpu": 1, "gpu": "auto", "gpu_memory_gb": 80, "stack_seeds": True})))
    largest = max(cell_memory(c).total_bytes for c in suite.cells) / GIB
    k = max(1, min(8, int(80 // (3 * largest * 1.25 + 0.5))))
    alone = max(1, min(8, int(80 // (largest * 1.25 + 0.5))))
    assert k < alone and suite.spec.resources.gpu == pytest.approx(1 / k)
    assert f"gpu: auto → {k} trial(s) of 3 stacked seeds per 80 GB GPU" in suite.spec.resources.packing
    assert capacity_errors(suite) == []
    small = load_suite(write_suite(tiny_suite_dict(
        dataset={"name": "cifar100"}, groups=[["cifar_wrn_40_2", "cifar_wrn_40_2"]], methods=["ind"],
        seeds=[0, 1, 2], recipe=recipe, resources={"cpu": 1, "gpu": 1, "gpu_memory_gb": largest * 2, "stack_seeds": True})))
    [line] = capacity_errors(small)
    assert "resources.stack_seeds: 3 seeds of ind cifar_wrn_40_2+cifar_wrn_40_2 seed 0 at batch 1024 share a trial" in line


def test_a_slice_is_one_cell_of_the_stack_and_refuses_a_training_pass_of_its_own():
    """Each cell reaches its own networks of the shared stack (logits and features, in eval mode); in training mode
    only the primed logits of the shared pass are given, since a pass of its own would move the other cells' BN
    statistics."""
    import timm

    import harness.models  # noqa: F401
    from harness.models.adapter import extract
    from harness.models.stacked import StackedPeers, StackSlice

    torch.manual_seed(0)
    separate = [timm.create_model("cifar_resnet8", num_classes=10) for _ in range(4)]
    stack = StackedPeers([copy.deepcopy(m) for m in separate]).eval()
    second = StackSlice(stack, 2, 2).eval()
    x = [torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)]
    with torch.no_grad():
        for model, v, z, feats in zip(separate[2:], x, second(x), second.features(x)):
            torch.testing.assert_close(z, model.eval()(v), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(feats.embedding, extract(model, v).embedding, rtol=1e-4, atol=1e-5)
        assert [len(second), len(list(second))] == [2, 2]
        for net, model in zip(second.unstack(), separate[2:]):
            torch.testing.assert_close(net(x[0]), model(x[0]), rtol=1e-4, atol=1e-5)
    stack.train()  # a method's own eval pass mid-epoch (KDCL-General's validation split): the stack is left as it was
    before = copy.deepcopy(stack.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(second(x)[0], separate[2](x[0]), rtol=1e-4, atol=1e-5)
    assert stack.training and all(torch.equal(v, before[key]) for key, v in stack.state_dict().items())
    second.train()
    primed = [torch.zeros(3, 10), torch.ones(3, 10)]
    second.prime(x, primed)
    assert all(a is b for a, b in zip(second(x), primed))
    with pytest.raises(RuntimeError, match="outside the shared pass"):
        second(x)  # the primed logits are used once
    second.prime(x, primed)
    with pytest.raises(RuntimeError, match="outside the shared pass"):
        second([x[0].clone(), x[1]])  # not the views it was primed with
