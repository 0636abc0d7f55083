"""Stages: a teacher is a cell of its own, trained once before the students that need it, cached by hash,
checked when loaded, and named in every student's record."""
import json
import math

import pytest
import torch
import yaml

from harness.config.cell import Cell
from harness.results.store import ResultStore
from harness.results.weights import load_networks, save_networks
from harness.suite.schema import SuiteError, load_suite
from harness.training.engine import Runtime, Trainer
from harness.training.stages import StageError, stages_of, waves
from tests.helpers import harness_main, records, TINY_RECIPE, tiny_suite_dict, train_stages

DATA = {"name": "fashion_mnist_mini", "train_per_class": 6, "test_per_class": 5}


def kd_cell(seed=0, **hparams) -> Cell:
    return Cell(method="kd", hparams=hparams, group=("cifar_resnet14", "cifar_resnet8"), dataset=DATA,
                recipe=TINY_RECIPE, seed=seed, label="kd")


def test_two_students_share_one_teacher_which_runs_first():
    students = [kd_cell(seed=0), kd_cell(seed=1)]
    plan = waves(students)
    assert len(plan) == 2 and len(plan[0]) == 1 and {c.hash for c in plan[1]} == {c.hash for c in students}
    teacher = plan[0][0]
    assert teacher.method == "ind" and teacher.group == ("cifar_resnet14",) and teacher.seed == 0
    assert teacher.recipe == TINY_RECIPE and teacher.dataset == DATA
    # with teacher_seed null every student seed gets its own teacher
    own = waves([kd_cell(seed=0, teacher_seed=None), kd_cell(seed=1, teacher_seed=None)])
    assert sorted(c.seed for c in own[0]) == [0, 1]


def test_a_changed_teacher_recipe_changes_both_hashes():
    base = kd_cell()
    other = kd_cell(teacher_recipe={"base": "quickstart", "epochs": 3})
    t_base, t_other = stages_of(base)["teacher"].cell, stages_of(other)["teacher"].cell
    assert t_base.hash != t_other.hash and t_other.recipe["epochs"] == 3
    assert base.hash != other.hash  # the student's hash covers what defines its teacher
    # the teacher of a KD cell is the same cell as Ind of that one network: trained once for both
    ind = Cell(method="ind", hparams={}, group=("cifar_resnet14",), dataset=DATA, recipe=TINY_RECIPE, seed=0)
    assert t_base.hash == ind.hash


def test_stop_epoch_keeps_the_schedule_and_stops(tmp_path):
    full = Cell(method="ind", hparams={}, group=("cifar_resnet8",), dataset=DATA,
                recipe={**TINY_RECIPE, "epochs": 4}, seed=0)
    stopped = Cell(**{**full.to_dict(), "group": full.group, "stop_epoch": 2})
    assert stopped.hash != full.hash and "stop_epoch" not in full.identity()
    a, b = Trainer(full), Trainer(stopped)
    a.run()
    b.run()
    assert len(b.history) == 2 and len(a.history) == 4
    assert b.history[1] == {**a.history[1], **{k: b.history[1][k] for k in ("images_per_s", "train_time_s")}}
    lr_after_two = a.history[2]["lr/net1"]
    assert b.schedulers["peers"].get_last_lr()[0] == pytest.approx(lr_after_two)  # a snapshot, not compressed
    # ESKD-style: a student of a teacher stopped at epoch 1
    assert stages_of(kd_cell(teacher_stop_epoch=1))["teacher"].cell.stop_epoch == 1


def test_weights_round_trip_and_clear_errors(tmp_path):
    cell = Cell(method="ind", hparams={}, group=("cifar_resnet8",), dataset=DATA, recipe=TINY_RECIPE, seed=0)
    trainer = Trainer(cell)
    path = tmp_path / "w.pt"
    digest = save_networks(path, cell, trainer.method.deployed_networks(), 10, 1)
    (net,), provenance = load_networks(path, ("cifar_resnet8",), digest, 10, 1)
    assert provenance["sha256"] == digest and provenance["cell_hash"] == cell.hash
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    for a, b in zip(net.state_dict().values(), trainer.method.peers[0].state_dict().values()):
        assert torch.equal(a, b)

    with pytest.raises(StageError, match=r"w\.pt: SHA-256 is [0-9a-f]{64}, but the suite expects 00"):
        load_networks(path, ("cifar_resnet8",), "00" * 32)
    with pytest.raises(StageError, match=r"holds \['cifar_resnet8'\], but the stage needs \['cifar_resnet14'\]"):
        load_networks(path, ("cifar_resnet14",))
    with pytest.raises(StageError, match="trained for 10 classes, the cell's dataset has 100"):
        load_networks(path, ("cifar_resnet8",), num_classes=100)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(StageError) as info:
        load_networks(corrupt, ("cifar_resnet8",))
    assert str(info.value).startswith(f"{corrupt}: unreadable checkpoint") and "\n" not in str(info.value)
    with pytest.raises(StageError, match="stage weights not found"):
        load_networks(tmp_path / "absent.pt")

    # a plain state_dict, as other code bases save teachers ({"model": state_dict}), loads by the stage's name
    plain = tmp_path / "plain.pth"
    torch.save({"model": {f"module.{k}": v for k, v in trainer.method.peers[0].state_dict().items()}}, plain)
    (net2,), _ = load_networks(plain, ("cifar_resnet8",), num_classes=10, in_chans=1)
    assert all(torch.equal(a, b) for a, b in zip(net2.state_dict().values(), net.state_dict().values()))


def test_student_of_a_corrupt_teacher_fails_in_one_line(tmp_path):
    cell = kd_cell()
    runtime = train_stages(cell, tmp_path)
    teacher = ResultStore(tmp_path).weights_path(stages_of(cell)["teacher"].cell.hash)
    teacher.write_bytes(b"not a checkpoint")
    with pytest.raises(StageError, match=rf"^{teacher}: unreadable checkpoint"):
        Trainer(cell, runtime)


def test_user_checkpoint_is_checked_at_validation(write_suite, tmp_path):
    raw = tiny_suite_dict(groups=[["cifar_resnet14", "cifar_resnet8"]],
                          methods=[{"name": "kd", "teacher_checkpoint": str(tmp_path / "missing.pth")}])
    with pytest.raises(SuiteError) as info:
        load_suite(write_suite(raw))
    assert any("methods[0].teacher_checkpoint" in line and "missing.pth" in line and "no such file" in line
               for line in info.value.lines)


def test_teacher_trained_once_for_two_students_through_ray_its_damaged_files_repaired(tmp_path, ray_address, capfd):
    """Real Ray: stage 1 trains the teacher, stage 2 both students; each record names the teacher; a re-run
    trains nothing.  Damaged files are repaired, never fatal (issue 17): the teacher's weights deleted are trained
    again into the very same file (SHA-256); truncated, they are moved aside and trained again instead of failing
    the students, and a garbage student record is moved aside and its cell trained again; each is one line, the run
    ends well.  Last, a changed teacher recipe trains a new teacher."""
    suite = tiny_suite_dict(groups=[["cifar_resnet14", "cifar_resnet8"]], methods=["kd"], seeds=[0, 1],
                            dataset=DATA)
    path = tmp_path / "kd.yaml"
    path.write_text(yaml.safe_dump(suite))
    results, reports = tmp_path / "results", tmp_path / "reports"

    def run() -> str:
        code, out = harness_main(capfd, "run", path, "--results", results, "--reports", reports,
                                 address=ray_address)
        assert code == 0, out
        return out

    out = run()
    assert "2 cells + 1 stage cells (teachers), 0 finished already, 3 to run" in out, out
    assert "stage 1 of 2: 1 cell(s)" in out and "stage 2 of 2: 2 cell(s)" in out
    found = records(results)
    teachers = [r for r in found.values() if r["cell"]["method"] == "ind"]
    students = [r for r in found.values() if r["cell"]["method"] == "kd"]
    assert len(teachers) == 1 and len(students) == 2 and all(r["status"] == "ok" for r in found.values())
    teacher = teachers[0]
    weights = results / teacher["weights"]["file"]
    assert weights.is_file() and teacher["weights"]["sha256"] == json.loads(json.dumps(teacher))["weights"]["sha256"]
    for student in students:
        assert student["stages"]["teacher"]["cell_hash"] == teacher["hash"]
        assert student["stages"]["teacher"]["sha256"] == teacher["weights"]["sha256"]
        assert math.isclose(student["last"]["teacher"]["top1"], teacher["last"]["net1"]["top1"])
        assert student["params"]["frozen"] == {"teacher": teacher["params"]["deployed"]}
    md = (reports / "tiny.md").read_text()
    assert "| cifar_resnet14+cifar_resnet8 |" in md and "teacher" not in md.split("<details>")[0]  # a stage is not a row of the table
    csv = (reports / "tiny.csv").read_text()
    assert csv.count(f"teacher={teacher['hash']}") == 8  # 2 students × 4 values: each number names its teacher

    again = run()
    assert "3 finished already, 0 to run" in again, again

    store, first = ResultStore(results), teacher["weights"]["sha256"]
    store.weights_path(teacher["hash"]).unlink()  # deleted: trained again, bit for bit
    out = run()
    assert "2 finished already, 1 to run" in out, out
    assert store.get(teacher["hash"])["weights"]["sha256"] == first and store.weights_intact(teacher["hash"])

    weights = store.weights_path(teacher["hash"])
    weights.write_bytes(weights.read_bytes()[:5000])  # truncated
    garbled = students[0]["hash"]
    (results / "cells" / f"{garbled}.json").write_text("[garbage")
    out = run()
    damaged = [line for line in out.splitlines() if "damaged" in line]
    assert len(damaged) == 2, out
    assert any("damaged weights" in line and "the stage runs again" in line for line in damaged)
    assert any("damaged result record (not JSON" in line for line in damaged)
    assert "1 finished already, 2 to run" in out and "Traceback" not in out, out
    assert store.get(garbled)["status"] == "ok" and store.get(teacher["hash"])["weights"]["sha256"] == first
    assert len(list((results / "weights").glob("*.damaged-*"))) == 1
    assert store.get(garbled)["stages"]["teacher"]["sha256"] == first  # learnt from the re-trained one

    suite["methods"] = [{"name": "kd", "teacher_recipe": {**TINY_RECIPE, "epochs": 1}}]
    path.write_text(yaml.safe_dump(suite))
    third = run()
    assert "2 cells + 1 stage cells (teachers), 0 finished already, 3 to run" in third, third
    assert len([r for r in records(results).values() if r["cell"]["method"] == "ind"]) == 2


def test_a_teacher_from_a_url_is_downloaded_once_checked_and_recorded(tmp_path, http_folder, monkeypatch,
                                                                     write_suite):
    """A RepDistiller-style teacher file ({"model": state_dict}) served over HTTP: the suite must give its SHA-256
    (one line otherwise); the student loads it from the cache, the provenance keeps the URL and the hash; a file
    whose hash does not match is one line and is not kept."""
    import timm

    from harness.results.weights import file_sha256

    folder, base = http_folder
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    teacher = timm.create_model("cifar_resnet14", num_classes=10, in_chans=1)
    torch.save({"model": teacher.state_dict(), "epoch": 240}, folder / "resnet14.pth")
    digest = file_sha256(folder / "resnet14.pth")
    url = f"{base}/resnet14.pth"
    raw = tiny_suite_dict(groups=[["cifar_resnet14", "cifar_resnet8"]], dataset=DATA,
                          methods=[{"name": "kd", "teacher_checkpoint": url}])
    with pytest.raises(SuiteError) as info:
        load_suite(write_suite(raw))
    assert any("teacher_checkpoint: a teacher from a URL needs its SHA-256" in line for line in info.value.lines)
    raw["methods"][0]["teacher_sha256"] = digest
    cell = load_suite(write_suite(raw)).cells[0]
    trainer = Trainer(cell, Runtime(device="cpu", results=str(tmp_path / "results")))
    provenance = trainer.stage_provenance["teacher"]
    assert provenance["url"] == url and provenance["sha256"] == digest
    assert (tmp_path / "cache" / "teachers" / f"{digest}.pt").is_file()
    loaded = trainer.method.modules["teacher"]
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), teacher.state_dict().values()))
    (folder / "other.pth").write_bytes(b"not the teacher")
    bad = {**raw, "methods": [{"name": "kd", "teacher_checkpoint": f"{base}/other.pth", "teacher_sha256": "0" * 64}]}
    with pytest.raises(StageError) as info:
        Trainer(load_suite(write_suite(bad)).cells[0], Runtime(device="cpu", results=str(tmp_path / "results")))
    assert "\n" not in str(info.value) and "was not kept" in str(info.value)
    assert not list((tmp_path / "cache" / "teachers").glob("0000*")) and not list(
        (tmp_path / "cache" / "teachers").glob("*.part"))
