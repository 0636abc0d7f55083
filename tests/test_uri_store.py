"""Results on storage named by a URI (issue 16): records, weights and Ray's checkpoints through pyarrow's
filesystems, on a ``file://`` URI and on a fake S3 (moto's server, a real HTTP endpoint that pyarrow's S3 client
talks to), with the store's guarantees: whole writes, missing files as None, resume from a checkpoint."""
import json
import logging
import os
import re
import signal
import time

import pyarrow.fs as pafs
import pytest
import yaml

from harness.cli import main
from harness.results.location import Location, StorageError
from harness.results.store import ResultStore
from harness.suite.schema import load_suite
from tests.helpers import harness_run, tiny_suite_dict

AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per HTTP request otherwise
    saved = {k: os.environ.get(k) for k in AWS}
    os.environ.update(AWS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    admin, _ = pafs.FileSystem.from_uri(f"s3://x?endpoint_override={endpoint}&scheme=http&allow_bucket_creation=true")
    admin.create_dir("results-bucket")
    yield endpoint
    server.stop()
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def s3_uri(endpoint: str, prefix: str) -> str:
    return f"s3://results-bucket/{prefix}?endpoint_override={endpoint}&scheme=http&region=us-east-1"


@pytest.fixture(params=["file", "s3"])
def location(request, tmp_path):
    if request.param == "file":
        return Location(f"file://{tmp_path}/store")
    return Location(s3_uri(request.getfixturevalue("s3_endpoint"), f"unit-{time.time_ns()}"))


def test_location_reads_writes_lists_and_deletes(location):
    assert location.read_bytes("cells/none.json") is None and not location.is_file("cells/none.json")
    location.write_bytes("cells/a.json", b'{"v": 1}')
    location.write_bytes("cells/a.json", b'{"v": 2}')  # replaced whole
    assert location.read_bytes("cells/a.json") == b'{"v": 2}' and location.is_file("cells/a.json")
    for trial in ("exp1/abc_dml_s0", "exp2/abc_dml_s0", "exp2/xyz_ind_s0"):
        for n in (1, 2):
            location.write_bytes(f"ray/{trial}/checkpoint_00000{n}/state.pt", b"x" * n)
    found = sorted(e.path for e in location.glob("ray/*/*abc*/checkpoint_*/state.pt"))
    assert found == [f"ray/exp{e}/abc_dml_s0/checkpoint_00000{n}/state.pt" for e in (1, 2) for n in (1, 2)]
    assert {e.size for e in location.glob("ray/exp1/*/checkpoint_*/state.pt")} == {1, 2}
    location.delete_dir("ray/exp2/abc_dml_s0")
    assert [e.path for e in location.glob("ray/exp2/*")] == ["ray/exp2/xyz_ind_s0"]
    # no temporary file or object is left next to what was written
    everything = [e.path for e in location.entries("", recursive=True)]
    assert everything and not [p for p in everything if p.endswith(".tmp")]


def test_file_uri_is_the_local_folder(tmp_path):
    store = ResultStore(f"file://{tmp_path}/r")
    store.put({"hash": "abcd", "status": "ok"})
    assert store.root == tmp_path / "r" and store.uri == str(tmp_path / "r")
    assert json.loads((tmp_path / "r" / "cells" / "abcd.json").read_text()) == {"hash": "abcd", "status": "ok"}


def test_store_round_trip_on_s3(s3_endpoint, tmp_path):
    store = ResultStore(s3_uri(s3_endpoint, "roundtrip"))
    assert store.root is None and store.get("aaaa") is None
    store.put({"hash": "aaaa", "status": "ok", "top1": 50.0})
    store.put({"hash": "aaaa", "status": "failed", "error": "late"})  # never replaces a finished record
    assert store.get("aaaa") == {"hash": "aaaa", "status": "ok", "top1": 50.0}
    assert [e.path for e in store.record_entries()] == ["cells/aaaa.json"]

    def write(path):
        path.write_bytes(b"networks")
        return "digest"

    assert store.save_weights("aaaa", write) == ("weights/aaaa.pt", "digest") and store.has_weights("aaaa")
    assert store.weights_file("aaaa").read_bytes() == b"networks"
    store.location.write_bytes("ray/e/aaaa_x/checkpoint_000000/state.pt", b"old")
    time.sleep(1.1)  # S3 modification times have a resolution of one second
    store.location.write_bytes("ray/e/aaaa_x/checkpoint_000001/state.pt", b"new")
    assert [e.path.split("/")[3] for e in store.checkpoints("aaaa", "state.pt")] == ["checkpoint_000001",
                                                                                     "checkpoint_000000"]
    assert store.prune_checkpoints(["aaaa"]) == (2, 6) and store.checkpoints("aaaa", "state.pt") == []
    from harness.training.stages import StageError

    with pytest.raises(StageError, match="weights/bbbb.pt: stage weights not found"):
        store.weights_file("bbbb")


def test_unusable_uris_are_one_line(s3_endpoint, capsys, write_suite):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        ResultStore(f"s3://no-such-bucket/x?endpoint_override={s3_endpoint}&scheme=http")
    path = write_suite(tiny_suite_dict())
    assert main(["report", str(path), "--results", "nosuchscheme://x/y"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nosuchscheme://x/y: not a storage URI" in err


@pytest.mark.e2e  # its own Ray instance: the first run is killed with the Ray it started
def test_a_suite_runs_resumes_and_reports_on_s3(s3_endpoint, tmp_path):
    """``harness run --results s3://…``: a teacher stage and its student (weights uploaded, then downloaded by the
    student's trial), killed mid-run and resumed from the checkpoint Ray left in the bucket."""
    suite = tiny_suite_dict(seeds=[0], methods=["kd"])
    suite["recipe"] = {**suite["recipe"], "epochs": 4}
    path = tmp_path / "s3suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    uri = s3_uri(s3_endpoint, "e2e")
    store, reports = ResultStore(uri), tmp_path / "reports"
    (student,) = load_suite(path).cells

    first = harness_run(path, uri, reports, start_new_session=True)  # the AWS variables: set by s3_endpoint
    deadline = time.time() + 300
    while not store.checkpoints(student.hash, "state.pt"):
        assert first.poll() is None, first.stdout.read()
        assert time.time() < deadline, "no checkpoint reached the bucket in 5 minutes"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray it started
    first.wait()

    second = harness_run(path, uri, reports)
    out, _ = second.communicate(timeout=400)
    assert second.returncode == 0, out
    assert re.search(r"resumed .* from epoch \d", out), out
    entries = [e.path for e in store.record_entries()]
    assert len(entries) == 2, entries  # the teacher and the student
    records = [store.get(p.split("/")[1].removesuffix(".json")) for p in entries]
    assert all(r["status"] == "ok" and len(r["history"]) == 4 for r in records)
    student = next(r for r in records if r["cell"]["method"] == "kd")
    teacher = store.get(student["stages"]["teacher"]["cell_hash"])
    assert teacher["weights"]["sha256"] == student["stages"]["teacher"]["sha256"]
    assert not (tmp_path / "results").exists() and not os.path.exists("s3:")
    md = (reports / "tiny.md").read_text()
    assert uri in md

    third = harness_run(path, uri, reports)
    out, _ = third.communicate(timeout=120)
    assert third.returncode == 0 and "2 finished already, 0 to run" in out, out
