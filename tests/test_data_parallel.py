"""A cell split over data-parallel workers trains as the same cell in one process: two gloo workers with one pass
each make the same updates as one process accumulating the same two parts (to float tolerance, for methods with
per-sample state too), and gradient accumulation equals the big batch where nothing depends on how a batch is cut.
The workers here are plain torch.distributed processes; the Ray Train path is tests/test_cluster.py."""
import harness  # noqa: F401  (first: the torchvision shim)
import os

import pytest
import timm
import torch

import harness.models  # noqa: F401
from harness.config.cell import Cell
from harness.data.batches import Batch
from harness.suite.schema import load_suite
from harness.training.engine import Runtime, Trainer
from harness.training.method import Method
from harness.training.parallel import Replicas, SharedStep

from tests.helpers import gloo_ranks, tiny_suite_dict

RUNTIME = Runtime(device="cpu", channels_last=False)


def cells(write_suite, tmp_path) -> list[Cell]:
    teacher = tmp_path / "teacher.pt"
    torch.manual_seed(0)
    torch.save(timm.create_model("cifar_resnet8", num_classes=10, in_chans=1).state_dict(), teacher)
    suite = tiny_suite_dict(
        dataset={"name": "fashion_mnist_mini", "train_per_class": 12, "test_per_class": 10},
        methods=["ind", "dml", {"name": "dml", "update": "sequential", "label": "dml-seq"},
                 {"name": "kdcl", "target": "general", "val_per_class": 2},
                 {"name": "tsb", "warmup_epochs": 0},
                 {"name": "crd", "teacher_checkpoint": str(teacher), "feat_dim": 16, "num_negatives": 32}],
        seeds=[0])
    # and one through the standard (DataLoader) path, where each worker decodes only its rows
    standard = tiny_suite_dict(dataset={"name": "fashion_mnist_mini", "train_per_class": 12, "test_per_class": 10,
                                        "pipeline": "standard"}, methods=["dml"], seeds=[0])
    return load_suite(write_suite(suite)).cells + load_suite(write_suite(standard, "standard.yaml")).cells


def _rank(rank: int, world: int, cells: list[tuple[dict, int]], out: str) -> None:
    for i, (cell, accumulation) in enumerate(cells):
        trainer = Trainer(Cell.from_dict(cell), RUNTIME, Replicas(rank=rank, world=world, accumulation=accumulation))
        trainer.run()
        torch.save(state_of(trainer), os.path.join(out, f"{i}.{rank}.pt"))


def state_of(trainer: Trainer) -> dict:
    return {"params": {k: v.detach().clone() for k, v in trainer.method.modules.named_parameters()},
            "history": trainer.history, "ddp": trainer.ddp is not None}


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_two_workers_update_as_one_process_accumulating_their_parts(write_suite, tmp_path):
    """Joint updates reduce their gradients through torch's DDP during the backward pass and equal one process;
    the other update orders (DML's sequential one here) average by hand after it, and keep the workers' networks
    equal (no one-process run is their equal: accumulated passes would update only after the last).  A DML cell
    also runs as 2 workers × 2 accumulated passes (DDP's no_sync in the first) against one process accumulating 4."""
    grid = [(cell, 1) for cell in cells(write_suite, tmp_path)]
    grid.append((grid[1][0], 2))
    # forked: the workers start with everything imported (spawned, each spent 5-7 s importing torch and timm)
    assert gloo_ranks(_rank, [(c.to_dict(), a) for c, a in grid], str(tmp_path)) == [0, 0]
    for i, (cell, accumulation) in enumerate(grid):
        ddp, other = torch.load(tmp_path / f"{i}.0.pt"), torch.load(tmp_path / f"{i}.1.pt")
        sequential = cell.hparams.get("update") == "sequential"
        assert ddp["ddp"] == (not sequential), cell.describe()
        assert all(torch.equal(ddp["params"][k], other["params"][k]) for k in ddp["params"]), cell.describe()
        if sequential:
            continue
        alone = Trainer(cell, RUNTIME, Replicas(accumulation=2 * accumulation))
        alone.run()
        one = state_of(alone)
        assert ddp["params"].keys() == one["params"].keys()
        worst = max((ddp["params"][k] - one["params"][k]).abs().max().item() for k in one["params"])
        last_ddp, last_one = ddp["history"][-1], one["history"][-1]
        assert last_ddp.keys() == last_one.keys()
        if cell.method == "crd":
            # CRD draws its negatives from each process's random stream and sets its NCE constant Z from its own
            # first part, so the two ways differ as two random draws do: measured 1-4 % on these losses
            for key in (k for k in last_one if k.startswith("loss/")):
                assert last_ddp[key] == pytest.approx(last_one[key], rel=0.1), key
            continue
        assert worst < 1e-5, (cell.describe(), accumulation, worst)  # measured: 0.0 (the same sums in the same order), and
        # 2.5e-7 for 2 × 2 passes (the four parts' gradients added in another order)
        for key in (k for k in last_one if k.startswith(("loss/", "top1/", "top5/"))):
            assert last_ddp[key] == pytest.approx(last_one[key], rel=1e-5, abs=1e-6), (cell.method, key)


class Linear(Method):
    """Two linear peers on flattened images (no batch norm): nothing depends on how a batch is cut."""

    def build(self):
        torch.manual_seed(0)
        return torch.nn.ModuleDict({"peers": torch.nn.ModuleList(torch.nn.Linear(8, 3) for _ in range(2))})

    def losses(self, batch, step):
        return {f"ce/net{k + 1}": torch.nn.functional.cross_entropy(p(batch.x), batch.y)
                for k, p in enumerate(self.peers)}


def test_gradient_accumulation_equals_the_big_batch():
    from tests.helpers import fixed_context

    def trained(accumulation: int) -> list[torch.Tensor]:
        method = Linear(Method.HParams(), fixed_context([[[0.0]]] * 2, 3))
        optimizer = torch.optim.SGD(method.modules.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
        method.optimizers["peers"] = SharedStep(optimizer, Replicas(accumulation=accumulation))
        generator = torch.Generator().manual_seed(1)
        for _ in range(3):
            batch = Batch([torch.randn(12, 8, generator=generator)], torch.randint(3, (12,), generator=generator),
                          torch.arange(12))
            passes = Replicas(accumulation=accumulation).passes(batch)
            for k, part in enumerate(passes):
                method.optimizers["peers"].pass_index, method.optimizers["peers"].passes = k, len(passes)
                method.train_step(part, None)
        return [p.detach() for p in method.modules.parameters()]

    big = trained(1)
    for accumulation in (2, 3, 4):
        for a, b in zip(big, trained(accumulation)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_batch_is_cut_into_contiguous_parts_and_a_tiny_one_is_skipped_by_all():
    batch = Batch([torch.arange(10.0)[:, None]], torch.arange(10), torch.arange(10))
    parts = [p for rank in range(2) for p in Replicas(rank=rank, world=2, accumulation=2).passes(batch)]
    assert [p.index.tolist() for p in parts] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert all(Replicas(rank=r, world=2, accumulation=2).passes(Batch([torch.zeros(7, 1)], torch.zeros(7), torch.zeros(7))) == []
               for r in range(2))


def test_sync_bn_is_a_new_cell_refused_on_cpu_workers(write_suite):
    """SyncBN (torch's SyncBatchNorm) runs on GPUs only: asked for on CPU workers it is one line before any trial,
    and one clear error in a trainer; where it is off, no cell changes its hash."""
    from harness.costs.capacity import capacity_errors

    plain = tiny_suite_dict(methods=["dml"], seeds=[0], resources={"workers": 2, "cpu_per_worker": 1})
    synced = {**plain, "recipe": {**plain["recipe"], "sync_bn": True}}
    explicit_off = {**plain, "recipe": {**plain["recipe"], "sync_bn": False}}
    cell, synced_cell, off_cell = (load_suite(write_suite(s, f"s{i}.yaml")).cells[0]
                                   for i, s in enumerate((plain, synced, explicit_off)))
    assert off_cell.hash == cell.hash != synced_cell.hash
    (line,) = capacity_errors(load_suite(write_suite(synced, "s1.yaml")))
    assert "recipe.sync_bn" in line and "GPUs only" in line and "s1.yaml" in line
    with pytest.raises(ValueError, match="recipe.sync_bn needs GPUs"):
        Trainer(synced_cell, RUNTIME, Replicas(rank=0, world=2))
    # one process: nothing to synchronise, the networks keep their batch norm
    trainer = Trainer(synced_cell, RUNTIME)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in trainer.method.modules.modules())


def test_the_parts_of_a_shard_are_the_parts_torch_cuts_from_the_whole_batch():
    """Shard's arithmetic: worker r's rows, cut into its passes, are parts r·a … r·a+a−1 of torch.tensor_split of
    the global batch, for every size, world and accumulation; a batch is trained only where every part has 2."""
    from harness.data.batches import Shard

    for world, accumulation in [(1, 2), (2, 1), (2, 2), (3, 2), (4, 1)]:
        for n in range(2, 40):
            whole = Batch([torch.arange(n)[:, None].float()], torch.arange(n), torch.arange(n))
            expected = torch.tensor_split(torch.arange(n), world * accumulation)
            for rank in range(world):
                replicas = Replicas(rank=rank, world=world, accumulation=accumulation)
                mine = Shard(rank, world, accumulation).rows(n)
                shard = Batch([v[mine] for v in whole.views], whole.y[mine], whole.index[mine], total=n)
                trained = n >= 2 * world * accumulation
                for given in (whole, shard):
                    parts = [p.index.tolist() for p in replicas.passes(given)]
                    assert parts == ([expected[rank * accumulation + k].tolist() for k in range(accumulation)]
                                     if trained else []), (world, accumulation, n, rank)


def test_each_worker_loads_and_decodes_only_its_rows_and_its_test_batches():
    """The input split, counted: with 2 workers each decodes half of every training batch (its rows, bit for bit
    those of the one-process batch) and every other test batch; the fast path gives each its rows alike."""
    from harness.config.recipe import AugmentSpec
    from harness.data.batches import Normalize, Shard, TrainBatches
    from harness.data.pipelines import ImageSet, ImageTransform, StandardBatches

    class Counting(ImageSet):
        def image(self, i):
            self.decoded.append(i)
            return super().image(i)

    torch.manual_seed(0)
    images, labels = torch.randint(0, 256, (30, 3, 8, 8), dtype=torch.uint8), torch.arange(30) % 3
    spec = AugmentSpec(crop_padding=2, flip=True, lighting=0.1, cutout=3)

    def standard(shard, train=True):
        data = Counting(images, labels, ImageTransform(spec, (0.5,) * 3, (0.25,) * 3, (8, 8), train), views=2)
        data.decoded = []
        batches = StandardBatches(data, 8 if train else 7, seed=1, device=torch.device("cpu"), channels_last=False,
                                  shard=shard)
        return list(batches.epoch(2) if train else batches.evaluate()), data.decoded

    def fast(shard):
        return list(TrainBatches(images, labels, 8, Normalize((0.5,) * 3, (0.25,) * 3, "cpu", False), seed=1,
                                 crop_padding=2, flip=True, cutout=3, views=2, shard=shard).epoch(2))

    one, decoded = standard(Shard())
    assert len(decoded) == 30  # each image once (its two views are drawn from one decoded image)
    for rank in range(2):
        mine, decoded = standard(Shard(rank, 2))
        assert len(decoded) == 15  # batches of 8, 8, 8, 6: 4 + 4 + 4 + 3 images
        assert [len(b) for b in mine] == [4, 4, 4, 3] and [b.global_size for b in mine] == [8, 8, 8, 6]
        for whole, part in zip(one, mine):
            rows = Shard(rank, 2).rows(len(whole))
            assert torch.equal(whole.index[rows], part.index)
            assert all(torch.equal(a[rows], b) for a, b in zip(whole.views, part.views))
        tested, decoded = standard(Shard(rank, 2), train=False)
        assert [b.index[0].item() for b in tested] == [0, 14, 28] if rank == 0 else [7, 21]
        assert len(decoded) == (16 if rank == 0 else 14)  # test batches of 7, 7, 7, 7, 2: every other one
    whole_fast = fast(Shard())
    for rank in range(2):
        for whole, part in zip(whole_fast, fast(Shard(rank, 2))):
            rows = Shard(rank, 2).rows(len(whole))
            assert part.global_size == len(whole) and torch.equal(whole.index[rows], part.index)
            assert all(torch.equal(a[rows], b) for a, b in zip(whole.views, part.views))
