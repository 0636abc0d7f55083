"""--smoke scales any suite down and says so; the stand-in dataset replaces one that is absent."""
from harness.suite.schema import load_suite
from harness.suite.smoke import smoke_suite
from harness.training.engine import Trainer
from tests.helpers import tiny_suite_dict


def test_smoke_of_a_cifar_suite_without_cifar(write_suite, monkeypatch):
    monkeypatch.delenv("HARNESS_DATA_ROOT", raising=False)
    raw = tiny_suite_dict(dataset={"name": "cifar100"}, recipe="tsb_cifar",
                          groups=[["cifar_resnet8", "cifar_resnet8"]], paper_table={"name": "tsb_table1_cifar100"})
    suite = load_suite(write_suite(raw))
    smoke = smoke_suite(suite, data_root=None)
    assert smoke.name == "tiny_smoke" and "SMOKE RUN" in smoke.spec.title and "in place of cifar100" in smoke.spec.title
    first_seed = [c for c in suite.cells if c.seed == 0]
    assert len(smoke.cells) == len(first_seed) == len(suite.cells) // 2 and smoke.spec.seeds == [0]
    for original, cell in zip(first_seed, smoke.cells):
        assert cell.recipe["epochs"] == 2 and cell.dataset["name"] == "fashion_mnist_mini"
        assert cell.recipe["batch_size"] == 8 and cell.recipe["lr_scaling"] == "linear"  # lr × 8 / the paper's batch
        assert cell.recipe["reference_batch_size"] == original.recipe["batch_size"]
        assert (cell.method, cell.hparams, cell.group, cell.seed) == (original.method, original.hparams,
                                                                      original.group, original.seed)
        assert cell.hash != original.hash
    assert smoke.spec.dataset.name == "fashion_mnist_mini"
    Trainer(smoke.cells[0])  # builds: the scaled-down cell is a valid cell


def test_smoke_keeps_a_dataset_that_is_present(write_suite):
    smoke = smoke_suite(load_suite(write_suite(tiny_suite_dict())))
    assert smoke.cells[0].dataset["name"] == "fashion_mnist_mini"
    assert smoke.cells[0].dataset["train_per_class"] == 20 and "in place of" not in smoke.spec.title


def test_smoke_teachers_follow_the_smoke_recipe(write_suite):
    from harness.training.stages import stages_of

    raw = tiny_suite_dict(groups=[["cifar_resnet14", "cifar_resnet8"]],
                          methods=[{"name": "kd", "teacher_recipe": "tsb_cifar", "teacher_stop_epoch": 65}])
    suite = load_suite(write_suite(raw))
    assert stages_of(suite.cells[0])["teacher"].cell.recipe["epochs"] == 240
    teacher = stages_of(smoke_suite(suite).cells[0])["teacher"].cell
    assert teacher.recipe["epochs"] == 2 and teacher.stop_epoch == 1


def test_a_gpu_suite_without_a_gpu(write_suite, tmp_path, ray_address, capfd):
    """--smoke trains a GPU suite on the CPU; a full run says in one line why it cannot start, instead of waiting."""
    from tests.helpers import harness_main

    path = write_suite(tiny_suite_dict(resources={"cpu": 4, "gpu": 0.5}))
    resources = smoke_suite(load_suite(path)).spec.resources
    assert (resources.cpu, resources.gpu, resources.replicas) == (1, 0, 1)
    path = write_suite(tiny_suite_dict(resources={"cpu": 1, "gpu": 0.5}))
    code, out = harness_main(capfd, "run", path, "--results", tmp_path / "r", "--reports", tmp_path / "rep",
                             address=ray_address)
    assert code == 2, out
    assert out.strip().splitlines()[-1].endswith(
        "resources.gpu: a trial needs 0.5 GPU(s) but the Ray cluster has 0; run on a machine or cluster that has "
        "them, pass --num-gpus, or use --smoke (which trains on the CPU when there is no GPU)")


def test_smoke_caps_held_out_images_and_earlier_phases(write_suite):
    raw = tiny_suite_dict(methods=[{"name": "kdcl", "target": "general", "val_per_class": 50}])
    (cell, *_) = smoke_suite(load_suite(write_suite(raw))).cells
    assert cell.hparams["val_per_class"] == 5
    Trainer(cell)  # 5 of 20 images per class held out: the split exists


def test_smoke_caps_warm_ups_and_fails_a_term_never_exercised(write_suite):
    """TSB's 20-epoch KL warm-up and ONE's 80-epoch ramp-up end inside the 2 smoke epochs; a cell whose loss term
    stays zero on every step (the warm-up not capped) fails under require_every_term, naming the terms."""
    from dataclasses import replace

    import pytest

    from harness.training.engine import Runtime, UnexercisedTerm

    raw = tiny_suite_dict(methods=["tsb", "one", "dml_at"], seeds=[0], recipe="tsb_cifar",
                          dataset={"name": "fashion_mnist_mini", "train_per_class": 4, "test_per_class": 2})
    suite = load_suite(write_suite(raw))
    smoke = {c.method: c for c in smoke_suite(suite).cells}
    assert {c.method: c.hparams.get("warmup_epochs", c.hparams.get("rampup_epochs")) for c in suite.cells} == \
        {"tsb": 20, "one": 80.0, "dml_at": 0}
    assert (smoke["tsb"].hparams["warmup_epochs"], smoke["one"].hparams["rampup_epochs"],
            smoke["dml_at"].hparams["warmup_epochs"]) == (1, 1, 0)
    strict = Runtime(require_every_term=True)
    history = Trainer(smoke["tsb"], strict)
    history.run()  # every term on in the second epoch
    assert history.history[-1]["loss/ta/net1"] > 0 and history.history[0]["loss/ta/net1"] == 0
    uncapped = replace(smoke["tsb"], hparams={**smoke["tsb"].hparams, "warmup_epochs": 20})
    with pytest.raises(UnexercisedTerm, match=r"loss term\(s\) .*ta/net1.* were zero on every step of its 2 epochs"):
        Trainer(uncapped, strict).run()
    Trainer(uncapped).run()  # outside --smoke the same cell is not refused
