"""Offline CRD (crd): RepDistiller's defaults, every term against an independent numpy computation (CRD alone and
CRD+KD), the bank updates, where the gradients go (the frozen teacher gets none, its head only through the teacher
anchor), the optimizer groups and the parameter counts."""
import copy
import io

import harness.models  # noqa: F401  (first: the torchvision shim runs before timm is imported)
import numpy as np
import pytest
import timm
import torch

from harness.models import adapter
from harness.training.method import MethodContext, Step, load_methods
from tests.helpers import np_ce, np_kl, np_nce, np_normalise, np_scores, random_batch

STUDENT, TEACHER = "cifar_resnet8", "cifar_wrn_16_2"  # embeddings of 64 and 128 dimensions
FIXED_INDEX = torch.tensor([[2, 0, 4, 11, 9], [7, 3, 1, 6, 11], [5, 8, 6, 1, 0], [10, 4, 9, 3, 0]])


def make(num_train=12, classes=3, size=(8, 8), **hparams):
    cls = load_methods().get("crd")

    def create(name):
        return timm.create_model(name, num_classes=classes, in_chans=1)

    def load_stage(name):
        assert name == "teacher"
        torch.manual_seed(123)
        teacher = create(TEACHER)
        with torch.no_grad():  # BN statistics that differ from the batch's: eval mode must matter
            for module in teacher.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.5, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
        return [teacher.requires_grad_(False).eval()]

    ctx = MethodContext(group=(TEACHER, STUDENT), num_classes=classes, in_chans=1, image_size=size,
                        num_train=num_train, epochs=2, steps_per_epoch=1, device=torch.device("cpu"),
                        create_model=create, load_stage=load_stage)
    torch.manual_seed(0)
    method = cls(cls.HParams(**hparams), ctx)
    method.on_epoch_start(0)
    return method


def tiny_batch(n=4, size=(8, 8), seed=0):
    return random_batch(n, size, seed, index=torch.tensor([2, 7, 5, 10]))


def np_embedding(head, features):
    w, b = head.linear.weight.detach().double().numpy(), head.linear.bias.detach().double().numpy()
    return np_normalise(features.detach().double().numpy() @ w.T + b)


def test_defaults_are_repdistillers_crd_run():
    method = make()
    hp = method.hp
    assert (hp.ce_weight, hp.kd_weight, hp.beta, hp.temperature, hp.t2_scaling) == (1.0, 0.0, 0.8, 4.0, True)
    assert (hp.feat_dim, hp.num_negatives, hp.nce_temperature, hp.momentum) == (128, 16384, 0.07, 0.5)
    assert (hp.negatives, hp.replacement, hp.teacher_seed) == ("other_class", None, 0)
    assert method.num_negatives == 11 and make(num_train=20_000).num_negatives == 16384
    assert [method.embeds[r].linear.in_features for r in ("student", "teacher")] == [64, 128]
    assert [method.banks[r].memory.shape for r in ("student", "teacher")] == [(12, 128)] * 2


@pytest.mark.parametrize("hparams", [{}, {"kd_weight": 1.0, "ce_weight": 0.5, "beta": 0.3, "temperature": 2.0,
                                          "nce_temperature": 0.2, "momentum": 0.4}], ids=["CRD", "CRD+KD"])
def test_every_term_golden(hparams):
    method = make(**hparams)
    hp = method.hp
    method.sampler.sample = lambda index, y: FIXED_INDEX
    batch = tiny_batch()
    banks = {r: method.banks[r].memory.numpy().copy() for r in ("student", "teacher")}
    teacher = copy.deepcopy(method.teacher).eval()  # the reference: the frozen teacher as loaded, in eval mode
    terms = method.losses(batch, Step(0, 0, 2, 1))
    assert set(terms) == {"ce", "crd/student", "crd/teacher"} | ({"kd"} if hp.kd_weight > 0 else set())

    # Independent computation: the student in train mode (batch statistics), the teacher in eval mode.
    with torch.no_grad():
        s = adapter.extract(method.student, batch.x)
        t_logits = teacher(batch.x).double().numpy()
        t_feat = teacher.forward_head(teacher.forward_features(batch.x), pre_logits=True)
    v_s, v_t = np_embedding(method.embeds["student"], s.embedding), np_embedding(method.embeds["teacher"], t_feat)
    y = batch.y.numpy()
    assert terms["ce"].item() == pytest.approx(hp.ce_weight * np_ce(s.logits.double().numpy(), y), rel=1e-5)
    kd = np_kl(t_logits, s.logits.double().numpy(), hp.temperature) * hp.temperature ** 2
    if hp.kd_weight > 0:  # RepDistiller's CRD (α 0) has no KD term at all
        assert terms["kd"].item() == pytest.approx(hp.kd_weight * kd, rel=1e-4, abs=1e-12)
    for anchor, v, bank in (("student", v_s, "teacher"), ("teacher", v_t, "student")):
        raw, z = np_scores(v, banks[bank], FIXED_INDEX.numpy(), hp.nce_temperature)
        assert terms[f"crd/{anchor}"].item() == pytest.approx(hp.beta * np_nce(raw / z, 12), rel=1e-5)
        assert method.banks[bank].z.item() == pytest.approx(z, rel=1e-5)

    # each bank took its own network's embedding: normalise(μ·m + (1 − μ)·v); other rows untouched
    for role, v in (("student", v_s), ("teacher", v_t)):
        expected = banks[role].astype(np.float64).copy()
        for row, i in enumerate(batch.index.tolist()):
            expected[i] = np_normalise((hp.momentum * banks[role][i] + (1 - hp.momentum) * v[row])[None])[0]
        np.testing.assert_allclose(method.banks[role].memory.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_gradients_reach_the_student_and_both_heads_never_the_teacher():
    method = make(kd_weight=1.0)
    terms = method.losses(tiny_batch(), None)
    classifier = {id(p) for p in method.student.get_classifier().parameters()}
    body = [p for p in method.student.parameters() if id(p) not in classifier]

    terms["crd/teacher"].backward(retain_graph=True)  # teacher anchor: only the teacher's head learns
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.embeds["teacher"].parameters())
    assert all(p.grad is None for p in method.student.parameters())
    assert all(p.grad is None for p in method.embeds["student"].parameters())

    terms["crd/student"].backward(retain_graph=True)  # student anchor: the student below its classifier, its head
    student_side = body + list(method.embeds["student"].parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student_side)
    assert all(p.grad is None for p in method.student.get_classifier().parameters())

    (terms["ce"] + terms.get("kd", 0)).backward()
    assert all(p.grad is not None for p in method.student.get_classifier().parameters())
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    assert not any(b.requires_grad for b in method.modules["memory"].buffers())


def test_z_fixed_once_and_banks_persist_in_the_state_dict():
    method = make()
    method.losses(tiny_batch(), None)
    z = {r: method.banks[r].z.clone() for r in ("student", "teacher")}
    assert all((v > 0).all() for v in z.values())
    assert torch.equal(method.sampler.labels[tiny_batch().index], tiny_batch().y)
    method.losses(tiny_batch(seed=1), None)
    assert all(torch.equal(z[r], method.banks[r].z) for r in z)
    keys = set(method.modules.state_dict())
    assert {"memory.student.memory", "memory.teacher.memory", "memory.student.z", "memory.teacher.z",
            "negatives.labels"} <= keys


def test_optimizer_group_and_parameter_counts():
    method = make()
    [group] = method.optim_groups()["peers"].params
    assert group["model"] == STUDENT
    expected = list(method.student.parameters()) + list(method.embeds.parameters())
    assert {id(p) for p in group["params"]} == {id(p) for p in expected}
    counts = method.parameter_counts()
    n = method.ctx.num_train
    assert counts["added"] == {"embed": (64 + 1) * 128 + (128 + 1) * 128, "memory": 0, "negatives": 0}
    assert counts["added_buffers_bytes"]["memory"] == 2 * (n * 128 * 4 + 4)
    assert counts["added_buffers_bytes"]["negatives"] == n * 8
    assert counts["frozen"] == {"teacher": sum(p.numel() for p in method.teacher.parameters())}
    assert counts["deployed"] == sum(p.numel() for p in method.student.parameters())
    assert set(method.predict(tiny_batch().x)) == {"net1", "teacher"}


def test_end_to_end_resume_restores_banks_and_label_table(tmp_path):
    from harness.config.cell import Cell
    from harness.training.engine import Trainer
    from tests.helpers import TINY_RECIPE
    from tests.helpers import train_stages

    cell = Cell(method="crd", hparams={}, group=("cifar_resnet8", "cifar_resnet8"),
                dataset={"name": "fashion_mnist_mini", "train_per_class": 6, "test_per_class": 5},
                recipe={**TINY_RECIPE, "epochs": 2}, seed=0)
    runtime = train_stages(cell, tmp_path)
    trainer = Trainer(cell, runtime)
    initial = {r: trainer.method.banks[r].memory.clone() for r in ("student", "teacher")}
    states = []
    trainer.run(lambda t, metrics: states.append(io.BytesIO()) or torch.save(t.state_dict(), states[-1]))
    method = trainer.method
    assert (method.sampler.labels >= 0).all() and method.num_negatives == method.ctx.num_train - 1
    for role in ("student", "teacher"):
        moved = (method.banks[role].memory != initial[role]).any(1)
        assert moved.sum() >= method.ctx.num_train - 1
        np.testing.assert_allclose(method.banks[role].memory[moved].norm(dim=1).numpy(), 1.0, rtol=1e-5)
    last = trainer.history[-1]
    assert all(last[f"loss/{t}"] > 0 for t in ("ce", "crd/student", "crd/teacher")) and "loss/kd" not in last

    states[0].seek(0)
    resumed = Trainer(cell, runtime)
    resumed.load_state_dict(torch.load(states[0], weights_only=False))
    resumed.run()
    for a, b in zip(resumed.method.modules.buffers(), method.modules.buffers()):
        assert torch.equal(a, b)  # banks, their constants, the label table, BN statistics
    for a, b in zip(resumed.method.modules.parameters(), method.modules.parameters()):
        assert torch.equal(a, b)
