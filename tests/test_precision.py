"""Mixed precision: bf16/fp16 autocast for the networks (fp16 through a gradient scaler), the sensitive losses
computed in fp32 whatever the networks ran in, fp32 the default that leaves every earlier cell's hash alone."""
import math

import pytest
import torch

from harness.config.cell import Cell
from harness.suite.schema import load_suite
from harness.training.engine import Runtime, Trainer
from methods.afd import lsgan_discriminator_loss
from methods.common.contrastive import nce_loss
from methods.common.losses import distill_kl, soft_targets

from tests.helpers import TINY_DATA, TINY_RECIPE, tiny_suite_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def test_kl_at_a_temperature_is_computed_in_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 10) * 5, torch.randn(6, 10) * 5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = (student @ torch.eye(10))  # a bf16 tensor, as a network's logits are under autocast
        assert s.dtype == torch.bfloat16
        loss = distill_kl(s, soft_targets(teacher, 4.0), 4.0)
    assert loss.dtype == torch.float32
    # by hand from the same (bf16-rounded) logits, in float64: Σ p (log p − log q) / B × T²
    p = torch.softmax(teacher.double() / 4, 1)
    log_q = torch.log_softmax(s.double() / 4, 1)
    expected = (p * (p.log() - log_q)).sum(1).mean() * 16
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_nce_and_lsgan_stay_fp32_under_autocast():
    scores = torch.rand(4, 9).to(torch.bfloat16) + 0.1
    real, fake = torch.randn(4, 1).to(torch.bfloat16), torch.randn(4, 1).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nce, gan = nce_loss(scores, 100), lsgan_discriminator_loss(real, fake)
    assert nce.dtype == gan.dtype == torch.float32
    noise = 8 / 100
    s = scores.double()
    expected = -(torch.log(s[:, 0] / (s[:, 0] + noise + 1e-7)).sum()
                 + torch.log(noise / (s[:, 1:] + noise + 1e-7)).sum()) / 4
    assert nce.item() == pytest.approx(expected.item(), rel=1e-5)
    assert gan.item() == pytest.approx(((real.double() - 1) ** 2).mean().item() + (fake.double() ** 2).mean().item(),
                                       rel=1e-5)


def cell(write_suite, precision: str, method="dml", **changes) -> Cell:
    suite = tiny_suite_dict(methods=[method], seeds=[0], recipe=dict(TINY_RECIPE, precision=precision), **changes)
    return load_suite(write_suite(suite)).cells[0]


def test_fp32_is_the_default_and_leaves_hashes_alone_other_precisions_are_new_cells(write_suite):
    default = load_suite(write_suite(tiny_suite_dict(methods=["dml"], seeds=[0]))).cells[0]
    assert default.recipe["precision"] == "fp32"
    assert "precision" not in default.identity()["recipe"]
    assert cell(write_suite, "fp32").hash == default.hash
    assert len({default.hash, cell(write_suite, "bf16").hash, cell(write_suite, "fp16").hash}) == 3


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_cell_trains_in_low_precision_on_the_cpu_with_fp32_losses(write_suite, precision):
    # two steps an epoch: low precision is slow on a CPU
    trainer = Trainer(cell(write_suite, precision, dataset=TINY_DATA), Runtime(device="cpu"))
    seen = []
    hook = trainer.method.peers[0].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    terms = []
    original = trainer.method.losses
    trainer.method.losses = lambda *a: terms.append(original(*a)) or terms[-1]
    trainer.run()
    hook.remove()
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert low in seen  # the networks ran in low precision
    assert all(t.dtype == torch.float32 for step in terms for t in step.values())  # the losses did not
    assert all(math.isfinite(v) for k, v in trainer.history[-1].items() if k.startswith("loss/"))
    assert (trainer.scaler is not None) == (precision == "fp16")
    state = trainer.state_dict()
    assert ("grad_scaler" in state) == (precision == "fp16")
    # a resumed run gets its scale back: the next epoch is the same as the uninterrupted run's
    again = Trainer(trainer.cell, Runtime(device="cpu"))
    again.load_state_dict(state)
    assert again.history == trainer.history
    if precision == "fp16":
        assert again.scaler.get_scale() == trainer.scaler.get_scale()


def test_low_precision_halves_the_activation_estimate(write_suite):
    from harness.costs.memory import cell_memory

    full, half = cell_memory(cell(write_suite, "fp32")), cell_memory(cell(write_suite, "bf16"))
    assert half.activation_bytes == pytest.approx(full.activation_bytes / 2, abs=1)


def test_an_epochs_loss_is_summed_in_fp32_whatever_the_terms_dtype():
    """A loss term that a method returns in bf16 (an autocast output) was summed over the epoch in bf16, whose
    8-bit mantissa rounds every addition: 300 steps of 0.30078125 summed to 92 (0.3067 logged, 2 % off; past 256
    a step of 0.3 adds nothing).  Summed in fp32, the epoch's mean is the term."""
    from harness.data.batches import Batch
    from harness.training.engine import Runtime, Trainer
    from tests.helpers import tiny_cell

    trainer = Trainer(tiny_cell(epochs=1), Runtime(device="cpu"))
    x = torch.zeros(2, 1, 28, 28)

    class ManySteps:
        def __len__(self):
            return 300

        def epoch(self, epoch):
            return (Batch([x], torch.zeros(2, dtype=torch.long), torch.arange(2)) for _ in range(300))

    trainer.train_batches = ManySteps()
    trainer.train_step = lambda batch, step: ({"kl": torch.tensor(0.3, dtype=torch.bfloat16)}, 2)
    metrics = trainer.train_epoch()
    assert metrics["loss/kl"] == pytest.approx(0.30078125, rel=1e-6)
