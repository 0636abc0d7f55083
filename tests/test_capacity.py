"""A cell that cannot fit the GPU memory its resources ask for is refused before any trial starts (one line:
the cell, the estimate, what was asked, how to fix it); the estimate is what autograd really keeps."""
import pytest
import timm
import torch

from harness.cli import main
from harness.config.cell import Cell
from harness.costs.capacity import capacity_errors
from harness.suite.schema import load_suite
from harness.suite.spec import Resources
from harness.suite.smoke import smoke_suite
from harness.costs.memory import GIB, _network_figures, cell_memory

from tests.helpers import cli, tiny_suite_dict


def saved_bytes_on_cpu(model: str, images: int) -> int:
    """Bytes of the distinct tensors autograd saves in one real forward pass on the CPU (counted by storage)."""
    net = timm.create_model(model, num_classes=100)
    net.train()
    storages = {}

    def keep(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        net(torch.randn(images, 3, 32, 32))
    return sum(storages.values())


@pytest.mark.parametrize("model", ["cifar_resnet20", "cifar_mobilenetv2_x0_5", "cifar_shufflenetv1", "cifar_vgg8",
                                   "cifar_wrn_16_1", "cifar_resnet110_bottleneck"])
def test_meta_estimate_matches_what_autograd_keeps_on_a_real_forward(model):
    """One network of each family of the zoo (the estimate runs batch norm as a per-channel scale: the same
    batch-sized tensor kept, harness.models.meta)."""
    per_image, params = _network_figures(model, (3, 32, 32), 100)
    # per image: what two more images add, on real tensors (the weights autograd also keeps are not per image)
    assert per_image == (saved_bytes_on_cpu(model, 6) - saved_bytes_on_cpu(model, 4)) / 2
    assert params == sum(p.numel() for p in timm.create_model(model, num_classes=100).parameters())


def imagenet_cell(group=("resnet50", "resnet18"), batch=2048) -> Cell:
    return Cell(method="ind", hparams={}, group=group, dataset={"name": "imagenet"},
                recipe={"batch_size": batch, "epochs": 1, "augment": {"train_size": 224}}, seed=0)


def test_activations_scale_with_the_micro_batch_and_weights_do_not():
    one = cell_memory(imagenet_cell())
    eight = cell_memory(imagenet_cell(), workers=4, grad_accumulation=2)
    assert (one.micro_batch, eight.micro_batch) == (2048, 256)
    assert one.activation_bytes == 8 * eight.activation_bytes
    assert one.state_bytes == eight.state_bytes
    # a ResNet-50 + ResNet-18 pair at KDCL's batch: hundreds of GiB, far beyond any one GPU
    assert 150 < one.total_bytes / GIB < 300


def kdcl_like(write_suite, **resources):
    suite = tiny_suite_dict(
        dataset={"name": "imagenet"}, groups=[["resnet50", "resnet18"]], methods=["ind"], seeds=[0],
        recipe={"base": "kdcl_imagenet_resnet"}, resources=resources)
    return write_suite(suite)


def test_a_cell_that_does_not_fit_is_refused_in_one_line_with_the_fix(write_suite):
    path = kdcl_like(write_suite, cpu=8, gpu=1)
    lines = capacity_errors(load_suite(path))
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}: resources: ind resnet50+resnet18 seed 0 at batch 2048 needs an estimated")
    assert "a worker has 80 GiB (gpu 1 × gpu_memory_gb 80)" in lines[0]
    assert "workers × grad_accumulation to 4 or more (e.g. resources: {workers: 4, grad_accumulation: 1})" in lines[0]
    # the suggested split fits, and so does the same split as accumulation on one GPU
    assert capacity_errors(load_suite(kdcl_like(write_suite, workers=8, gpu_per_worker=1, cpu_per_worker=8))) == []
    assert capacity_errors(load_suite(kdcl_like(write_suite, gpu=1, grad_accumulation=8))) == []
    # a bigger GPU is also a fix
    assert capacity_errors(load_suite(kdcl_like(write_suite, gpu=1, gpu_memory_gb=1000))) == []


def test_cpu_trials_are_not_checked_against_gpu_memory(write_suite):
    assert capacity_errors(load_suite(kdcl_like(write_suite, cpu=8))) == []


def test_a_batch_that_does_not_split_evenly_is_refused(write_suite):
    lines = capacity_errors(load_suite(kdcl_like(write_suite, workers=3, cpu_per_worker=1)))
    assert len(lines) == 1 and "(2048) does not split into workers × grad_accumulation = 3 × 1 equal parts" in lines[0]


def test_validate_and_run_refuse_it_before_ray_starts(write_suite, tmp_path, capfd):
    import ray

    path = kdcl_like(write_suite, cpu=8, gpu=1)
    for command in (["validate", str(path)], ["run", str(path), "--results", str(tmp_path / "r")]):
        assert main(command) == 2  # not through cli(), which would disconnect a Ray this must not have started
        err = capfd.readouterr().err
        errors = [line for line in err.splitlines() if line.strip() and "Warning" not in line]
        assert len(errors) == 1 and "needs an estimated" in errors[0] and "Traceback" not in err
    assert not (tmp_path / "r").exists() and not ray.is_initialized()  # refused before anything was written or started


def test_resources_per_worker_names_and_their_conflicts():
    r = Resources(workers=8, gpu_per_worker=1, cpu_per_worker=8)
    assert (r.cpu, r.gpu, r.replicas) == (8, 1, 8)
    with pytest.raises(ValueError, match="give cpu or cpu_per_worker"):
        Resources(cpu=1, cpu_per_worker=2)


def test_smoke_runs_one_worker(write_suite):
    suite = smoke_suite(load_suite(kdcl_like(write_suite, workers=8, gpu_per_worker=1, cpu_per_worker=8)))
    assert suite.spec.resources.replicas == 1
    assert "1 worker in place of 8 × 1" in suite.spec.title


def test_validate_prints_the_cost_divided_across_workers(write_suite, tmp_path, capfd):
    """The same cell on 8 workers: the same GPU-hours, an eighth of the wall time, an eighth of the activations."""
    import re

    from harness.costs.rates import cell_gpu_hours

    def validate(**resources):
        path = kdcl_like(write_suite, **resources)
        code, out, err = cli(capfd, "validate", path, "--results", tmp_path / "none")
        assert code == 0, err
        found = re.search(r"est\. ([\d.]+) GPU-h \(longest cell ([\d.]+) h on (.*?)\), ([\d.]+) GiB per worker", out)
        assert found, out
        return float(found[1]), float(found[2]), found[3], float(found[4]), load_suite(path)

    one = validate(cpu=8, gpu=1, grad_accumulation=8)
    eight = validate(workers=8, gpu_per_worker=1, cpu_per_worker=8)
    assert one[0] == eight[0] == pytest.approx(cell_gpu_hours(one[4].cells[0]), abs=0.05)
    assert one[1] == pytest.approx(one[0], abs=0.05) and eight[1] == pytest.approx(eight[0] / 8, abs=0.05)
    assert (one[2], eight[2]) == ("1 GPU", "8 workers × 1 GPU")
    assert eight[3] == pytest.approx(one[3], rel=0.01)  # same images per pass: 2048 / 8 either way


@pytest.mark.parametrize("group,batch,memory", [(["cifar_resnet32", "cifar_resnet32"], 64, 80),
                                                 (["cifar_wrn_40_2", "cifar_wrn_40_2"], 1024, 24)])
def test_gpu_auto_packs_as_many_cells_as_the_largest_estimate_allows(write_suite, group, batch, memory, capfd):
    """``gpu: auto``: 1/k of a GPU per cell, k the copies of the largest cell (estimate × 1.25 + a 0.5 GiB CUDA
    context) that fit the GPU's memory, at most 8; said in words by ``harness validate``."""
    recipe = {**tiny_suite_dict()["recipe"], "batch_size": batch}
    path = write_suite(tiny_suite_dict(dataset={"name": "cifar100"}, groups=[group], seeds=[0], recipe=recipe,
                                       resources={"cpu": 1, "gpu": "auto", "gpu_memory_gb": memory}))
    suite = load_suite(path)
    largest = max(cell_memory(c).total_bytes for c in suite.cells) / GIB
    k = max(1, min(8, int(memory // (largest * 1.25 + 0.5))))
    assert suite.spec.resources.gpu == pytest.approx(1 / k)
    assert f"gpu: auto → {k} cell(s) per {memory} GB GPU (largest cell {largest:.1f} GiB" in suite.spec.resources.packing
    assert capacity_errors(suite) == []  # the share it chose fits
    code, out, err = cli(capfd, "validate", path)
    assert code == 0 and f"gpu: auto → {k} cell(s)" in out, err
