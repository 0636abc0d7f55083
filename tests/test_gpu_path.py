"""Defects of the GPU path, each reproduced by its mechanism on this CPU-only machine: what CUDA would do is
patched in (CUDA reported available, Ray's environment as 2.60 leaves it), fp16 runs through the CPU's
gradient scaler, collectives run on gloo."""
import dataclasses

import pytest
import torch

from harness.scheduling.trainable import _runtime
from harness.training.engine import Runtime


def test_a_trial_without_a_gpu_trains_on_the_cpu_where_cuda_is_visible(monkeypatch):
    """Ray 2.60 leaves CUDA_VISIBLE_DEVICES unset for an actor that asked for no GPU, so CUDA is visible to it and
    device auto (or Ray Train's get_device(), cuda:0) would put the trial on GPU 0."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    given = Runtime()
    assert _runtime(given, "r", cpus=1, gpus=0).torch_device() == torch.device("cpu")
    assert _runtime(given, "r", cpus=1, gpus=0, device="cuda:0").torch_device() == torch.device("cpu")  # Ray Train's
    assert _runtime(given, "r", cpus=1, gpus=1).torch_device() == torch.device("cuda")
    assert _runtime(given, "r", cpus=1, gpus=0.25).torch_device() == torch.device("cuda")
    assert _runtime(given, "r", cpus=1, gpus=1, device="cuda:0").torch_device() == torch.device("cuda:0")
    # a device the run named (harness run --device) is the user's choice
    assert _runtime(Runtime(device="cuda:1"), "r", cpus=1, gpus=0).torch_device() == torch.device("cuda:1")


@pytest.mark.parametrize("method", [{"name": "dml", "update": "sequential"},
                                    {"name": "amln", "update": "sequential", "use_feature": False}])
def test_fp16_peers_updated_one_after_another_train(write_suite, method):
    """Each peer's update steps the same optimizer (and AMLN's discriminators theirs) again within one step: a
    second GradScaler.step before update() raised on the first step ("step() has already been called since the
    last update()"), on the CPU's scaler as on CUDA's."""
    from harness.suite.schema import load_suite
    from harness.training.engine import Runtime, Trainer
    from tests.helpers import TINY_DATA, TINY_RECIPE, tiny_suite_dict

    suite = tiny_suite_dict(methods=[method], seeds=[0], dataset=TINY_DATA,
                            recipe={**TINY_RECIPE, "epochs": 1, "precision": "fp16"})
    trainer = Trainer(load_suite(write_suite(suite)).cells[0], Runtime(device="cpu"))
    trainer.run()
    assert trainer.scaler is not None and trainer.scaler.get_scale() > 0
    losses = {k: v for k, v in trainer.history[-1].items() if k.startswith("loss/")}
    assert losses and all(v == v and abs(v) < float("inf") for v in losses.values()), losses


def test_an_fp16_bench_times_its_steps(write_suite):
    """harness bench stepped the method without ever settling the scale: every fp16 bench raised at its second
    step. It now times the engine's own step."""
    from harness.suite.schema import load_suite
    from harness.costs.bench import Timing, time_steps
    from harness.training.engine import Runtime, Trainer
    from tests.helpers import TINY_DATA, TINY_RECIPE, tiny_suite_dict

    suite = tiny_suite_dict(methods=["dml"], seeds=[0], dataset=TINY_DATA, recipe={**TINY_RECIPE, "precision": "fp16"})
    trainer = Trainer(load_suite(write_suite(suite)).cells[0], Runtime(device="cpu"))
    assert time_steps(trainer, Timing(steps=1, warmup=1, min_seconds=0)) > 0  # the second step raised


def _sync_rank(rank: int, world: int, config: dict) -> None:
    from harness.scheduling.trainable import _train
    from harness.scheduling.trial import TrialConfig
    from harness.training.parallel import Replicas

    _train(TrialConfig.decode(config), Replicas(rank=rank, world=world), 1, 0, f"rank {rank}", None,
           lambda trainer, metrics: None)


def test_a_data_parallel_cell_whose_forward_synchronises_ends_with_its_costs(tmp_path, monkeypatch):
    """SyncBatchNorm all-gathers in every training forward, and the cost of a step is counted on a training
    forward after the last epoch: counted by rank 0 alone, it waited for ranks that had returned (NCCL: until its
    30-minute timeout, then again after each restart). Here a forward that all-reduces, on two gloo ranks."""
    import torch.distributed as dist

    from harness.results.store import ResultStore
    from harness.training import step_cost
    from tests.helpers import gloo_ranks, tiny_cell

    counted = step_cost.training_forward_macs

    def synchronising(method, batch, step):
        dist.all_reduce(torch.ones(1))  # what SyncBatchNorm's forward does with its statistics
        return counted(method, batch, step)

    monkeypatch.setattr(step_cost, "training_forward_macs", synchronising)  # inherited by the forked ranks
    cell = tiny_cell("ind", epochs=1)
    config = {"cell": cell.to_dict(), "results": str(tmp_path / "results"), "runtime": {"device": "cpu"}}
    codes = gloo_ranks(_sync_rank, config, timeout=120)
    assert codes == [0, 0], codes
    record = ResultStore(tmp_path / "results").get(cell.hash)
    assert record["status"] == "ok" and record["costs"]["train_forward_macs_per_image"] > 0, record.get("costs")


@pytest.mark.parametrize("share", [0.5, 2])
def test_a_data_parallel_worker_asks_for_one_whole_gpu(write_suite, tmp_path, capfd, share):
    """A share of a GPU per worker let Ray put two ranks on one GPU (NCCL: "Duplicate GPU detected"); two GPUs per
    worker left the second idle (a worker trains on one device). Refused before anything starts, in one line."""
    from tests.helpers import cli, tiny_suite_dict

    path = write_suite(tiny_suite_dict(seeds=[0], resources={"workers": 2, "gpu_per_worker": share,
                                                             "cpu_per_worker": 1}))
    code, out, err = cli(capfd, "validate", path, "--results", tmp_path / "none")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert str(path) in lines[0] and "resources" in lines[0] and "gpu_per_worker is 0 or 1 where workers > 1" in lines[0]


def test_gpu_auto_gives_each_data_parallel_worker_a_whole_gpu(write_suite):
    from harness.suite.schema import load_suite
    from tests.helpers import tiny_suite_dict

    auto = load_suite(write_suite(tiny_suite_dict(seeds=[0], resources={"workers": 2, "gpu": "auto"})))
    assert auto.spec.resources.gpu == 1.0 and "1 GPU per worker" in auto.spec.resources.packing
    one = load_suite(write_suite(tiny_suite_dict(seeds=[0], resources={"gpu": "auto"})))
    assert one.spec.resources.gpu < 1  # a tiny cell alone still shares a GPU


def test_the_standard_path_copies_without_blocking_and_leaves_cuda_unseeded(monkeypatch):
    """Every host-to-device copy of a batch is non-blocking (a blocking index copy synchronised the stream every
    step), and the per-image seeds of the standard path reseed the CPU generator only (torch.manual_seed reseeded
    CUDA too, which the loop does not restore: the GPU's random numbers depended on the number of loader workers)."""
    from harness.config.recipe import AugmentSpec
    from harness.data.pipelines import ImageSet, StandardBatches, ImageTransform

    copies, cuda_seeds = [], []
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        if (args and isinstance(args[0], (torch.device, str))) or "device" in kwargs:  # a copy to a device
            copies.append(kwargs.get("non_blocking", False))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: cuda_seeds.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: cuda_seeds.append(seed))
    images, labels = torch.zeros(12, 1, 8, 8, dtype=torch.uint8), torch.arange(12) % 3
    tf = ImageTransform(AugmentSpec(crop_padding=2, flip=True), (0.5,), (0.25,), (8, 8), train=True)
    batches = StandardBatches(ImageSet(images, labels, tf), 4, seed=0, device=torch.device("cpu"),
                              channels_last=False)
    copies.clear()
    assert len(list(batches.epoch(0))) == 3
    assert copies and all(copies), copies
    assert cuda_seeds == []


def test_the_deterministic_switch_sets_every_flag_is_recorded_and_is_not_hashed(write_suite, monkeypatch):
    """resources.deterministic: cuDNN deterministic without autotuning, torch's deterministic algorithms and
    cuBLAS's fixed workspace (what makes CUDA re-runs bit-identical, measured on an H200); the flags are in every
    record's hardware; the cell is the same cell. On the CPU two runs under it are equal, as without it."""
    from harness.results.provenance import hardware
    from harness.suite.schema import load_suite
    from harness.training.engine import Runtime, Trainer, set_determinism
    from tests.helpers import TINY_DATA, TINY_RECIPE, tiny_suite_dict

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    raw = tiny_suite_dict(methods=["dml"], seeds=[0], dataset=TINY_DATA, recipe={**TINY_RECIPE, "epochs": 1})
    plain = load_suite(write_suite(raw))
    switched = load_suite(write_suite({**raw, "resources": {"cpu": 1, "deterministic": True}}))
    assert switched.spec.resources.deterministic and switched.cells[0].hash == plain.cells[0].hash
    try:
        runs = []
        for _ in range(2):
            trainer = Trainer(switched.cells[0], Runtime(device="cpu", deterministic=True))
            trainer.run()
            runs.append(trainer.method.modules.state_dict())
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
        import os
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert hardware("cpu")["numerics"] == {"cudnn_benchmark": False, "cudnn_deterministic": True,
                                               "deterministic_algorithms": True,
                                               "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                                               "tf32_cudnn": torch.backends.cudnn.allow_tf32}
        assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
        Trainer(plain.cells[0], Runtime(device="cpu"))  # the next trainer in this process is as it asks
        assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
        assert hardware("cpu")["numerics"]["deterministic_algorithms"] is False
    finally:
        set_determinism(Runtime())


def test_a_data_parallel_cell_the_cluster_cannot_place_with_its_driver_is_refused(write_suite, monkeypatch):
    """2 workers × 1 CPU on a 2-CPU instance: the trial that drives them holds 0.01 CPU too, so the workers were
    never placed and the run waited forever (Ray Train retrying every minute). Refused in one line instead."""
    import ray

    from harness.scheduling.runner import ResourceError, _check_resources
    from harness.suite.schema import load_suite
    from tests.helpers import tiny_suite_dict

    suite = load_suite(write_suite(tiny_suite_dict(seeds=[0], resources={"workers": 2, "cpu_per_worker": 1})))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    with pytest.raises(ResourceError) as refused:
        _check_resources(suite)
    line = str(refused.value)
    assert "\n" not in line and str(suite.path) in line
    assert "resources.cpu: a trial needs 2.01 CPU(s) (2 workers × 1 and 0.01 for the trial that drives them)" in line
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 3.0})
    _check_resources(suite)  # room for both workers and the driver


@pytest.mark.parametrize("loss", ["sp_loss", "rkd_loss", "pkt_loss", "nst_loss"])
def test_gram_and_pairwise_losses_are_computed_in_fp32_under_autocast(loss):
    """SP, RKD, PKT and NST multiply embeddings or maps with each other (Gram matrices, pairwise distances): in
    fp16 a Gram entry above 65504 overflowed to inf. Under autocast they now run in fp32 on the same inputs, so
    the value is the fp32 computation's exactly."""
    from methods.common import feature_losses

    fn = getattr(feature_losses, loss)
    torch.manual_seed(0)
    shape = (4, 8, 3, 3) if loss == "nst_loss" else (4, 16)
    s, t = (torch.randn(shape) * 3).to(torch.bfloat16), (torch.randn(shape) * 3).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = fn([s] if loss == "nst_loss" else s, [t] if loss == "nst_loss" else t)
    assert value.dtype == torch.float32
    expected = fn([s.float()] if loss == "nst_loss" else s.float(), [t.float()] if loss == "nst_loss" else t.float())
    assert value.item() == expected.item()
    big = torch.full((4, 16), 100.0, dtype=torch.float16)  # ‖s‖² = 160,000 > fp16's 65,504
    if loss == "sp_loss":
        with torch.autocast("cpu", dtype=torch.float16):
            assert torch.isfinite(fn(big, big))


def test_bench_windows_start_after_the_warm_up_and_barrier_last_long_enough_and_keep_the_median():
    """The packed processes met at a barrier before building their trainers (seconds of set-up against 0.2 s
    windows: the windows barely overlapped and the per-device figure was overstated); a window was 20 steps.
    Now: warm-up, then the barrier, then 3 windows of at least the steps and the seconds asked, median kept."""
    import time

    from harness.costs.bench import WINDOWS, Timing, timed

    calls, waited_at = [], []

    class Barrier:
        def wait(self):
            waited_at.append(len(calls))

    def step(i):
        calls.append(i)
        time.sleep(0.002)
        return 10 if len(calls) % 2 else 30  # windows see different mixes: a median, not a mean of steps

    rate = timed(step, Timing(steps=3, warmup=4, min_seconds=0.05), torch.device("cpu"), Barrier())
    assert waited_at == [4]  # after every warm-up step, before any timed one
    timed_steps = len(calls) - 4
    assert timed_steps >= WINDOWS * 0.05 / 0.004  # each window lasted its 0.05 s (steps take 2-4 ms)
    assert 10 / 0.0035 < rate < 30 / 0.002


def test_bench_times_full_batches_only(write_suite):
    """200 images at batch 64 gave batches 64, 64, 64, 8: one timed step in four was a tiny batch of another
    shape (cuDNN autotuning it inside the window, a recompile)."""
    from harness.suite.schema import load_suite
    from harness.costs.bench import _batches
    from harness.training.engine import Runtime, Trainer
    from tests.helpers import TINY_RECIPE, tiny_suite_dict

    suite = tiny_suite_dict(methods=["ind"], seeds=[0], dataset={"name": "fashion_mnist_mini", "train_per_class": 10,
                                                                 "test_per_class": 2})
    trainer = Trainer(load_suite(write_suite(suite)).cells[0], Runtime(device="cpu"))
    assert sorted({len(b) for b in trainer.train_batches.epoch(0)}) == [4, 32]  # 100 images at batch 32
    stream = _batches(trainer)
    assert {len(next(stream)[0]) for _ in range(10)} == {TINY_RECIPE["batch_size"]}


def test_rkd_has_no_data_dependent_shape_so_no_host_sync():
    """RKD normalised its distances by d[d > 0].mean(): a selection whose size depends on the data, which makes a
    GPU step wait for the device (a host sync every step). torch's FakeTensorMode, which computes shapes only,
    refuses exactly such an operation; the loss now runs under it, with CUDA tensors, and equals the selection's."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from methods.common.feature_losses import _normalised_distances, pairwise_distances, rkd_loss

    torch.manual_seed(0)
    e = torch.randn(6, 5)
    d = pairwise_distances(e)
    assert torch.allclose(_normalised_distances(e), d / d[d > 0].mean(), rtol=1e-6)
    with FakeTensorMode():
        s, t = torch.empty(6, 5, device="cuda"), torch.empty(6, 5, device="cuda")
        loss = rkd_loss(s, t)
    assert loss.device.type == "cuda" and loss.shape == ()


def test_a_trial_with_a_share_of_a_gpu_is_capped_to_that_share_of_its_memory(monkeypatch):
    from harness.training.engine import cap_gpu_memory

    capped = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda share, device: capped.append(share))
    cap_gpu_memory(torch.device("cuda:0"), 0.25)
    cap_gpu_memory(torch.device("cuda:0"), 1.0)  # a whole GPU: nothing to share
    cap_gpu_memory(torch.device("cpu"), 0.0)
    assert capped == [0.25]


def test_ray_trains_state_tracking_is_off_without_a_dashboard():
    """Ray Train's state actor polls the dashboard: on a local instance started with --no-dashboard it printed a
    traceback every few seconds while a data-parallel cell trained."""
    from harness.scheduling.runner import RAY_ENV, ray_env

    assert ray_env(None, dashboard=False)["RAY_TRAIN_ENABLE_STATE_TRACKING"] == "0"
    assert ray_env(None, dashboard=True)["RAY_TRAIN_ENABLE_STATE_TRACKING"] == "1"
    assert ray_env("127.0.0.1:6379", dashboard=False)["RAY_TRAIN_ENABLE_STATE_TRACKING"] == "1"  # a cluster's own
    assert RAY_ENV["RAY_TRAIN_ENABLE_STATE_TRACKING"] == "1"  # unchanged for the next run


def test_trials_get_pytorchs_expandable_segments_unless_the_user_set_the_allocator(monkeypatch):
    """Packed trials share a GPU, each capped to its share of its memory: the caching allocator's expandable
    segments keep fragmentation (freed blocks of odd sizes) from pushing one over its cap; a user's own
    PYTORCH_CUDA_ALLOC_CONF reaches the trials unchanged."""
    from harness.scheduling.runner import ray_env

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    assert ray_env(None, dashboard=False)["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    assert ray_env("10.0.0.1:6379", dashboard=True)["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128"


def _gather_rank(rank: int, world: int, out: str) -> None:
    import os

    from harness.training.parallel import Replicas

    import torch.distributed as dist

    syncs, collectives = [], []
    for name in ("item", "tolist"):
        real = getattr(torch.Tensor, name)
        setattr(torch.Tensor, name, lambda self, real=real, name=name: syncs.append(name) or real(self))
    real_all_gather = dist.all_gather
    dist.all_gather = lambda *a, **k: collectives.append("all_gather") or real_all_gather(*a, **k)
    replicas, mine = Replicas(rank=rank, world=world), torch.full((3 + rank, 2), float(rank))
    exchanged = replicas.gather(mine)
    counted = (list(syncs), list(collectives))
    syncs.clear(), collectives.clear()
    known = replicas.gather(mine, sizes=[3, 4])
    try:
        replicas.gather(mine, sizes=[4, 3])
        refused = ""
    except ValueError as e:
        refused = str(e)
    torch.save({"gathered": [exchanged, known], "counted": [counted, (syncs, collectives)], "refused": refused},
               os.path.join(out, f"{rank}.pt"))


def test_gathering_a_per_sample_state_costs_no_host_sync(tmp_path):
    """TSB and CRD gather their per-sample state every step: it cost one .item() per worker and one more (a host
    sync each on a GPU) and two all-gathers.  The sizes of a pass's parts follow from the global batch: the
    trainer passes them, and a gather is one all-gather without a host sync (with unknown sizes, one .tolist());
    a tensor that is not this worker's rows is refused, before any collective."""
    from harness.data.batches import Shard
    from tests.helpers import gloo_ranks

    assert gloo_ranks(_gather_rank, str(tmp_path)) == [0, 0]
    for rank in range(2):
        result = torch.load(tmp_path / f"{rank}.pt")
        for gathered in result["gathered"]:
            assert torch.equal(gathered, torch.cat([torch.zeros(3, 2), torch.ones(4, 2)]))
        (syncs, collectives), (known_syncs, known_collectives) = result["counted"]
        assert syncs == ["tolist"] and collectives == ["all_gather"] * 2, result["counted"]
        assert known_syncs == [] and known_collectives == ["all_gather"], result["counted"]
        assert "(4 rows), got a tensor of 3" in result["refused"] or "(3 rows), got a tensor of 4" in result["refused"]
    # the sizes the trainer passes: pass k of a global batch of 7 cut into 2 workers × 2 passes
    assert [Shard(0, 2, 2).sizes_of_pass(7, k) for k in range(2)] == [[2, 2], [2, 1]]


def _average_rank(rank: int, world: int, out: str) -> None:
    import os

    import torch.distributed as dist

    from harness.training.parallel import Replicas, SharedStep

    syncs, collectives = [], []
    real_tolist, real_all_reduce = torch.Tensor.tolist, dist.all_reduce
    torch.Tensor.tolist = lambda self: syncs.append("tolist") or real_tolist(self)
    dist.all_reduce = lambda *a, **k: collectives.append("all_reduce") or real_all_reduce(*a, **k)
    a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    optimizer = SharedStep(torch.optim.SGD([a, b, c], lr=1.0), Replicas(rank=rank, world=world))
    if rank == 0:
        a.grad = torch.tensor([2.0, 4.0])  # a: a gradient on rank 0 only; b: on none; c: on both
    c.grad = torch.full((2,), float(rank + 1))
    optimizer.step()
    torch.save({"params": [a.detach(), b.detach(), c.detach()], "grads": [a.grad, b.grad, c.grad],
                "counted": (syncs, collectives)}, os.path.join(out, f"{rank}.pt"))


def test_the_hand_written_average_is_one_all_reduce_and_one_host_sync(tmp_path):
    """The update orders DDP cannot express average their gradients by hand after the backward pass: it was two
    all-reduces (flags, then gradients) and a host sync; now one all-reduce (gradients, then a flag per parameter)
    and one host sync.  A parameter with a gradient on one worker gets the mean with zeros; one with none on any
    worker keeps None (the optimizer skips it, as in one process)."""
    from tests.helpers import gloo_ranks

    assert gloo_ranks(_average_rank, str(tmp_path)) == [0, 0]
    for rank in range(2):
        result = torch.load(tmp_path / f"{rank}.pt")
        grad_a, grad_b, grad_c = result["grads"]
        assert torch.equal(grad_a, torch.tensor([1.0, 2.0])) and grad_b is None
        assert torch.equal(grad_c, torch.full((2,), 1.5))
        assert torch.equal(result["params"][1], torch.zeros(2))
        assert result["counted"] == (["tolist"], ["all_reduce"]), result["counted"]


def test_every_shared_loss_runs_on_cuda_tensors_under_fake_tensor_mode():
    """torch's FakeTensorMode computes shapes and devices only, and raises on a data-dependent shape (a host sync)
    or a CPU tensor mixed into a CUDA computation.  Every shared loss of the methods runs under it on CUDA tensors
    here (maps of 2 stages, logits, embeddings), in fp32 and through full_precision: no device mix, no sync.  CRD's
    NCE loss slices its scores, which FakeTensorMode cannot do on CUDA tensors here (the next test)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from methods.common import feature_losses as fl
    from methods.common.losses import distill_kl, soft_targets

    with FakeTensorMode():
        def maps():
            return [torch.empty(4, 8, 8, 8, device="cuda"), torch.empty(4, 16, 4, 4, device="cuda")]

        emb = [torch.empty(4, 32, device="cuda") for _ in range(2)]
        logits = [torch.empty(4, 10, device="cuda") for _ in range(2)]
        losses = {
            "hint": fl.hint_loss(maps()[0], maps()[0]), "at": fl.at_loss(maps(), maps()),
            "nst": fl.nst_loss(maps(), maps()), "sp": fl.sp_loss(maps()[1], maps()[1]),
            "rkd": fl.rkd_loss(*emb), "pkt": fl.pkt_loss(*emb),
            "kl": distill_kl(logits[0], soft_targets(logits[1], 4.0), 4.0),
        }
    for name, loss in losses.items():
        assert loss.device.type == "cuda" and loss.numel() == 1, name


def test_where_fake_tensor_mode_stops_on_this_cpu_only_torch():
    """Where FakeTensorMode stops, measured on this torch (a CPU build): creating CUDA tensors, copying with
    aten._to_copy, views, narrow/split/index_select, convolutions and reductions work; Python indexing of a CUDA
    tensor (t[i], t[a:b], t[index]) and Tensor.to("cuda") raise (and with the latter routed through _to_copy, a
    module's fake parameters still refuse nn.Module.to's swap: they carry weak references).  A whole training step slices its batch and
    indexes its labels, so one step of every method on CUDA cannot run here: that check is `harness doctor`'s on a
    GPU.  If a later torch lifts these limits, this test fails and the step of every method can move here."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(4, 3, 8, 8, device="cuda")
        works = [x.narrow(0, 1, 2), x.view(4, -1), torch.split(x, [1, 3])[0], x.mean(),
                 torch.nn.functional.conv2d(x, torch.empty(5, 3, 3, 3, device="cuda")),
                 x.index_select(0, torch.zeros(2, dtype=torch.long, device="cuda")),
                 torch.ops.aten._to_copy(torch.zeros(2), device="cuda"), torch.tensor([1.0], device="cuda")]
        assert all(t.device.type == "cuda" for t in works)
        for stops in (lambda: x[0], lambda: x[1:3], lambda: x[torch.zeros(2, dtype=torch.long, device="cuda")],
                      lambda: torch.zeros(2).to("cuda")):
            with pytest.raises(RuntimeError, match="not linked with support for cuda"):
                stops()


def test_gpu_auto_packs_by_the_memory_harness_bench_measured(write_suite, tmp_path, capfd, monkeypatch):
    """gpu: auto packs by the analytic estimate until `harness bench` has measured the cell on a GPU (peak reserved
    memory plus the CUDA context, kept in the result store); then by the measurement, which `harness validate`
    and a run both say.  The bench file here is written by the bench's own writer, its hardware patched to a GPU."""
    import harness.reporting.bench as bench_report
    from harness.api import prepare_run
    from harness.costs.rates import bench_memory
    from harness.results.store import ResultStore
    from harness.suite.schema import load_suite
    from harness.costs.bench import Measure
    from tests.helpers import TINY_DATA, cli, tiny_suite_dict

    path = write_suite(tiny_suite_dict(methods=["dml"], seeds=[0], dataset=TINY_DATA,
                                       resources={"cpu": 1, "gpu": "auto", "gpu_memory_gb": 16}))
    suite = load_suite(path)
    assert suite.spec.resources.gpu == 1 / 8 and "estimated" in suite.spec.resources.packing  # a tiny cell
    cell = suite.cells[0]
    store = ResultStore(str(tmp_path / "results"))
    monkeypatch.setattr(bench_report, "hardware", lambda device: {"host": "gpu-node", "gpu": "NVIDIA H200"})
    measured = Measure("separate", cell.describe(), 1, 1000.0, 7 * 2**30, cell_hash=cell.hash)
    other = Measure("packed", cell.describe(), 4, 900.0, 30 * 2**30, cell_hash=cell.hash)  # not one cell alone
    bench_report.save_bench(store, suite, [measured, other], "cuda", 100)
    assert {k: v[0] for k, v in bench_memory(store).items()} == {(cell.hash, "separate"): 7 * 2**30}

    code, out, err = cli(capfd, "validate", path, "--results", tmp_path / "results")
    assert code == 0 and "2 cell(s) per 16 GB GPU (largest cell 7.0 GiB measured by harness bench on NVIDIA H200" \
        in out, out + err
    bound, _ = prepare_run(load_suite(path), str(tmp_path / "results"))
    assert bound.spec.resources.gpu == 0.5  # 16 // (7 × 1.1)


def test_a_trial_is_encoded_once_and_decoded_to_the_same_trial(write_suite):
    """The runner encodes each trial into Tune's config (JSON values) and the trainable decodes it once: a trial of
    stacked seeds, with its runtime, store, parallelism, overrides and attempt, comes back equal, and Tune's param
    space of a wave decodes to the trials its grid names."""
    import json

    from harness.scheduling.trial import Parallel, TrialConfig
    from tests.helpers import tiny_cell

    cells = tuple(dataclasses.replace(tiny_cell(), seed=s) for s in (0, 1, 2))
    trial = TrialConfig(cells, Runtime(device="cpu", stack_peers=True), "s3://bucket/results", {"commit": "abc"},
                        Parallel(workers=2, cpu=4, gpu=1, max_failures=2), ("seeds=[0,1,2]",), attempt="a1")
    assert TrialConfig.decode(json.loads(json.dumps(trial.encode()))) == trial
    alone = TrialConfig.decode(trial.only([cells[2]]).encode())
    assert alone.cells == (cells[2],) and alone.parallel == trial.parallel
    space = TrialConfig.param_space([list(cells), [tiny_cell(method="ind")]], trial.runtime, trial.results,
                                    trial.code, trial.parallel, trial.overrides)
    decoded = [TrialConfig.decode({**space, "cell": cell}) for cell in space["cell"]["grid_search"]]
    assert [t.cells for t in decoded] == [cells, (tiny_cell(method="ind"),)]
