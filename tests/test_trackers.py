"""Experiment trackers (``harness run --log``, a suite's ``log:``): one real run logs a bundle of two stacked seeds to
W&B (offline), MLflow (a local SQLite store) and TensorBoard at once, and each is read back with its own reader,
nothing fetched from the internet; the rest in process, without Ray: a trial's cells as runs, the tags, the
defaults, and every refusal in one line."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import yaml

from tests.helpers import TINY_DATA, TINY_RECIPE, cli, harness_main, records, tiny_cell

TRACKER_ENV = ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_API_KEY", "MLFLOW_TRACKING_URI",
               "MLFLOW_EXPERIMENT_NAME")


@pytest.fixture(autouse=True)
def _no_tracker_environment(monkeypatch):
    """What a developer's shell may set for their own trackers does not reach these tests."""
    for name in TRACKER_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _trackers_as_they_were():
    """A test's plug-in trackers are forgotten after it."""
    from harness.tracking.trackers import TRACKERS

    before = dict(TRACKERS._entries)
    yield
    TRACKERS._entries.clear()
    TRACKERS._entries.update(before)


def tracked_suite(folder: Path, log, **more) -> Path:
    suite = {"name": "tracked", "dataset": TINY_DATA, "groups": [["cifar_resnet8", "cifar_resnet8"]],
             "methods": ["ind"], "seeds": [0, 1], "recipe": TINY_RECIPE,
             "resources": {"cpu": 1, "stack_seeds": True}, "log": log, **more}
    path = folder / "tracked.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------ readers
def wandb_records(path: Path):
    """The records of a W&B transaction log (``run-<id>.wandb``): LevelDB's log format (a 7-byte file header, then
    32 KiB blocks of chunks, each with a checksum, a length and a type: full, first, middle or last) around W&B's
    protobuf ``Record``s, read as `wandb sync` reads them."""
    from wandb.proto import wandb_internal_pb2

    data, position, chunks = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        left = 32768 - position % 32768
        if left < 7:  # a block's tail too short for a chunk header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunks += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # full, last
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def wandb_run(path: Path) -> dict:
    """An offline W&B run as logged: its run record, config, history rows by step and summary."""
    def values(items):
        return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}

    run, config, history, summary = None, {}, {}, {}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            config.update(values(record.run.config.update))
        elif kind == "config":
            config.update(values(record.config.update))
        elif kind == "history":
            row = values(record.history.item)
            history.setdefault(row["_step"], {}).update(row)
        elif kind == "summary":
            summary.update(values(record.summary.update))
    return {"run": run, "config": config, "history": history, "summary": summary}


# ------------------------------------------------------------------------------------------------ one real run
def test_one_run_logs_each_cell_of_a_seed_bundle_to_wandb_mlflow_and_tensorboard(tmp_path, ray_address, capfd):
    """Two seeds stacked in one trial are two runs in each tracker, each with its own cell's tags, every epoch of
    its own history (the first seed's as reported, the second's from its record) and its record's final numbers."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from harness.tracking.cell_runs import code_text

    path = tracked_suite(tmp_path, {"wandb": {"project": "okd-tests"}, "mlflow": {"experiment": "okd-tests"},
                                    "tensorboard": None})
    results = tmp_path / "results"
    code, out = harness_main(capfd, "run", path, "--results", results, "--reports", tmp_path / "reports",
                             "--log-offline", address=ray_address)
    assert code == 0, out
    assert f"upload them with: wandb sync {results / 'wandb'}/offline-run-*" in out
    final = records(results)
    assert len(final) == 2 and all(r["status"] == "ok" for r in final.values())
    version = code_text(next(iter(final.values()))["code"])

    def tags(record):
        cell = record["cell"]
        return {"suite": "tracked", "cell_hash": record["hash"], "method": "ind", "label": "ind",
                "group": "+".join(cell["group"]), "seed": str(cell["seed"]), "dataset": "fashion_mnist_mini",
                "code_version": version}

    def curve(record, key="top1/net1"):
        return {row["epoch"]: row[key] for row in record["history"]}

    # W&B, offline: one run per cell in the results folder, read from its transaction log
    runs = [wandb_run(p) for p in sorted((results / "wandb").glob("offline-run-*/run-*.wandb"))]
    by_hash = {r["config"]["cell_hash"]: r for r in runs}
    assert sorted(by_hash) == sorted(final)
    for cell_hash, record in final.items():
        run = by_hash[cell_hash]
        assert run["run"].project == "okd-tests" and run["run"].run_id.startswith(f"{cell_hash}-")
        assert run["run"].display_name == f"ind cifar_resnet8+cifar_resnet8 seed {record['seed']}"
        assert run["run"].run_group == "ind cifar_resnet8+cifar_resnet8"
        assert set(run["run"].tags) == {"tracked", "ind", "cifar_resnet8+cifar_resnet8", f"seed={record['seed']}"}
        assert {k: run["config"][k] for k in tags(record)} == {**tags(record), "seed": record["seed"]}
        assert run["config"]["status"] == "ok" and run["config"]["cell"]["recipe"]["epochs"] == 2
        assert {step: row["top1/net1"] for step, row in run["history"].items()} == curve(record)
        assert run["summary"]["final/top1/net1"] == record["last"]["net1"]["top1"]
        assert run["summary"]["best/top1/ens"] == record["best"]["ens"]["top1"]

    # MLflow: the suite's experiment in the SQLite store under the results folder
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    found = client.search_runs([client.get_experiment_by_name("okd-tests").experiment_id])
    by_hash = {r.data.tags["cell_hash"]: r for r in found}
    assert sorted(by_hash) == sorted(final)
    for cell_hash, record in final.items():
        run = by_hash[cell_hash]
        assert run.info.status == "FINISHED" and run.info.run_name.endswith(f"seed {record['seed']}")
        assert {k: run.data.tags[k] for k in tags(record)} == tags(record) and run.data.tags["status"] == "ok"
        assert run.data.tags["mlflow.source.git.commit"] == record["code"]["git_sha"]
        assert run.data.params["cell/recipe/epochs"] == "2"
        history = client.get_metric_history(run.info.run_id, "top1/net1")
        assert {m.step: m.value for m in history} == curve(record)
        assert run.data.metrics["final/top1/net2"] == record["last"]["net2"]["top1"]

    # TensorBoard: a folder of event files per cell, in place of Tune's own in the trial folders
    folders = sorted((results / "tensorboard" / "tracked").iterdir())
    assert [f.name.rsplit("_", 1)[1] for f in folders] == sorted(final, key=lambda h: final[h]["seed"])
    assert not list((results / "ray").rglob("events.out.tfevents*"))
    for folder in folders:
        record = final[folder.name.rsplit("_", 1)[1]]
        events = EventAccumulator(str(folder))
        events.Reload()
        assert {s.step: s.value for s in events.Scalars("loss/ce/net1")} == pytest.approx(curve(record, "loss/ce/net1"))
        assert {s.step: s.value for s in events.Scalars("top1/net1")} == pytest.approx(curve(record))
        assert [s.value for s in events.Scalars("final/top1/ens")] == pytest.approx([record["last"]["ens"]["top1"]])
        text = events.Tensors("cell/text_summary")[0].tensor_proto.string_val[0].decode()
        assert f"**cell_hash**: {record['hash']}" in text and f"**seed**: {record['seed']}" in text


# ------------------------------------------------------------------------------------------------ in process
class Recorded:
    """A tracker callback's calls, for :class:`CellRuns` without Ray."""

    def __init__(self, **kwargs):
        self.calls = []

    def on_experiment_end(self, trials, **info):
        self.calls.append(("experiment end",))


def recording_callback(cells, records):
    from harness.tracking.cell_runs import CellRuns

    class Callback(CellRuns, Recorded):
        def start_run(self, run):
            self.calls.append(("start", run.cell.seed, run.tags["cell_hash"]))

        def log_epoch(self, run, metrics):
            self.calls.append(("epoch", run.cell.seed, metrics["training_iteration"], metrics["top1/net1"]))

        def end_run(self, run, final):
            self.calls.append(("end", run.cell.seed, run.status, run.error, final.get("final/top1/net1")))

    class Tracker:
        suite, label = "s", "Fake"

    return Callback(Tracker(), lambda trial: (cells, {"git_sha": "f" * 40, "dirty": False}), records.get)


def test_a_bundles_reports_go_to_its_first_seed_while_every_seed_lives_and_each_run_ends_with_its_record():
    cells = [tiny_cell(seed=0), tiny_cell(seed=1)]
    history = {0: [{"epoch": 1, "top1/net1": 10.0}],
               1: [{"epoch": 1, "top1/net1": 11.0}, {"epoch": 2, "top1/net1": 12.0}]}
    records = {c.hash: {"history": history[c.seed], "last": {"net1": {"top1": history[c.seed][-1]["top1/net1"]}}}
               for c in cells}
    records[cells[0].hash].update(status="failed", error="NonFiniteLoss: loss is nan at epoch 2\nTraceback ...")
    records[cells[1].hash]["status"] = "ok"
    callback, trial = recording_callback(cells, records), object()
    callback.on_trial_start(0, [], trial)
    callback.on_trial_result(0, [], trial, {"epoch": 1, "top1/net1": 10.0, "stacked_seeds_alive": 2, "pid": 7})
    callback.on_trial_result(0, [], trial, {"epoch": 1, "top1/net1": 10.0, "stacked_seeds_alive": 2})  # a restart
    callback.on_trial_result(0, [], trial, {"epoch": 2, "top1/net1": 12.0, "stacked_seeds_alive": 1})  # seed 1's
    callback.on_trial_complete(0, [], trial)
    callback.on_experiment_end([])
    assert callback.calls == [
        ("start", 0, cells[0].hash), ("start", 1, cells[1].hash),
        ("epoch", 0, 1, 10.0),
        ("end", 0, "failed", "NonFiniteLoss: loss is nan at epoch 2", 10.0),
        ("epoch", 1, 1, 11.0), ("epoch", 1, 2, 12.0), ("end", 1, "ok", None, 12.0),
        ("experiment end",)]


def test_a_run_stopped_before_its_record_ends_interrupted_and_a_lone_cells_reports_are_its_own():
    cell = tiny_cell()
    callback, trial = recording_callback([cell], {}), object()
    callback.on_trial_result(0, [], trial, {"epoch": 1, "top1/net1": 3.0})  # no start seen: opened on its report
    callback.on_experiment_end([])
    assert callback.calls == [("start", 0, cell.hash), ("epoch", 0, 1, 3.0), ("end", 0, "interrupted", None, None),
                              ("experiment end",)]


def test_a_tracker_that_fails_says_so_once_and_the_training_goes_on(capsys):
    cell = tiny_cell()
    rows = [{"epoch": 1, "top1/net1": 1.0}, {"epoch": 2, "top1/net1": 2.0}]
    callback, trial = recording_callback([cell], {cell.hash: {"status": "ok", "history": rows}}), object()

    def unreachable(run, metrics):
        raise ConnectionError("mlflow.example:5000: connection refused\nretries exhausted")

    callback.log_epoch = unreachable
    callback.on_trial_result(0, [], trial, rows[0])
    callback.on_trial_complete(0, [], trial)
    assert capsys.readouterr().out.splitlines() == [
        "Fake: could not log dml cifar_resnet8+cifar_resnet8 seed 0 (ConnectionError: mlflow.example:5000: connection "
        "refused); training goes on, the records keep every number"]
    assert callback.failures == 2 and callback.calls[-1] == ("end", 0, "ok", None, None)


def test_the_tags_name_suite_hash_method_group_seed_and_code_version_and_the_final_numbers_are_the_records():
    from harness.tracking.cell_runs import final_numbers, run_tags

    cell = tiny_cell(seed=3)
    tags = run_tags(cell, "mine", {"git_sha": "0123456789abcdef" * 2, "dirty": True})
    assert tags == {"suite": "mine", "cell_hash": cell.hash, "method": "dml", "label": "dml",
                    "group": "cifar_resnet8+cifar_resnet8", "seed": "3", "dataset": "fashion_mnist_mini",
                    "code_version": "0123456789ab-dirty"}
    assert run_tags(cell, "mine", {"git_sha": None, "version": "0.1.0"})["code_version"] == "okd-harness 0.1.0"
    record = {"last": {"net1": {"top1": 50.0, "top5": 90.0}},
              "best": {"net1": {"top1": 55.0, "top5": 91.0, "epoch": 7}}, "wall_time_s": 12.5, "epochs": 10}
    assert final_numbers(record) == {"final/top1/net1": 50.0, "final/top5/net1": 90.0, "best/top1/net1": 55.0,
                                     "best/top5/net1": 91.0, "best/epoch/net1": 7, "final/wall_time_s": 12.5,
                                     "final/epochs": 10}


def test_the_defaults_follow_each_tools_own_variables_and_offline_keeps_mlflow_local(tmp_path, monkeypatch):
    from harness.tracking.trackers import chosen_trackers

    def chosen(log, names=None, offline=False):
        return {t.name: t for t in chosen_trackers(log, names, offline, "mysuite", tmp_path)}

    got = chosen({"wandb": {}, "mlflow": {}, "tensorboard": {}})
    assert (got["wandb"].project, got["wandb"].entity, got["wandb"].offline) == ("mysuite", None, False)
    assert got["wandb"].dir == tmp_path and got["tensorboard"].logdir == tmp_path / "tensorboard"
    assert (got["mlflow"].tracking_uri, got["mlflow"].experiment) == (f"sqlite:///{tmp_path}/mlflow.db", "mysuite")
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    got = chosen({"wandb": {}, "mlflow": {"experiment": "mine"}})
    assert (got["wandb"].project, got["wandb"].offline) == ("from-env", True)
    assert (got["mlflow"].tracking_uri, got["mlflow"].experiment) == ("http://mlflow.example:5000", "mine")
    assert chosen({"mlflow": {}}, offline=True)["mlflow"].tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert chosen({"wandb": {"project": "p"}}, ["wandb,tensorboard"])["wandb"].project == "p"  # the suite's settings
    assert set(chosen({"wandb": {}}, ["mlflow"])) == {"mlflow"} and chosen({"wandb": {}}, ["none"]) == {}


def test_a_suites_log_key_is_checked_one_line_per_mistake(tmp_path, capfd):
    path = tracked_suite(tmp_path, {"wandbb": {}, "mlflow": {"experimnt": "x"}, "tensorboard": {"offline": "maybe"}})
    code, _, err = cli(capfd, "validate", path)
    assert code == 2 and err.strip().splitlines() == [
        f"{path}: log: unknown tracker 'wandbb' (did you mean 'wandb'?); valid: mlflow, tensorboard, wandb",
        f"{path}: log.mlflow.experimnt: unknown key (did you mean 'experiment'?); valid keys: offline, tracking_uri, "
        "experiment",
        f"{path}: log.tensorboard.offline: Input should be a valid boolean, unable to interpret input, got 'maybe'"]
    code, _, err = cli(capfd, "validate", tracked_suite(tmp_path, 5))
    assert code == 2 and err.strip() == (f"{tmp_path / 'tracked.yaml'}: log: expected a tracker's name, a list of "
                                         "names, or a mapping of names to their settings (log: {wandb: {project: "
                                         "okd}}), got 5")
    code, out, _ = cli(capfd, "validate", tracked_suite(tmp_path, ["wandb", "tensorboard"]))
    assert code == 0 and "ok, 2 cells" in out


def test_run_refuses_an_unknown_tracker_a_missing_package_and_wandb_without_a_key_in_one_line(tmp_path, capfd,
                                                                                             monkeypatch):
    """Each before Ray starts or data is read."""
    from harness.tracking import trackers

    path = tracked_suite(tmp_path, None)
    results = tmp_path / "results"
    code, _, err = cli(capfd, "run", path, "--results", results, "--log", "mlflow,wandbb")
    assert code == 2 and err.strip() == ("error: --log: unknown tracker 'wandbb' (did you mean 'wandb'?); valid: "
                                         "mlflow, tensorboard, wandb (or none)")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no W&B settings: not logged in
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    code, _, err = cli(capfd, "run", path, "--results", results, "--log", "wandb")
    assert code == 2 and err.strip() == ("error: wandb tracker: no W&B API key here; run `wandb login`, set "
                                         "WANDB_API_KEY, or log offline (--log-offline) and `wandb sync` the runs "
                                         "later")
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None if name == "alembic" else real(name))
    code, _, err = cli(capfd, "run", tracked_suite(tmp_path, "mlflow"), "--results", results, "--log-offline")
    assert code == 2 and err.strip() == ('error: mlflow tracker: alembic is not installed here; '
                                         'pip install "okd-harness[mlflow]"')
    assert not results.exists()


def readme_tracker() -> str:
    """The documentation's example of a tracker of one's own (docs/guides/trackers.md), as it is printed there."""
    page = (Path(__file__).parents[1] / "docs" / "guides" / "trackers.md").read_text()
    return page.split("```python\n# my_tracker.py\n", 1)[1].split("```", 1)[0]


def test_the_readmes_own_tracker_from_an_installed_packages_entry_point_logs_each_cell_and_is_listed(
        tmp_path, monkeypatch, capfd):
    """A package with an ``okd_harness.trackers`` entry point (as `pip install` leaves it) holding the
    documentation's example: its tracker is valid in a suite's ``log:`` with its own settings, its callback writes each cell's epochs
    and final numbers with the cell's tags, and `harness list trackers` says where it comes from."""
    import importlib

    from harness import registry
    from harness.tracking.trackers import chosen_trackers

    package = tmp_path / "site" / "my_trackers"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "jsonl.py").write_text(readme_tracker())
    info = tmp_path / "site" / "my_trackers-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-trackers\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[okd_harness.trackers]\njsonl = my_trackers.jsonl\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    monkeypatch.setattr(registry, "_loaded_groups", set())
    from harness.suite.schema import load_suite

    lines = tmp_path / "runs.jsonl"
    suite = load_suite(tracked_suite(tmp_path, {"jsonl": {"path": str(lines)}}))
    assert suite.spec.log == {"jsonl": {"offline": False, "path": str(lines)}}
    [tracker] = chosen_trackers(suite.spec.log, None, False, suite.name, tmp_path)
    cell = suite.cells[0]
    record = {"status": "ok", "history": [{"epoch": 1, "top1/net1": 20.0}], "last": {"net1": {"top1": 20.0}}}
    callback = tracker.callback(lambda trial: ([cell], {"git_sha": None, "version": "0.1.0"}),
                                {cell.hash: record}.get)
    trial = object()
    callback.on_trial_start(0, [], trial)
    callback.on_trial_result(0, [], trial, {"epoch": 1, "top1/net1": 20.0, "time_total_s": 3.0})
    callback.on_trial_complete(0, [], trial)
    written = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [(w["cell_hash"], w["seed"], w["status"], w["training_iteration"]) for w in written] == [
        (cell.hash, "0", "running", 1), (cell.hash, "0", "ok", 1)]
    assert written[0]["top1/net1"] == 20.0 and "time_total_s" not in written[0]  # Tune's own keys left out
    assert written[1]["final/top1/net1"] == 20.0
    code, out, _ = cli(capfd, "list", "trackers")
    rows = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(("=", "-", " "))}
    assert code == 0 and {"jsonl", "mlflow", "tensorboard", "wandb"} <= set(rows)
    assert "plug-in my_trackers.jsonl" in rows["jsonl"] and "built in" in rows["wandb"]
