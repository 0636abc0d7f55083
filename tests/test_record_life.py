"""One record life for every way a trial trains: a cell alone, stacked seeds (one of which fails alone), and a
cell whose training raises; each record is decided once and written once, with what it ran on."""
from __future__ import annotations

import dataclasses

import pytest

from harness.results.store import ResultStore
from harness.scheduling.trainable import _train
from harness.scheduling.trial import Parallel, TrialConfig
from harness.training.engine import Runtime
from harness.training.parallel import Replicas
from tests.helpers import tiny_cell

pytestmark = pytest.mark.usefixtures("one_thread")


def _trial(cells, results) -> TrialConfig:
    return TrialConfig(tuple(cells), Runtime(device="cpu"), str(results), {"commit": "test"}, Parallel())


def _run(trial: TrialConfig, reports: list) -> None:
    _train(trial, Replicas(), 1, 0, "trial-1", None, lambda loop, metrics: reports.append(metrics["epoch"]))


def test_stacked_seeds_write_a_record_each_and_a_seed_that_fails_fails_alone(tmp_path, monkeypatch):
    from harness.training.bundle import SeedBundle

    cells = [tiny_cell("ind", seed=s, epochs=2) for s in (0, 1)]
    step = SeedBundle.train_step

    def poisoned(self, batches, at):  # seed 1's loss is NaN from its first step
        terms = step(self, batches, at)
        if 1 in terms:
            terms[1] = {name: value * float("nan") for name, value in terms[1].items()}
        return terms

    monkeypatch.setattr(SeedBundle, "train_step", poisoned)
    reports: list = []
    _run(_trial(cells, tmp_path), reports)
    store = ResultStore(tmp_path)
    ok, failed = store.get(cells[0].hash), store.get(cells[1].hash)
    assert reports == [1, 2]
    assert ok["status"] == "ok" and ok["epochs"] == 2 and store.has_weights(cells[0].hash)
    assert ok["parallel"]["stacked_seeds"] == 2 and ok["hardware"]["gpu_share"] == 0 and ok["data"]["checksum"]
    assert ok["weights"]["sha256"] and ok["costs"]["train_forward_macs_per_image"] > 0
    assert failed["status"] == "failed" and "NonFiniteLoss" in failed["error"] and "epoch 1" in failed["error"]
    assert failed["history"] == [] and not store.has_weights(cells[1].hash)
    assert ok["trial"] == failed["trial"] == "trial-1" and ok["finished"] and failed["wall_time_s"] >= 0


def test_a_cell_whose_training_raises_is_recorded_failed_with_its_traceback_and_not_raised(tmp_path, monkeypatch):
    from harness.training.engine import Trainer

    def broken(self, batch, step):
        raise RuntimeError("the method broke")

    monkeypatch.setattr(Trainer, "train_step", broken)
    cell = tiny_cell("dml", seed=3)
    _run(dataclasses.replace(_trial([cell], tmp_path), attempt="a1", overrides=("seeds=[3]",)), [])
    record = ResultStore(tmp_path).get(cell.hash)
    assert record["status"] == "failed" and record["error"] == "RuntimeError: the method broke"
    assert "Traceback" in record["traceback"] and "the method broke" in record["traceback"]
    assert record["attempt"] == "a1" and record["overrides"] == ["seeds=[3]"] and "stacked_seeds" not in record["parallel"]
    assert record["parallel"]["workers"] == 1 and record["data"]["checksum"]


def test_a_record_is_decided_once(tmp_path):
    from harness.scheduling.record import CellRecord, recorded

    cell = tiny_cell()
    record = CellRecord(cell, _trial([cell], tmp_path), "t", {})
    record.fail("first")
    record.fail("second")
    assert record.fields["error"] == "first"
    store = ResultStore(tmp_path)
    with pytest.raises(ValueError), recorded(store, [record], raises=lambda e: isinstance(e, ValueError)):
        raise ValueError("re-raised, as a data-parallel worker's failure is")
    assert store.get(cell.hash)["error"] == "first"  # written on the way out, as it was decided
