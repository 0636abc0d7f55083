"""The standard (DataLoader + torchvision) and fast (batched tensor) pipelines augment alike."""
import torch

from harness.config.recipe import AugmentSpec
from harness.data.batches import Normalize, TrainBatches, cutout
from harness.data.pipelines import Cutout, ImageSet, StandardBatches, fast_path_problems, image_transforms

MEAN, STD = (0.5,), (0.25,)


def pattern(n=1, size=8):
    """A gradient image repeated n times: every crop offset and flip gives a distinguishable result."""
    base = (torch.arange(size)[None, :] * 16 + torch.arange(size)[:, None] * 2).to(torch.uint8)
    return base.view(1, 1, size, size).repeat(n, 1, 1, 1)


def mean_view(batches, epochs=3) -> torch.Tensor:
    views = [b.x for e in range(epochs) for b in batches.epoch(e)]
    return torch.cat(views).mean(0)


def test_fast_and_standard_augmentation_statistics_agree():
    images, labels = pattern(600), torch.zeros(600, dtype=torch.long)
    augment = AugmentSpec(crop_padding=2, flip=True, cutout=4)
    fast = TrainBatches(images, labels, 100, Normalize(MEAN, STD, "cpu", False), seed=0,
                        crop_padding=2, flip=True, cutout=4)
    tf = image_transforms(augment, MEAN, STD, (8, 8), train=True)
    standard = StandardBatches(ImageSet(images, labels, tf), 100, seed=0, device=torch.device("cpu"),
                               channels_last=False)
    a, b = mean_view(fast), mean_view(standard)
    assert a.shape == b.shape == (1, 8, 8)
    assert (a - b).abs().max() < 0.25  # per-pixel means over 1,800 draws (values span about ±2)
    assert abs(float(a.mean() - b.mean())) < 0.05
    raw = Normalize(MEAN, STD, "cpu", False)(images[:1])[0]
    assert (a - raw).abs().max() > 0.3  # and augmentation did change the images


def test_cutout_holes_have_the_same_size_distribution():
    torch.manual_seed(0)
    ones = torch.ones(2000, 1, 16, 16)
    fast = cutout(ones, 8, torch.Generator().manual_seed(0))
    slow = torch.stack([Cutout(8)(img) for img in ones])
    zero_fast, zero_slow = (fast == 0).float().mean(), (slow == 0).float().mean()
    assert abs(float(zero_fast - zero_slow)) < 0.01
    assert 0.15 < float(zero_fast) < 0.25  # a 8x8 hole, clipped at borders, in a 16x16 image: ~ 0.19


def test_standard_views_labels_indices():
    images, labels = pattern(30), torch.arange(30) % 3
    tf = image_transforms(AugmentSpec(crop_padding=2), MEAN, STD, (8, 8), train=True)
    batches = StandardBatches(ImageSet(images, labels, tf, views=2), 8, seed=1, device=torch.device("cpu"),
                              channels_last=False)
    seen = []
    for batch in batches.epoch(0):
        assert torch.equal(batch.y, labels[batch.index]) and len(batch.views) == 2
        seen += batch.index.tolist()
    assert sorted(seen) == list(range(30))
    again = [b.index.tolist() for b in batches.epoch(0)]
    first = [b.index.tolist() for b in StandardBatches(ImageSet(images, labels, tf, views=2), 8, seed=1,
                                                       device=torch.device("cpu"), channels_last=False).epoch(0)]
    assert again == first
    x1 = [b.x for b in batches.epoch(0)]
    x2 = [b.x for b in batches.epoch(0)]
    assert all(torch.equal(a, b) for a, b in zip(x1, x2))  # augmentation is seeded by (seed, epoch) too


def test_imagenet_transforms_and_fast_path_limits():
    augment = AugmentSpec(random_resized_crop=True, train_size=16, crop_padding=0, color_jitter=0.4, lighting=0.1,
                          test_resize=20, test_crop=16)
    assert set(fast_path_problems(augment)) == {"random_resized_crop", "train_size", "color_jitter", "lighting",
                                                "test_resize", "test_crop"}
    assert fast_path_problems(AugmentSpec(cutout=16)) == []
    from PIL import Image

    img = Image.new("RGB", (40, 30), (120, 60, 30))
    train = image_transforms(augment, (0.5,) * 3, (0.25,) * 3, (16, 16), train=True)(img)
    test = image_transforms(augment, (0.5,) * 3, (0.25,) * 3, (16, 16), train=False)(img)
    assert train.shape == (3, 16, 16) and test.shape == (3, 16, 16)


def test_standard_batches_do_not_depend_on_the_number_of_workers():
    """Each image's augmentation comes from its own seed drawn in the main process: 0 workers and 2 persistent
    workers give the same batches, epoch after epoch (and the global generator is left as it was)."""
    torch.manual_seed(0)
    images, labels = torch.randint(0, 256, (24, 3, 8, 8), dtype=torch.uint8), torch.arange(24) % 3
    spec = AugmentSpec(crop_padding=2, flip=True, color_jitter=0.4, cutout=3)
    tf = image_transforms(spec, (0.5,) * 3, (0.25,) * 3, (8, 8), train=True)

    def epochs(workers):
        batches = StandardBatches(ImageSet(images, labels, tf, views=2), 8, seed=3, device=torch.device("cpu"),
                                  channels_last=False, workers=workers)
        return [[(b.views[0].clone(), b.views[1].clone(), b.index.clone()) for b in batches.epoch(e)]
                for e in range(2)]

    state = torch.get_rng_state()
    alone = epochs(0)
    assert torch.equal(torch.get_rng_state(), state)
    pooled = epochs(2)
    for a_epoch, b_epoch in zip(alone, pooled):
        for a, b in zip(a_epoch, b_epoch):
            assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(alone[0][0][0], alone[1][0][0])  # epochs differ
    assert not torch.equal(alone[0][0][0], alone[0][0][1])  # the two views differ
