"""One plan of a run, derived once: every reader of a run's shape (checks, packing, the data binding, the pre-flight,
the dry run, the cost words, status and index) reads ``suite.plan``; binding the data maps it instead of deriving it
again, and the mapped plan is the one a derivation from the bound cells gives."""
from __future__ import annotations

from pathlib import Path

from harness.suite.plan import RunPlan, derivations
from harness.suite.schema import load_suite
from tests.helpers import TINY_RECIPE, tiny_suite_dict

ROOT = Path(__file__).parents[1]


def test_a_dry_run_of_the_quickstart_derives_its_plan_once(tmp_path, capsys):
    """``harness run suites/quickstart.yaml --dry-run`` makes every check a run makes before Ray starts (fit,
    capacity, packing, data binding, first batches), then prints the plan and its cost: one derivation."""
    from harness.cli import main

    before = derivations()
    assert main(["run", str(ROOT / "suites" / "quickstart.yaml"), "--dry-run", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "quickstart: 6 cells" in out and "dry run: nothing trains" in out
    assert derivations() - before == 1


def test_harness_index_derives_each_suites_plan_once(tmp_path):
    from harness.reporting.index import build_index

    suites = tmp_path / "suites"
    suites.mkdir()
    for name in ("quickstart.yaml", "cifar100_same_arch.yaml"):
        (suites / name).write_text((ROOT / "suites" / name).read_text())
    before = derivations()
    lines, broken, _, _ = build_index(suites, tmp_path / "results")
    assert len(lines) == 2 and not broken
    assert derivations() - before == 2


def _plan_shape(plan: RunPlan):
    return ([[c.hash for c in wave] for wave in plan.waves], [c.hash for c in plan.cells],
            {h: {name: (s.cell.hash if s.cell else s.checkpoint) for name, s in named.items()}
             for h, named in plan.stages.items()},
            plan.bundles)


def test_binding_the_data_maps_the_plan_as_a_derivation_from_the_bound_cells_would(write_suite, tmp_path):
    """Teachers (KD's stage cells), on data that an earlier record contradicts: the binding keys the cells apart
    (their hashes change), and the mapped plan equals the plan derived again from the bound cells."""
    from harness.data.fingerprint import fingerprint
    from harness.results.store import ResultStore
    from harness.suite.binding import bind_data, dataset_loader

    suite = load_suite(write_suite(tiny_suite_dict(
        methods=["ind", {"name": "kd", "temperature": 4}], seeds=[0, 1], recipe=TINY_RECIPE)))
    plan = suite.plan
    teacher = next(s.cell for named in plan.stages.values() for s in named.values() if s.cell is not None)
    store = ResultStore(tmp_path / "results")
    data_of = dataset_loader(None)
    other = {**fingerprint(data_of(teacher.dataset)), "checksum": "0" * 16}  # trained on other data
    store.put({"hash": teacher.hash, "cell": teacher.to_dict(), "status": "ok", "data": other})

    bound = bind_data(suite, store, data_of, log=lambda line: None)
    assert "plan" in vars(bound)  # set by the binding, not derived on first use
    before = derivations()
    again = RunPlan.of(bound.cells)
    assert derivations() - before == 1
    assert _plan_shape(bound.plan) == _plan_shape(again)
    assert {c.hash for c in bound.plan.everything}.isdisjoint(c.hash for c in plan.everything)  # keyed apart
    assert len(plan.waves) == 2 and len(bound.plan.stage_hashes) == len(plan.stage_hashes) >= 1


def test_a_wave_left_to_train_is_grouped_into_the_plans_bundles(write_suite):
    suite = load_suite(write_suite(tiny_suite_dict(methods=["ind"], seeds=[0, 1, 2],
                                                   resources={"cpu": 1, "stack_seeds": True})))
    cells = list(suite.plan.cells)
    assert [len(g) for g in suite.plan.seed_bundles(cells)] == [3]
    assert [len(g) for g in suite.plan.seed_bundles(cells[1:])] == [2]  # seed 0 finished: the others still stack
    assert [g[0].seed for g in suite.plan.seed_bundles(cells[2:])] == [2]
    assert suite.plan.stacked_seeds(cells[0]) == 3
