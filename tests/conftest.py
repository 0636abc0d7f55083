import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import harness  # noqa: E402,F401  (torchvision shim before anything imports timm)
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

TINY_RECIPE = {
    "epochs": 2, "batch_size": 32,
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4},
    "schedule": {"name": "cosine"}, "augment": {"crop_padding": 2, "flip": True},
}


def tiny_suite_dict(**overrides) -> dict:
    """A suite small enough to train in seconds: ResNet-8 pair, 20 images per class, 2 epochs."""
    suite = {
        "name": "tiny",
        "dataset": {"name": "fashion_mnist_mini", "train_per_class": 10, "test_per_class": 10},
        "groups": [["cifar_resnet8", "cifar_resnet8"]],
        "methods": ["ind", {"name": "dml", "temperature": 2}],
        "seeds": [0, 1],
        "recipe": TINY_RECIPE,
        "resources": {"cpu": 1},
    }
    suite.update(overrides)
    return suite


@pytest.fixture
def write_suite(tmp_path):
    """Write a suite mapping (or raw text) to a YAML file and return its path."""

    def write(content, name="suite.yaml"):
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks run fastest on one thread, above all on a CPU shared with other jobs (restored after); a
    module asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
