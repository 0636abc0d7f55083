"""``resources: {compile: true}`` (issue 19): each network's forward goes through torch.compile, and the engine's
first training step (losses, backward, SGD) equals the eager one to float tolerance on the CPU.  One compile of a
ResNet-8 costs about a minute on this machine's CPU, so this is one test."""
import pytest
import torch

from harness.config.cell import Cell
from harness.suite.schema import load_suite
from harness.training.engine import Runtime, Trainer
from harness.training.method import Step

from tests.helpers import tiny_suite_dict


@pytest.mark.slow
def test_compiled_and_eager_steps_agree(write_suite):
    suite = tiny_suite_dict(dataset={"name": "fashion_mnist_mini", "train_per_class": 4, "test_per_class": 2},
                            methods=[{"name": "dml", "temperature": 2}], seeds=[0],
                            resources={"cpu": 1, "compile": True})
    cell = load_suite(write_suite(suite)).cells[0]
    trainers = [Trainer(Cell.from_dict(cell.to_dict()), Runtime(device="cpu", channels_last=False, compile=c))
                for c in (False, True)]
    assert [peer._compiled_call_impl is not None for peer in trainers[1].method.peers] == [True, True]
    assert all(peer._compiled_call_impl is None for peer in trainers[0].method.peers)
    terms = []
    for trainer in trainers:
        trainer.method.modules.train()
        batch = next(iter(trainer.train_batches.epoch(0)))
        terms.append(trainer.method.train_step(batch, Step(0, 0, trainer.recipe.epochs, len(trainer.train_batches))))
    for name in terms[0]:
        torch.testing.assert_close(terms[1][name], terms[0][name], rtol=1e-4, atol=1e-6, msg=name)
    eager, compiled = (t.method.modules.state_dict() for t in trainers)
    assert set(eager) == set(compiled)  # compiled in place: the checkpoint keys are the eager modules'
    for name, value in eager.items():
        torch.testing.assert_close(compiled[name], value, rtol=1e-4, atol=1e-6, msg=name)
    assert any(not torch.equal(v, Trainer(Cell.from_dict(cell.to_dict()), Runtime(device="cpu", channels_last=False))
                               .method.modules.state_dict()[k]) for k, v in eager.items()), "the step changed nothing"
