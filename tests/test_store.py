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
