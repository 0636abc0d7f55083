"""Batched augmentation: crops are shifted windows of the zero-padded image, flips mirror, order is seeded."""
import torch

from harness.data.batches import Normalize, TrainBatches, random_crop_flip


def test_crop_is_a_window_of_the_padded_image():
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4) + 1
    out = random_crop_flip(images, padding=2, flip=False, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, dy:dy + 4, dx:dx + 4] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_flip_mirrors_about_half():
    images = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).repeat(400, 1, 1, 1)
    out = random_crop_flip(images, padding=0, flip=True, generator=torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, images[0].flip(2)) for o in out])
    unchanged = torch.tensor([torch.equal(o, images[0]) for o in out])
    assert bool((flipped | unchanged).all()) and 150 < int(flipped.sum()) < 250


def make_batches(views=1):
    x = torch.randint(0, 255, (50, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(50) % 10
    return TrainBatches(x, y, 16, Normalize((0.5,), (0.25,), "cpu", False), seed=3, crop_padding=2, flip=True,
                        views=views)


def test_order_is_seeded_per_epoch_and_covers_everything():
    batches = make_batches()
    e0 = torch.cat([b.index for b in batches.epoch(0)])
    assert sorted(e0.tolist()) == list(range(50))
    assert torch.equal(e0, torch.cat([b.index for b in make_batches().epoch(0)]))
    assert not torch.equal(e0, torch.cat([b.index for b in batches.epoch(1)]))
    assert len(batches) == 4  # 16 + 16 + 16 + 2


def test_labels_follow_indices_and_views_differ():
    batches = make_batches(views=2)
    for batch in batches.epoch(0):
        assert torch.equal(batch.y, batches.y[batch.index])
        assert len(batch.views) == 2 and not torch.equal(batch.view(0), batch.view(1))
        assert torch.equal(batch.view(2), batch.view(0))


def test_normalize_uses_dataset_statistics():
    norm = Normalize((0.5,), (0.25,), "cpu", False)
    out = norm(torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2))
    assert torch.allclose(out.flatten(), torch.tensor([-2.0, 2.0]))


def test_validation_split_is_balanced_seeded_and_disjoint():
    from harness.data.batches import balanced_split

    labels = torch.arange(200) % 10
    kept, held = balanced_split(labels, 5, seed=0)
    assert torch.bincount(labels[held]).tolist() == [5] * 10
    assert len(set(kept.tolist()) & set(held.tolist())) == 0 and len(kept) + len(held) == 200
    assert torch.equal(held, balanced_split(labels, 5, seed=0)[1])
    assert not torch.equal(held, balanced_split(labels, 5, seed=1)[1])


def test_engine_holds_out_what_a_method_asks_for(monkeypatch):
    from harness.training.engine import Trainer
    from harness.training.method import load_methods
    from tests.helpers import tiny_cell

    dml = load_methods().get("dml")
    monkeypatch.setattr(dml, "held_out_per_class", classmethod(lambda cls, hp: 2))
    trainer = Trainer(tiny_cell())
    assert trainer.method.ctx.num_train == 40 and len(trainer.train_batches.y) == 40  # 6 per class - 2
    held = torch.cat([b.y for b in trainer.method.ctx.validation()])
    assert torch.bincount(held).tolist() == [2] * 10


def test_an_epoch_drawn_up_front_is_the_batch_by_batch_stream():
    """The fast path draws an epoch's random numbers before its first batch (one transfer to a GPU, no host sync
    per batch); the batches are exactly those of drawing batch by batch, view by view (crop, flip, Cutout), so
    results from before the change repeat bit for bit."""
    from harness.data.batches import cutout, epoch_generator

    torch.manual_seed(0)
    x, y = torch.randint(0, 256, (70, 3, 12, 12), dtype=torch.uint8), torch.arange(70) % 7
    normalize = Normalize((0.5,) * 3, (0.2,) * 3, torch.device("cpu"), False)
    for views, size in [(1, 0), (2, 4)]:
        batches = TrainBatches(x, y, 16, normalize, seed=5, crop_padding=2, flip=True, views=views, cutout=size)
        for epoch in range(2):
            generator = epoch_generator(5, epoch)
            order = torch.randperm(70, generator=generator)
            got = list(batches.epoch(epoch))
            assert len(got) == 5  # 4 × 16 and a last batch of 6
            for b, start in zip(got, range(0, 70, 16)):
                index = order[start: start + 16]
                assert torch.equal(b.index, index) and torch.equal(b.y, y[index])
                for view in b.views:
                    expected = normalize(random_crop_flip(x[index], 2, True, generator))
                    expected = cutout(expected, size, generator) if size else expected
                    assert torch.equal(view, expected)
