"""The result store keeps every finished record and frees what only an unfinished cell needs."""
from harness.results.store import ResultStore


def _trial(store: ResultStore, experiment: str, cell_hash: str, checkpoints: int, size: int = 1000) -> None:
    trial = store.ray_dir / experiment / f"{cell_hash}_dml_pair_s0"
    for i in range(checkpoints):
        folder = trial / f"checkpoint_{i:06d}"
        folder.mkdir(parents=True)
        (folder / "state.pt").write_bytes(b"x" * size)
    (trial / "progress.csv").write_text("epoch\n1\n")


def test_prune_removes_checkpoints_of_finished_cells_only(tmp_path):
    store = ResultStore(tmp_path)
    store.put({"hash": "aaaa", "status": "ok"})
    store.weights_path("aaaa").parent.mkdir(parents=True)
    store.weights_path("aaaa").write_bytes(b"w")
    store.put({"hash": "bbbb", "status": "failed", "error": "NonFiniteLoss"})
    store.put({"hash": "cccc", "status": "ok"})  # finished, but its weights are missing: keep what could rebuild
    _trial(store, "suite-1", "aaaa", 2)
    _trial(store, "suite-2", "aaaa", 1)  # an earlier, killed run of the same cell
    _trial(store, "suite-1", "bbbb", 2)
    _trial(store, "suite-1", "cccc", 1)
    _trial(store, "suite-1", "dddd", 1)  # running or killed: no record yet

    assert store.prune_checkpoints(["aaaa", "bbbb", "cccc", "dddd"]) == (3, 3000)
    left = sorted(p.parent.name[:4] for p in store.ray_dir.glob("*/*/checkpoint_*"))
    assert left == ["bbbb", "bbbb", "cccc", "dddd"]
    assert len(list(store.ray_dir.glob("*/aaaa*/progress.csv"))) == 2  # the history stays
    assert store.get("aaaa") == {"hash": "aaaa", "status": "ok"} and store.weights_path("aaaa").is_file()
    assert store.prune_checkpoints(["aaaa"]) == (0, 0)


def test_a_damaged_record_is_moved_aside_in_one_line_and_reads_as_missing(tmp_path):
    said = []
    store = ResultStore(tmp_path, on_damage=said.append)
    damaged = {"garbage": b"\x00\x01not json", "list": b"[1, 2]", "fields": b'{"hash": "c"}',
               "other": b'{"hash": "zzzz", "status": "ok"}', "truncated": b'{"hash": "t", "sta'}
    for name, content in damaged.items():
        (tmp_path / "cells").mkdir(exist_ok=True)
        (tmp_path / "cells" / f"{name}.json").write_bytes(content)
        assert store.get(name) is None
        kept = list((tmp_path / "cells").glob(f"{name}.json.damaged-*"))
        assert len(kept) == 1 and kept[0].read_bytes() == content  # kept, never deleted
        assert not (tmp_path / "cells" / f"{name}.json").exists() and store.get(name) is None
    assert len(said) == 5 and all("\n" not in line and "the cell runs again" in line for line in said)
    assert "not a JSON object" in said[1] and "no status" in said[2] and "another cell" in said[3]
    store.put({"hash": "garbage", "status": "ok"})  # the cell's next result is stored as usual
    assert store.get("garbage") == {"hash": "garbage", "status": "ok"}


def test_weights_that_are_not_the_recorded_file_are_moved_aside(tmp_path):
    from harness.results.weights import file_sha256

    said = []
    store = ResultStore(tmp_path, on_damage=said.append)
    store.weights_path("aaaa").parent.mkdir(parents=True)
    store.weights_path("aaaa").write_bytes(b"the networks")
    store.put({"hash": "aaaa", "status": "ok", "weights": {"sha256": file_sha256(store.weights_path("aaaa"))}})
    assert store.weights_intact("aaaa") and not said
    store.weights_path("aaaa").write_bytes(b"the netw")  # truncated
    assert not store.weights_intact("aaaa") and not store.has_weights("aaaa")
    assert len(said) == 1 and "damaged weights" in said[0] and "the stage runs again" in said[0]
    assert [p.read_bytes() for p in (tmp_path / "weights").glob("aaaa.pt.damaged-*")] == [b"the netw"]


def test_weights_are_hashed_once_while_unchanged(tmp_path, monkeypatch):
    from harness.results import weights
    from harness.results.weights import file_sha256

    store = ResultStore(tmp_path)
    store.weights_path("aaaa").parent.mkdir(parents=True)
    store.weights_path("aaaa").write_bytes(b"the networks")
    store.put({"hash": "aaaa", "status": "ok", "weights": {"sha256": file_sha256(store.weights_path("aaaa"))}})
    calls = []
    monkeypatch.setattr(weights, "file_sha256", lambda path: calls.append(path) or file_sha256(path))
    assert all(store.weights_intact("aaaa") for _ in range(5)) and len(calls) == 1
    store.weights_path("aaaa").write_bytes(b"the netw")  # changed: hashed again, and found damaged
    assert not store.weights_intact("aaaa") and len(calls) == 2


def test_records_and_weights_are_readable_by_the_group_as_the_umask_allows(tmp_path):
    """Written through a 0600 temporary file, a record or weights file gets the mode of any new file: 0644 under
    umask 022, 0664 under a shared group's 002 (issue 18: records of a shared store were 0600)."""
    import os

    import torch

    from harness.config.cell import Cell
    from harness.results.weights import save_networks

    cell = Cell(method="ind", hparams={}, group=("cifar_resnet8",), dataset={"name": "fashion_mnist_mini"},
                recipe={"epochs": 1}, seed=0)
    old = os.umask(0o022)
    try:
        for umask, mode in ((0o022, 0o644), (0o002, 0o664)):
            os.umask(umask)
            store = ResultStore(tmp_path / oct(umask))
            store.put({"hash": "aaaa", "status": "ok"})
            path = tmp_path / oct(umask) / "weights.pt"
            save_networks(path, cell, [("cifar_resnet8", torch.nn.Linear(2, 2))], 10, 1)
            assert oct(os.stat(store.location.local / store.record_path("aaaa")).st_mode & 0o777) == oct(mode)
            assert oct(os.stat(path).st_mode & 0o777) == oct(mode)
    finally:
        os.umask(old)
