"""``dataset.label_noise`` (issue 18's noisy-label quickstart): symmetric noise on the training labels only, one
fixed draw for every cell and seed, hashed only where set, and an out-of-range rate refused in one line."""
import numpy as np
import pytest
import torch

from harness.data.datasets import load_dataset, symmetric_label_noise
from harness.suite.schema import SuiteError, load_suite

from tests.helpers import tiny_suite_dict


def test_symmetric_noise_flips_the_expected_share_to_uniform_classes():
    y = torch.arange(20_000) % 10
    noisy = symmetric_label_noise(y, 0.4, 10)
    changed = (noisy != y).float().mean().item()
    assert changed == pytest.approx(0.4 * 9 / 10, abs=0.015)  # a redrawn label is right 1 time in 10
    wrong = noisy[noisy != y]
    counts = torch.bincount(wrong, minlength=10).float()
    assert counts.min() / counts.max() > 0.85  # the wrong labels spread over every class
    assert torch.equal(symmetric_label_noise(y, 0.4, 10), noisy)  # one fixed draw
    assert not torch.equal(symmetric_label_noise(y, 0.4, 10, seed=1), noisy)
    assert torch.equal(symmetric_label_noise(y, 0.0, 10), y) and torch.equal(y, torch.arange(20_000) % 10)
    as_numpy = symmetric_label_noise(np.asarray(y), 0.4, 10)
    assert isinstance(as_numpy, np.ndarray) and (as_numpy == noisy.numpy()).all()


def test_only_the_training_labels_of_the_subset_are_noisy():
    spec = {"name": "fashion_mnist_mini", "train_per_class": 30, "test_per_class": 20}
    clean, noisy = load_dataset(spec), load_dataset({**spec, "label_noise": 0.4})
    assert torch.equal(clean.train_x, noisy.train_x) and torch.equal(clean.test_y, noisy.test_y)
    share = (clean.train_y != noisy.train_y).float().mean().item()
    assert 0.25 < share < 0.47  # 300 labels, 36 % expected
    assert torch.equal(noisy.train_y, symmetric_label_noise(clean.train_y, 0.4, 10))


def test_the_rate_is_hashed_only_where_set_and_checked(write_suite):
    plain = load_suite(write_suite(tiny_suite_dict(), "a.yaml")).cells
    noisy = load_suite(write_suite(tiny_suite_dict(dataset={**tiny_suite_dict()["dataset"], "label_noise": 0.2}),
                                   "b.yaml")).cells
    assert all("label_noise" not in c.dataset for c in plain)
    assert {c.hash for c in plain}.isdisjoint(c.hash for c in noisy)
    with pytest.raises(SuiteError) as caught:
        load_suite(write_suite(tiny_suite_dict(dataset={**tiny_suite_dict()["dataset"], "label_noise": 1.5}), "c.yaml"))
    (line,) = caught.value.lines
    assert "dataset.label_noise" in line and "less than 1" in line and "c.yaml" in line
