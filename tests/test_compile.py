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


def test_feature_methods_and_stacked_peers_reach_the_compiled_feature_path(monkeypatch):
    """``compile: true`` compiled each network's ``__call__``, but feature methods reach their peers through
    ``forward_intermediates`` (``adapter.extract``), which ran eagerly: compile was silently off for them and for
    stacked peers' features.  Now the feature path is compiled too, with static shapes.  Dynamo's "eager" backend
    here (it traces, and runs the traced graph without generating code), so the test takes seconds."""
    import torch._dynamo

    from harness.models import adapter
    from tests.helpers import tiny_cell

    compiled_with = []
    real = torch.compile

    def eager_compile(fn=None, **options):
        compiled_with.append(options)
        return real(fn, **{**options, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", eager_compile)
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, **options: setattr(self, "_compiled_call_impl", eager_compile(self._call_impl,
                                                                                                   **options)))
    torch._dynamo.reset()
    terms, features = [], []
    for compile_ in (False, True):
        trainer = Trainer(tiny_cell("dml_at", epochs=1), Runtime(device="cpu", channels_last=False, compile=compile_))
        batch = next(iter(trainer.train_batches.epoch(0)))
        traced = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        terms.append(trainer.method.train_step(batch, Step(0, 0, 1, len(trainer.train_batches))))
        assert all((net in adapter._COMPILED) == compile_ for net in trainer.method.peers)
        assert (torch._dynamo.utils.counters["stats"]["unique_graphs"] > traced) == compile_  # traced graphs ran
        stacked = Trainer(tiny_cell("dml", epochs=1), Runtime(device="cpu", channels_last=False, compile=compile_,
                                                              stack_peers=True)).method.peers
        assert (stacked.net in adapter._COMPILED) == compile_
        traced = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        features.append(stacked.features([batch.x, batch.x]))
        assert (torch._dynamo.utils.counters["stats"]["unique_graphs"] > traced) == compile_
    for name in terms[0]:
        torch.testing.assert_close(terms[1][name], terms[0][name], rtol=1e-5, atol=1e-6, msg=name)
    for eager, compiled in zip(*features):
        torch.testing.assert_close(compiled.logits, eager.logits, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(compiled.stages[-1], eager.stages[-1], rtol=1e-5, atol=1e-6)
    assert compiled_with and all(options.get("dynamic") is False for options in compiled_with)
