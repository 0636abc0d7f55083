"""Every suite file validates, scales down with --smoke, and is in the generated index; every paper table has a
suite or a stated reason; one suite (rotating by day) runs end to end with --smoke."""
import datetime as dt
from pathlib import Path

import pytest

from harness.papers.tables import PAPER_TABLES
from harness.costs.rates import ASSUMED_MACS_PER_S, cell_gpu_hours, forward_macs
from harness.reporting.index import NO_SUITE, build_index, render_index
from harness.suite.schema import load_suite
from harness.suite.smoke import smoke_suite
from harness.training.stages import waves
from tests.helpers import shipped_suite

SUITES = sorted((Path(__file__).parents[1] / "suites").glob("*.yaml"))


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_suite_validates_and_scales_down(path):
    suite = shipped_suite(path)
    assert suite.name == path.stem and suite.cells
    smoke = smoke_suite(suite)
    plan = waves(smoke.cells)  # every stage (teacher, assistant, paraphraser) is definable at smoke scale
    assert all(c.recipe["epochs"] <= 2 for wave in plan for c in wave)
    assert {c.hash for c in smoke.cells}.isdisjoint({c.hash for c in suite.cells})


def test_every_paper_table_has_a_suite_or_a_reason():
    tables = {shipped_suite(p).spec.paper_table.name for p in SUITES if shipped_suite(p).spec.paper_table}
    assert set(PAPER_TABLES) - tables <= set(NO_SUITE), sorted(set(PAPER_TABLES) - tables - set(NO_SUITE))


@pytest.mark.slow
def test_every_shipped_suite_validates_and_the_index_is_up_to_date(tmp_path):
    """No shipped suite is refused by what `harness validate` checks before a run (each cell's data and networks,
    its memory against the GPU it asks for: the index lists a suite that fails as not validating), and
    suites/README.md is what `harness index` writes from an empty results store."""
    lines, broken, missing, rate = build_index(SUITES[0].parent, tmp_path / "results")
    assert not broken, broken
    assert rate is None
    assert (SUITES[0].parent / "README.md").read_text() == render_index(lines, broken, missing, rate), \
        "run `harness index --results /nonexistent` and commit suites/README.md"


def test_gpu_hours_by_hand(write_suite):
    suite = load_suite(write_suite({"name": "est", "dataset": {"name": "cifar100"}, "groups": [["cifar_resnet20"] * 2],
                                    "methods": ["dml"], "seeds": [0], "recipe": {"base": "tsb_cifar", "epochs": 10}}))
    (cell,) = suite.cells
    macs = forward_macs("cifar_resnet20", (3, 32, 32), 100)
    assert 40e6 < macs < 42e6  # ResNet-20 on CIFAR: 41M multiply-adds
    assert cell_gpu_hours(cell) == pytest.approx(3 * 2 * macs * 50_000 * 10 / ASSUMED_MACS_PER_S / 3600)


def test_gpu_rate_measured_by_finished_gpu_trials(tmp_path, write_suite):
    """Images/s × 3 × forward multiply-adds per image, per whole GPU, median over GPU trials; CPU trials and trials
    without a cost do not count; the estimate of a suite scales with the measured rate."""
    from harness.costs.rates import measured_rate
    from harness.reporting.index import suite_line
    from harness.results.store import ResultStore

    store = ResultStore(tmp_path / "results")
    assert measured_rate(store) is None

    def put(h, gpu, share, speeds, macs=1e9):
        store.put({"hash": h, "status": "ok", "costs": {"train_forward_macs_per_image": macs},
                   "hardware": {"device": "cuda:0" if gpu else "cpu", "gpu": gpu, "gpu_share": share},
                   "history": [{"images_per_s": v} for v in speeds]})

    put("a", "NVIDIA H200", 1.0, [900.0, 1000.0, 1100.0])  # 1000 img/s × 3e9 = 3e12
    put("b", "NVIDIA H200", 0.5, [1000.0])  # half a GPU: 3e12 / 0.5 = 6e12
    put("c", "NVIDIA H200", 1.0, [2000.0])  # 6e12
    put("d", None, 0.0, [50.0])  # a CPU trial
    put("e", "NVIDIA H200", 1.0, [5000.0], macs=None)  # an older record without costs
    rate = measured_rate(store)
    assert rate == {"macs_per_s": pytest.approx(6e12), "gpus": ["NVIDIA H200"], "trials": 3,
                    "source": "the median rate of 3 finished GPU trial(s) of the results store"}
    suite = load_suite(write_suite({"name": "est", "dataset": {"name": "cifar100"}, "groups": [["cifar_resnet20"] * 2],
                                    "methods": ["dml"], "seeds": [0], "recipe": {"base": "tsb_cifar", "epochs": 10}}))
    assumed, measured = suite_line(suite, store), suite_line(suite, store, rate["macs_per_s"])
    assert measured["gpu_hours"] == pytest.approx(assumed["gpu_hours"] * ASSUMED_MACS_PER_S / 6e12)
    assert "median rate of 3 finished GPU trial(s) of the results store (NVIDIA H200)" in render_index(
        [measured], [], {}, rate)


def smoke_cells(path) -> int:
    """The cells a suite's ``--smoke`` run trains, its stages (teachers) included."""
    return sum(len(wave) for wave in waves(smoke_suite(shipped_suite(path)).cells))


def smoke_gpu_seconds(path) -> float:
    """What the cost model estimates a suite's ``--smoke`` run takes, in GPU-seconds at its assumed rate."""
    import tempfile

    from harness.reporting.index import suite_line
    from harness.results.store import ResultStore

    return suite_line(smoke_suite(shipped_suite(path)), ResultStore(tempfile.mkdtemp()))["gpu_hours"] * 3600


# The daily smoke run's share of the CI budget is about a minute on 2 cores: a suite of at most 4 smoke cells (each
# a tiny trial of 10-20 s) whose networks and image sizes the cost model puts at most at 0.075 GPU-seconds (the
# quickstart 0.011; KDCL Table 5's three ResNet-18s on 224-pixel crops 0.139, which took 157 to 170 s here). Larger
# suites are validated and scaled down above, every day, but not trained.
SMOKE_CELLS = 4
SMOKE_GPU_SECONDS = 0.075


def test_rotating_smoke_run(tmp_path, ray_address, capfd):
    """One small suite per day runs as a user would (`harness run --smoke`): every report cell filled."""
    from tests.helpers import harness_main

    small = [p for p in SUITES if smoke_cells(p) <= SMOKE_CELLS and smoke_gpu_seconds(p) <= SMOKE_GPU_SECONDS]
    assert len(small) >= 10, [p.stem for p in small]  # the rotation still covers many suites
    path = small[dt.date.today().toordinal() % len(small)]
    code, out = harness_main(capfd, "run", path, "--smoke", "--results", tmp_path / "r", "--reports", tmp_path / "rep",
                             address=ray_address)
    assert code == 0, out[-6000:]
    md = (tmp_path / "rep" / f"{path.stem}_smoke.md").read_text()
    table = md.split("\n\n")[1]
    # our rows, every cell filled; the paper's rows (and ours minus them) show — where the paper prints no number
    ours = [row for row in table.splitlines() if not row.startswith(("| (paper", "| (ours − paper"))]
    assert "SMOKE RUN" in md and "—" not in "\n".join(ours).replace("(—", ""), (path.name, table)
