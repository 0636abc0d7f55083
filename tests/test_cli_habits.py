"""A CLI that fits a researcher's habits (issue 18): key=value overrides validated like the file and recorded in
every trial, a dry run that trains nothing, ``harness status`` from the store, a mistyped flag answered with the
flag meant, and the Python API a notebook uses."""
import json
import subprocess

import pytest

from harness.cli import main
from harness.suite.schema import SuiteError, load_suite
from tests.helpers import HARNESS, cli, harness_env

QUICKSTART = "suites/quickstart.yaml"


def test_overrides_select_methods_set_fields_and_are_validated_like_the_file():
    suite = load_suite(QUICKSTART, ["seeds=[0]", "methods=dml", "recipe.epochs=5", "dataset.train_per_class=10"])
    (cell,) = suite.cells
    assert (cell.method, cell.seed, cell.recipe["epochs"], cell.dataset["train_per_class"]) == ("dml", 0, 5, 10)
    assert cell.hparams["temperature"] == 1  # the suite's own entry, kept whole
    full = load_suite(QUICKSTART)
    assert cell.recipe == {**next(c for c in full.cells if c.method == "dml").recipe, "epochs": 5}
    assert suite.overrides == ["seeds=[0]", "methods=dml", "recipe.epochs=5", "dataset.train_per_class=10"]
    with pytest.raises(SuiteError) as bad:
        load_suite(QUICKSTART, ["recipe.epochs=0"])
    assert bad.value.lines == [f"{QUICKSTART}: recipe.epochs: Input should be greater than 0, got 0"]
    for override, words in (("methods=dmll", "no method entry 'dmll' (did you mean 'dml'?); valid: dml, ind"),
                            ("recipe.epochs", "not key=value"), ("seeds=[0", "the value is not YAML"),
                            ("seed=[0]", "seed: unknown key")):
        with pytest.raises(SuiteError) as bad:
            load_suite(QUICKSTART, [override])
        assert len(bad.value.lines) == 1 and words in bad.value.lines[0], bad.value.lines


def test_a_mistyped_flag_is_answered_with_the_flag_meant(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["run", QUICKSTART, "--no-dashbord"])
    assert stop.value.code == 2
    assert "unrecognized arguments: --no-dashbord; did you mean '--no-dashboard'?" in capsys.readouterr().err


def test_dry_run_then_an_overridden_run_then_its_status_and_frame(tmp_path, ray_address, capfd):
    """The run as a user types it (a subprocess); the dry run and the status, which start no Ray, through the CLI's
    own main in this process."""
    results, reports = tmp_path / "results", tmp_path / "reports"
    overrides = ["seeds=[0]", "methods=ind", "recipe.epochs=1", "dataset.train_per_class=10"]
    code, dry, err = cli(capfd, "run", QUICKSTART, *overrides, "--dry-run", "--results", results)
    assert code == 0, err
    (cell,) = load_suite(QUICKSTART, overrides).cells
    assert dry.splitlines()[:2] == [
        f"quickstart: 1 cells, 0 finished already, 1 to run (results in {results}); dry run: nothing trains",
        f"  ind cifar_resnet8+cifar_resnet8 seed 0 [{cell.hash}]"]
    assert "est. <0.1 GPU-h" in dry and not (results / "cells").exists() and not (results / "ray").exists()

    suite_file = QUICKSTART
    proc = subprocess.Popen(HARNESS + ["run", suite_file, *overrides, "--results", str(results), "--reports",
                                       str(reports), "--no-dashboard", "--num-cpus", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=harness_env(ray_address))
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out
    (record,) = [json.loads(p.read_text()) for p in (results / "cells").glob("*.json")]
    assert record["hash"] == cell.hash and record["overrides"] == overrides and record["status"] == "ok"

    def status(*extra) -> list[str]:
        code, out, err = cli(capfd, "status", suite_file, *extra, "--results", results)
        assert code == 0, err
        return out.splitlines()

    assert status(*overrides) == [f"quickstart: 1 of 1 cells finished, 0 training, 0 failed, 0 not started "
                                  f"(results in {results})"]
    lines = status()  # the suite as its file says: its cells are others (30 epochs, 30 images per class)
    assert lines[0].startswith("quickstart: 0 of 6 cells finished, 0 training, 0 failed, 6 not started"), lines
    assert len(lines) == 7 and all(line.startswith("  not started: ") for line in lines[1:])

    from harness import load_suite as api_load, results_frame

    frame = results_frame(api_load(suite_file, *overrides), results=str(results))
    assert set(frame["hash"]) == {cell.hash} and set(frame["value"]) == {"net1", "net2", "avg", "ens"}
    assert frame.loc[frame["value"] == "net1", "top1"].item() == record["last"]["net1"]["top1"]
