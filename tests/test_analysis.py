"""Representation analysis (ACKD Table 1): linear CKA and KL against independent formulas, and
``harness analyze`` on a suite whose ESKD students were trained here."""
import numpy as np
import pytest
import torch
import yaml

from harness.cli import main
from harness.reporting.analysis import compare, linear_cka, mean_kl
from harness.results.store import ResultStore
from harness.suite.schema import load_suite
from harness.training.engine import Trainer
from tests.helpers import np_kl, TINY_RECIPE, tiny_suite_dict, train_stages


def cka_by_gram_matrices(x, y):
    """CKA from its definition: HSIC of the centred n×n linear kernels (Kornblith et al. Eq. 2 and 4)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = h @ x @ x.T @ h, h @ y @ y.T @ h
    return np.trace(k @ l) / np.sqrt(np.trace(k @ k) * np.trace(l @ l))


def test_linear_cka_matches_the_gram_matrix_definition():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 5, generator=g), torch.randn(12, 3, generator=g)
    assert linear_cka(x, y) == pytest.approx(cka_by_gram_matrices(x, y), rel=1e-10)
    assert linear_cka(x, x) == pytest.approx(1.0)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g))
    assert linear_cka(x, 3.0 * x @ q + 7.0) == pytest.approx(1.0)  # invariant to rotation, scale, shift
    assert 0.0 <= linear_cka(x, y) < 1.0


def test_mean_kl_matches_the_textbook_formula():
    a = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    b = [[0.2, 0.1, 0.0], [2.0, 1.0, -1.0]]
    assert mean_kl(torch.tensor(a), torch.tensor(b)) == pytest.approx(np_kl(a, b, 1.0), rel=1e-10)
    assert mean_kl(torch.tensor(a), torch.tensor(a)) == pytest.approx(0.0, abs=1e-12)


def test_a_network_compared_with_itself():
    o = {"embedding": torch.randn(20, 8), "logits": torch.randn(20, 4), "y": torch.randint(0, 4, (20,))}
    row = compare({"teacher": o, "student": o})
    assert row["cka_teacher_student"] == pytest.approx(1.0) and row["kl_teacher_student"] == pytest.approx(0.0)
    expected = 100.0 * np.mean(o["logits"].argmax(1).numpy() == o["y"].numpy())
    assert row["acc_teacher"] == row["acc_student"] == pytest.approx(expected)


def test_harness_analyze_writes_cka_and_kl_of_teacher_proxy_student(tmp_path, capsys):
    raw = tiny_suite_dict(name="eskd_tiny", groups=[["cifar_resnet14", "cifar_resnet8"]], methods=["eskd"],
                          seeds=[0], recipe={**TINY_RECIPE, "epochs": 3},
                          dataset={"name": "fashion_mnist_mini", "train_per_class": 6, "test_per_class": 5})
    path = tmp_path / "eskd.yaml"
    path.write_text(yaml.safe_dump(raw))
    suite = load_suite(path)
    store = ResultStore(tmp_path / "results")
    (cell,) = suite.cells
    from harness.training.method import load_methods

    eskd = load_methods().get("eskd")
    full_teacher = eskd.analysis_roles(eskd.HParams(), cell)["teacher"].cell
    for c in (full_teacher, cell):  # the full teacher (trained for KD students) and the ESKD student
        runtime = train_stages(c, store.root)
        trainer = Trainer(c, runtime)
        trainer.run()
        trainer.save_weights(store.weights_path(c.hash))
        store.put({"hash": c.hash, "cell": c.to_dict(), "status": "ok"})

    assert main(["analyze", str(path), "--results", str(store.root), "--reports", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "eskd_tiny_analysis.md").read_text()
    csv = (tmp_path / "rep" / "eskd_tiny_analysis.csv").read_text()
    for column in ("cka_teacher_proxy", "cka_teacher_student", "cka_proxy_student", "kl_teacher_proxy",
                   "acc_teacher", "acc_proxy", "acc_student"):
        assert column in md and column in csv
    assert full_teacher.hash in csv and cell.hash in csv
    import pandas as pd

    row = pd.read_csv(tmp_path / "rep" / "eskd_tiny_analysis.csv").iloc[0]
    assert 0.0 < row["cka_teacher_proxy"] <= 1.0 and row["kl_teacher_proxy"] >= 0.0
    assert row["acc_student"] == pytest.approx(trainer.history[-1]["top1/net1"])


def test_analyze_without_the_teachers_weights_is_one_line(tmp_path, capsys):
    raw = tiny_suite_dict(name="kd_tiny", groups=[["cifar_resnet14", "cifar_resnet8"]], methods=["kd"], seeds=[0])
    path = tmp_path / "kd.yaml"
    path.write_text(yaml.safe_dump(raw))
    (cell,) = load_suite(path).cells
    store = ResultStore(tmp_path / "results")
    store.put({"hash": cell.hash, "cell": cell.to_dict(), "status": "ok"})
    assert main(["analyze", str(path), "--results", str(store.root), "--reports", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip()
    assert "stage weights not found" in err and "\n" not in err


def test_the_papers_numbers_sit_beside_ours_in_the_analysis(tmp_path, monkeypatch):
    """ACKD Table 1's rows name [teacher, proxy, student]; ours are [teacher, student]: matched on the method and
    the outer networks, each of our columns beside the paper's key of the same roles (cka_teacher_proxy: cka_tp)."""
    import harness.reporting.analysis as analysis
    from harness.reporting.analysis import analyze_suite, paper_key

    assert [paper_key(c) for c in ("acc_proxy", "cka_teacher_proxy", "kl_proxy_student")] == ["acc_p", "cka_tp", "kl_ps"]
    suite = load_suite("suites/ackd_table1.yaml")
    eskd = next(c for c in suite.cells if c.method == "eskd" and c.seed == 0)
    store = ResultStore(tmp_path / "results")
    store.put({"hash": eskd.hash, "cell": eskd.to_dict(), "status": "ok"})
    ours = {"acc_teacher": 78.0, "acc_proxy": 77.3, "cka_teacher_proxy": 0.8, "kl_teacher_proxy": 0.6}
    monkeypatch.setattr(analysis, "analyze_cell", lambda cell, *a, **k: {
        "method": cell.label, "group": cell.group_name, "seed": cell.seed, "hash": cell.hash, **ours})
    analyze_suite(suite, store, tmp_path / "rep")
    md = (tmp_path / "rep" / "ackd_table1_analysis.md").read_text()
    assert "78.00 (78.91, -0.91)" in md and "77.30 (76.30, +1.00)" in md  # ESKD's row, not TAKD's (76.78)
    assert "0.8000 (0.7761, +0.0239)" in md and "0.6000 (0.6627, -0.0627)" in md
    assert "In parentheses: ackd_table1 and ours − paper." in md
