"""Damaged files are repaired, never fatal (issue 17): a finished teacher whose weights are deleted is trained again
into the very same file (SHA-256), a truncated one is moved aside and re-trained instead of failing its students,
and a garbage record is moved aside and its cell re-trained; each is one line, the run ends well."""
import yaml

from harness.results.store import ResultStore
from harness.suite.schema import load_suite
from harness.training.stages import stages_of
from tests.helpers import harness_main, tiny_suite_dict


def test_deleted_truncated_and_garbage_files_are_retrained(tmp_path, ray_address, capfd):
    def run(path, results, reports, address) -> str:
        code, out = harness_main(capfd, "run", path, "--results", results, "--reports", reports, address=address)
        assert code == 0, out
        return out

    path = tmp_path / "kd.yaml"
    path.write_text(yaml.safe_dump(tiny_suite_dict(seeds=[0], methods=["kd"])))
    (student,) = load_suite(path).cells
    teacher = stages_of(student)["teacher"].cell
    results, reports = tmp_path / "results", tmp_path / "reports"
    store = ResultStore(results)
    run(path, results, reports, ray_address)
    first = store.get(teacher.hash)["weights"]["sha256"]

    store.weights_path(teacher.hash).unlink()  # deleted: trained again, bit for bit
    out = run(path, results, reports, ray_address)
    assert "1 finished already, 1 to run" in out
    assert store.get(teacher.hash)["weights"]["sha256"] == first
    assert ResultStore(results).weights_intact(teacher.hash)

    weights = store.weights_path(teacher.hash)
    weights.write_bytes(weights.read_bytes()[:5000])  # truncated
    (results / "cells" / f"{student.hash}.json").write_text("[garbage")
    out = run(path, results, reports, ray_address)
    damaged = [line for line in out.splitlines() if "damaged" in line]
    assert len(damaged) == 2, out
    assert any("damaged weights" in line and "the stage runs again" in line for line in damaged)
    assert any("damaged result record (not JSON" in line for line in damaged)
    assert "0 finished already, 2 to run" in out and "Traceback" not in out
    assert store.get(student.hash)["status"] == "ok" and store.get(teacher.hash)["weights"]["sha256"] == first
    assert len(list((results / "weights").glob("*.damaged-*"))) == 1
    assert store.get(student.hash)["stages"]["teacher"]["sha256"] == first  # learnt from the re-trained one
