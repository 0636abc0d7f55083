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
    from tests.test_engine import tiny_cell

    dml = load_methods().get("dml")
    monkeypatch.setattr(dml, "held_out_per_class", classmethod(lambda cls, hp: 2))
    trainer = Trainer(tiny_cell())
    assert trainer.method.ctx.num_train == 40 and len(trainer.train_batches.y) == 40  # 6 per class - 2
    held = torch.cat([b.y for b in trainer.method.ctx.validation()])
    assert torch.bincount(held).tolist() == [2] * 10
