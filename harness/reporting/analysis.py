"""Representation analysis of trained networks (ACKD Table 1): how alike a teacher, its proxy (an early-stopped
teacher, a teacher assistant) and the student distilled from it are, on the test set.

- CKA: linear centred kernel alignment (Kornblith et al., 2019) of the pooled pre-logit embeddings, computed
  from the n×n Gram matrices, so networks of different widths compare.  ACKD states neither kernel nor layer;
  linear CKA on the penultimate features is the common reading.
- KL: KL(p_x ‖ p_y) of the softmax outputs at temperature 1, averaged over test images (ACKD states neither
  direction nor temperature; ``kl_xy`` takes x as the reference distribution, e.g. the teacher).

``harness analyze SUITE`` runs this for every finished cell whose method names networks to compare
(``Method.analysis_roles``: ``teacher``, ``proxy``), with the cell's own network as ``student``, and writes
``<suite>_analysis.md`` and ``.csv`` beside the suite's report: medians over seeds, and per trial.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tabulate import tabulate

from harness.config.cell import Cell
from harness.models import adapter
from harness.results.store import ResultStore
from harness.results.weights import load_networks

ROLE_ORDER = ("teacher", "proxy", "student")


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two (n, d_x), (n, d_y) feature matrices: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    cross = (y.T @ x).pow(2).sum()
    return float(cross / ((x.T @ x).pow(2).sum().sqrt() * (y.T @ y).pow(2).sum().sqrt()))


def mean_kl(reference_logits: torch.Tensor, other_logits: torch.Tensor) -> float:
    """Mean over samples of KL(softmax(reference) ‖ softmax(other))."""
    log_p = F.log_softmax(reference_logits.double(), dim=1)
    log_q = F.log_softmax(other_logits.double(), dim=1)
    return float((log_p.exp() * (log_p - log_q)).sum(1).mean())


@torch.no_grad()
def outputs_on(networks: dict[str, torch.nn.Module], batches) -> dict[str, dict[str, torch.Tensor]]:
    """Embeddings, logits and labels of every network over the batches (eval mode)."""
    out = {name: {"embedding": [], "logits": []} for name in networks}
    labels = []
    for batch in batches:
        labels.append(batch.y.cpu())
        for name, net in networks.items():
            features = adapter.extract(net.eval(), batch.x)
            out[name]["embedding"].append(features.embedding.float().cpu())
            out[name]["logits"].append(features.logits.float().cpu())
    y = torch.cat(labels)
    return {name: {k: torch.cat(v) for k, v in parts.items()} | {"y": y} for name, parts in out.items()}


def compare(outputs: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
    """Top-1 of each network, and CKA and KL of each ordered pair of roles (in ROLE_ORDER)."""
    row = {}
    for name, o in outputs.items():
        row[f"acc_{name}"] = 100.0 * float((o["logits"].argmax(1) == o["y"]).double().mean())
    names = [r for r in ROLE_ORDER if r in outputs]
    for a, b in itertools.combinations(names, 2):
        row[f"cka_{a}_{b}"] = linear_cka(outputs[a]["embedding"], outputs[b]["embedding"])
        row[f"kl_{a}_{b}"] = mean_kl(outputs[a]["logits"], outputs[b]["logits"])
    return row


def _test_batches(cell: Cell, data_root: str | None, device: torch.device):
    from harness.config.recipe import Recipe
    from harness.data.datasets import load_dataset
    from harness.data.inputs import build_inputs

    data = load_dataset(cell.dataset, data_root)
    inputs = build_inputs(data, Recipe.model_validate(cell.recipe), cell.seed, cell.dataset.get("pipeline", "auto"),
                          views=1, held_out_per_class=0, device=device, channels_last=False, eval_batch_size=256,
                          workers=0)
    return inputs.test, data


def analyze_cell(cell: Cell, store: ResultStore, data_root: str | None = None,
                 device: torch.device = torch.device("cpu")) -> dict | None:
    """The comparison row of one finished cell, or None when its method names nothing to compare."""
    from harness.training.method import load_methods

    method_cls = load_methods().get(cell.method)
    roles = method_cls.analysis_roles(method_cls.HParams.model_validate(cell.hparams), cell)
    if not roles:
        return None
    test, data = _test_batches(cell, data_root, device)
    networks, provenance = {}, {}
    for role, stage in roles.items():
        path = stage.checkpoint or store.weights_file(stage.cell.hash)
        (net,), info = load_networks(path, stage.models or stage.cell.group[-1:], stage.sha256, data.num_classes,
                                     data.in_chans)
        networks[role], provenance[f"{role}_hash"] = net.to(device), info["cell_hash"] or info["sha256"]
    (student,), info = load_networks(store.weights_file(cell.hash), cell.group[-1:], None, data.num_classes,
                                     data.in_chans)
    networks["student"] = student.to(device)
    return {"method": cell.label, "group": cell.group_name, "seed": cell.seed, "hash": cell.hash, **provenance,
            **compare(outputs_on(networks, test()))}


def analyze_suite(suite, store: ResultStore, reports: str | Path, data_root: str | None = None) -> pd.DataFrame:
    """Analyse every finished cell that names networks to compare; write ``<suite>_analysis.{md,csv}``."""
    rows = []
    for cell in {c.hash: c for c in suite.cells}.values():
        record = store.get(cell.hash)
        if record is None or record.get("status") != "ok":
            continue
        row = analyze_cell(cell, store, data_root)
        if row is not None:
            rows.append(row)
    frame = pd.DataFrame(rows)
    reports = Path(reports)
    reports.mkdir(parents=True, exist_ok=True)
    frame.to_csv(reports / f"{suite.name}_analysis.csv", index=False)
    lines = [f"# {suite.spec.title or suite.name}: representation analysis", ""]
    if frame.empty:
        lines.append("No finished cell of this suite names networks to compare (ESKD, TAKD and offline methods do).")
    else:
        numeric = [c for c in frame.columns if c.startswith(("acc_", "cka_", "kl_"))]
        medians = frame.groupby(["group", "method"], sort=False)[numeric].median().reset_index()
        medians.insert(2, "n", frame.groupby(["group", "method"], sort=False).size().values)
        groups = {c.group_name: c.group for c in suite.cells}
        papers = [paper_row(suite, groups[g], m) for g, m in zip(medians["group"], medians["method"])]
        for column in numeric:
            medians[column] = [_text(ours, paper.get(paper_key(column)), column)
                               for ours, paper in zip(medians[column], papers)]
        lines += [tabulate(medians, headers="keys", tablefmt="github", showindex=False, disable_numparse=True), "",
                  "Medians over seeds on the test set. acc_* = top-1 (%); cka_x_y = linear CKA of the pooled "
                  "pre-logit features of x and y; kl_x_y = mean KL(p_x ‖ p_y) of the softmax outputs at T = 1. "
                  "teacher / proxy (early-stopped teacher or assistant) / student as the method defines them; "
                  f"per-trial values, hashes and seeds in `{suite.name}_analysis.csv`."
                  + (f" In parentheses: {suite.spec.paper_table.name} and ours − paper." if any(papers) else "")]
    (reports / f"{suite.name}_analysis.md").write_text("\n".join(lines) + "\n")
    return frame


def paper_key(column: str) -> str:
    """Our column → the paper table's key, by the roles' initials: acc_teacher → acc_t, cka_teacher_proxy → cka_tp."""
    kind, *roles = column.split("_")
    return f"{kind}_{''.join(r[0] for r in roles)}"


def paper_row(suite, group: tuple[str, ...], label: str) -> dict:
    """The paper's row for a (group, method label) of the suite's paper table, or {}.

    The rows of ACKD Table 1 name [teacher, proxy, student] while our group is [teacher, student] (the proxy is
    a stage), so a row matches on its method and on its first and last networks.
    """
    ref = suite.spec.paper_table
    if ref is None:
        return {}
    from harness.papers.tables import load_paper_table, paper_net_name

    wanted = ref.methods.get(label, label)
    wanted = set(wanted) if isinstance(wanted, list) else {wanted}
    names = [paper_net_name(m, ref.nets) for m in group]
    for row in load_paper_table(ref.name)["rows"]:
        if row.get("method") in wanted and [row["nets"][0], row["nets"][-1]] == [names[0], names[-1]]:
            return row
    return {}


def _text(ours, paper, column: str) -> str:
    if ours is None or pd.isna(ours):
        return "—"
    digits = 2 if column.startswith("acc_") else 4
    return f"{ours:.{digits}f}" + ("" if paper is None else f" ({paper:.{digits}f}, {ours - paper:+.{digits}f})")
