"""Records as tables: one row per (finished cell, output) with its accuracy and provenance, and the costs of a trial
that a table may show beside accuracies.  The report and the figures both read records through this module."""
from __future__ import annotations

import pandas as pd

from harness.config.cell import Cell
from harness.results.store import ResultStore
from harness.suite.schema import Suite


def _train_gmacs(record: dict, cell) -> float | None:
    macs = record.get("costs", {}).get("train_forward_macs_per_image")
    return None if macs is None else macs / 1e9


def _params_m(record: dict, cell) -> float | None:
    params = record.get("params", {})
    return None if "peers" not in params else (params["peers"] + params.get("added_total", 0)) / 1e6


# Costs of a whole trial that a table may show beside accuracies (``table.values``), read from its record:
# name -> (what it is, for the report's legend; record, cell -> number or None).
COST_VALUES = {
    "params_m": ("training-time parameters in millions: every network and module trained (KDCL Table 3)",
                 _params_m),
    "train_gmacs": ("multiply-adds (G) per image of a training step's forward pass through every network and "
                    "module it runs (torch's FLOP counter)", _train_gmacs),
    "peer_gmacs": ("train_gmacs divided by the number of networks in the group",
                   lambda record, cell: None if (g := _train_gmacs(record, cell)) is None else g / len(cell.group)),
}


def metric_value(numbers: dict, metric: str) -> float:
    """An accuracy as recorded, or its error rate (``top1_error`` = 100 − top-1)."""
    if metric.endswith("_error"):
        return 100.0 - numbers[metric.removesuffix("_error")]
    return numbers[metric]


def stage_value_cells(suite: Suite) -> dict[tuple[str, str, str], Cell]:
    """(group, method label, value) -> the stage cell whose accuracy the table shows there (``table.stage_values``)."""
    out = {}
    for entry, stage in suite.spec.table.stage_values.items():
        label, _, value = entry.rpartition("/")
        for group, cell in suite.stage_cells(stage).items():
            out[(group, label, value)] = cell
    return out


def stage_value_checkpoints(suite: Suite) -> dict[tuple[str, str, str], tuple[str, list[Cell]]]:
    """(group, method label, value) -> (stage name, the suite's cells that learn from a checkpoint as that stage):
    a teacher from a file, a URL or a hub has no cell of its own; its accuracy is what its students measured."""
    out: dict[tuple[str, str, str], tuple[str, list[Cell]]] = {}
    for entry, name in suite.spec.table.stage_values.items():
        label, _, value = entry.rpartition("/")
        for cell in suite.cells:
            stage = suite.plan.stages[cell.hash].get(name)
            if stage is not None and stage.cell is None:
                out.setdefault((cell.group_name, label, value), (name, []))[1].append(cell)
    return out


def report_cells(suite: Suite) -> list[Cell]:
    """The cells whose records a report reads: the suite's own and the stages its table shows."""
    return list(suite.cells) + [c for c in stage_value_cells(suite).values() if c not in suite.cells]


def cell_epoch(choice: str, cell: Cell) -> str:
    """"best" or "last" for ``cell``: "paper" is the epoch its recipe's paper reports (last where it does not say)."""
    return (cell.recipe.get("report_epoch") or "last") if choice == "paper" else choice


def epoch_text(suite: Suite, choice: str) -> str:
    """Which epoch a table shows, in words, for its title and caption."""
    if choice != "paper":
        return "best test epoch" if choice == "best" else "last epoch"
    stated = {cell.recipe.get("report_epoch") for cell in suite.cells}
    if len({cell_epoch(choice, c) for c in suite.cells}) > 1:
        return "best or last epoch per method, as each recipe says (see the notes)"
    if stated == {None}:
        return "last epoch (the paper does not say which; assumed)"
    # why this epoch is the recipe's own word, in the notes (its source's "best epoch: ..." / "last epoch: ...")
    return "best test epoch (see the notes)" if stated == {"best"} else "last epoch (see the notes)"


def trial_frame(suite: Suite, store: ResultStore, records: dict[str, dict] | None = None,
                epoch: str | None = None) -> pd.DataFrame:
    """One row per (finished cell, output) with its accuracy at ``epoch`` (a choice of ``evaluation.epoch``: the
    first by default) and its provenance, and one per cost the table shows (``COST_VALUES``)."""
    metric, choice = suite.spec.evaluation.metric, epoch or suite.spec.evaluation.epochs()[0]
    rows = []
    costs_shown = [v for v in suite.spec.table.values if v in COST_VALUES]
    other_metrics = [v for v in suite.spec.table.values if ":" in v]
    records = store.records(report_cells(suite)) if records is None else records
    cell_stages, checkpoint_stages = stage_value_cells(suite), stage_value_checkpoints(suite)
    stage_entries = {**cell_stages, **checkpoint_stages}
    shown = [(cell, cell.row_name, cell.label, None) for cell in suite.cells]
    shown += [(stage, group, label, value) for (group, label, value), stage in cell_stages.items()]
    for cell, group, label, only in shown:
        record = records.get(cell.hash)
        if record is None or record.get("status") != "ok":
            continue
        epoch = cell_epoch(choice, cell)
        trial = _trial(cell, record, group, label, epoch)
        if only is not None:  # a stage's accuracy in the place of a method's value (its net1: the stage network)
            rows.append({**trial, "value": only, metric: metric_value(record[epoch]["net1"], metric)})
            continue
        if cell.row is not None:  # a network trained alone: its row's net<position>, at each metric shown
            output = f"net{cell.position + 1}"
            rows.append({**trial, "value": output, metric: metric_value(record[epoch]["net1"], metric)})
            rows += [{**trial, "value": value, metric: metric_value(record[epoch]["net1"], value.split(":")[0])}
                     for value in other_metrics if value.split(":")[1] == output]
            continue
        rows += [{**trial, "value": value, metric: metric_value(numbers, metric)}
                 for value, numbers in record[epoch].items()
                 if (cell.group_name, cell.label, value) not in stage_entries]
        for value in other_metrics:  # "top5:avg": an output at another metric than the table's, in its column
            other, output = value.split(":")
            if output in record[epoch]:
                rows.append({**trial, "value": value, metric: metric_value(record[epoch][output], other)})
        for value in costs_shown:  # a cost of the whole trial, in the metric's column under its own value name
            number = COST_VALUES[value][1](record, cell)
            if number is not None:
                rows.append({**trial, "value": value, metric: number})
    for (group, label, value), (name, students) in checkpoint_stages.items():
        # a teacher from elsewhere, once per group: as the first of its students (by seed) measured it on the test
        # set; the same file on the same images for every student, so one is its accuracy, not a seed's
        measured = [(c, records[c.hash]) for c in sorted(students, key=lambda c: c.seed)
                    if records.get(c.hash, {}).get("status") == "ok"
                    and name in records[c.hash].get(cell_epoch(choice, c), {})]
        if measured:
            cell, record = measured[0]
            epoch = cell_epoch(choice, cell)
            stage = record.get("stages", {}).get(name, {})
            rows.append({**_trial(cell, record, group, label, epoch), "value": value,
                         "hash": str(stage.get("sha256"))[:16], "stages": "", "deployed_params": None,
                         "added_params": None, metric: metric_value(record[epoch][name], metric)})
    columns = ["dataset", "group", "method", "value", "seed", metric, "epoch", "hash", "trial", "epochs_run",
               "git_sha", "dirty", "device", "torch", "deployed_params", "added_params", "stages"]
    return pd.DataFrame(rows + _alone_averages(suite, rows, metric), columns=columns)


def _trial(cell: Cell, record: dict, group: str, label: str, epoch: str) -> dict:
    """The provenance columns of a row: where its number comes from."""
    return {
        "dataset": cell.dataset["name"], "group": group, "method": label, "seed": cell.seed,
        "epoch": epoch, "hash": cell.hash, "trial": record.get("trial"), "epochs_run": record.get("epochs"),
        "git_sha": record.get("code", {}).get("git_sha"), "dirty": record.get("code", {}).get("dirty"),
        "device": record.get("hardware", {}).get("gpu") or record.get("hardware", {}).get("cpu"),
        "torch": record.get("packages", {}).get("torch"),
        "deployed_params": record.get("params", {}).get("deployed"),
        "added_params": record.get("params", {}).get("added_total"),
        "stages": " ".join(f"{name}={stage.get('cell_hash') or stage.get('sha256')}"
                           for name, stage in sorted(record.get("stages", {}).items())),
    }


def _alone_averages(suite: Suite, rows: list[dict], metric: str) -> list[dict]:
    """The ``avg`` of a row whose networks were trained alone: the mean of its networks' cells of one seed, once
    all of them finished (their hashes joined).  No ``ens``: independently trained networks were never evaluated
    together."""
    sizes = {(c.row_name, c.label): len(c.row) for c in suite.cells if c.row is not None}
    found: dict[tuple, list[dict]] = {}
    for row in rows:
        if (row["group"], row["method"]) in sizes and row["value"].startswith("net"):
            found.setdefault((row["group"], row["method"], row["seed"]), []).append(row)
    out = []
    for (group, label, _), nets in found.items():
        if len(nets) == sizes[(group, label)]:
            out.append({**nets[0], "value": "avg", metric: sum(r[metric] for r in nets) / len(nets),
                        "hash": "+".join(r["hash"] for r in sorted(nets, key=lambda r: r["value"]))})
    return out
