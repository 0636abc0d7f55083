"""harness doctor: one PASS/FAIL/SKIP line per check, what a CPU cannot check named, exit 1 on a failure."""
import math

import torch

from harness import doctor
from tests.helpers import cli


def test_on_this_cpu_it_runs_what_a_cpu_allows_and_names_what_it_skipped(capfd, monkeypatch):
    precisions = []

    def every_method(device, precision, results, methods=None):  # checked below on two methods
        precisions.append((device.type, precision))
        return doctor.Outcome("PASS", f"a training step of every method on {device.type}, {precision}")

    monkeypatch.setattr(doctor, "check_every_method", every_method)
    code, out, err = cli(capfd, "doctor")
    lines = out.strip().splitlines()
    assert code == 0 and "Traceback" not in out + err, out + err
    assert lines[0].startswith("harness doctor: torch ") and "no CUDA device" in lines[0]
    assert precisions == [("cpu", "fp32"), ("cpu", "bf16"), ("cpu", "fp16")]
    status = {line.split("  ", 1)[1].split(":")[0]: line.split()[0] for line in lines[1:-1]}
    assert status["a trial without a GPU trains on the CPU"] == "PASS"
    assert status["re-training under resources.deterministic on cpu"] == "PASS"
    assert status["stacked peers equal separate ones on cpu"] == "PASS"
    assert status["data-parallel cells on 2 CPU workers, gloo equal one process"] == "PASS"
    assert status["no host sync in the fast path's steps"] == status["harness bench of the ResNet-32 pair"] \
        == "SKIP"
    assert all("needs a GPU" in line or "needs 2 GPUs" in line for line in lines if line.startswith("SKIP"))
    assert lines[-1].startswith("7 passed, 0 failed, 3 skipped in ")


def test_a_step_of_each_method_passes_and_a_non_finite_loss_fails_naming_the_method(tmp_path, monkeypatch):
    """KD trains its teacher stage first; fp16 goes through the CPU's gradient scaler."""
    outcome = doctor.check_every_method(torch.device("cpu"), "fp16", tmp_path, methods=["dml", "kd"])
    assert outcome.status == "PASS" and outcome.detail == "2 methods, finite losses", outcome
    from methods.dml import DML

    real = DML.train_step
    monkeypatch.setattr(DML, "train_step", lambda self, batch, step: {
        name: value * math.nan for name, value in real(self, batch, step).items()})
    outcome = doctor.check_every_method(torch.device("cpu"), "fp32", tmp_path, methods=["dml", "ind"])
    assert outcome.status == "FAIL" and outcome.detail.startswith("1 of 2: dml: ce/net1 not finite"), outcome


def test_a_check_that_breaks_is_a_fail_line_and_exit_1(capfd, monkeypatch):
    def broken(*args, **kwargs):
        """stacked peers equal separate ones"""
        raise RuntimeError("Expected all tensors to be on the same device, but found at least two devices")

    monkeypatch.setattr(doctor, "check_every_method", lambda *a, **k: doctor.Outcome("PASS", "every method"))
    monkeypatch.setattr(doctor, "check_stacked_peers", broken)
    code, out, _ = cli(capfd, "doctor")
    assert code == 1
    assert "FAIL  stacked peers equal separate ones: RuntimeError: Expected all tensors to be on the same device" in out
    assert out.strip().splitlines()[-1].startswith("6 passed, 1 failed, 3 skipped")


def test_the_data_parallel_check_fails_where_the_workers_do_not_train_as_one_process(monkeypatch):
    """The doctor's data-parallel check, run here on gloo as on a CPU machine (on 2 GPUs it is the same code on
    NCCL, with a SyncBN cell): it fails where the workers' update is not one process's, here with the workers'
    gradient reduction turned off (each worker then follows its own half of every batch)."""
    from harness.training import engine

    monkeypatch.setattr(engine, "reduce_gradients", lambda method: None)
    monkeypatch.setattr(engine.SharedStep, "_average", lambda self, params, divisor, over_workers=True: None)
    outcome = doctor.check_data_parallel("cpu", "gloo")
    assert outcome.status == "FAIL" and outcome.detail.startswith("largest weight difference"), outcome
