"""The standard (DataLoader + torchvision) and fast (batched tensor) pipelines augment alike."""
import torch

from harness.config.recipe import AugmentSpec
from harness.data.batches import Normalize, TrainBatches, cutout
from harness.data.pipelines import ImageSet, ImageTransform, StandardBatches, fast_path_problems

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
    tf = ImageTransform(augment, MEAN, STD, (8, 8), train=True)
    standard = StandardBatches(ImageSet(images, labels, tf), 100, seed=0, device=torch.device("cpu"),
                               channels_last=False)
    a, b = mean_view(fast), mean_view(standard)
    assert a.shape == b.shape == (1, 8, 8)
    assert (a - b).abs().max() < 0.25  # per-pixel means over 1,800 draws (values span about ±2)
    assert abs(float(a.mean() - b.mean())) < 0.05
    raw = Normalize(MEAN, STD, "cpu", False)(images[:1])[0]
    assert (a - raw).abs().max() > 0.3  # and augmentation did change the images


def reference_cutout(image: torch.Tensor, size: int) -> torch.Tensor:
    """DeVries & Taylor's Cutout, written independently: one square of zeros centred uniformly, clipped."""
    _, h, w = image.shape
    cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
    out = image.clone()
    out[:, max(cy - size // 2, 0): cy - size // 2 + size, max(cx - size // 2, 0): cx - size // 2 + size] = 0
    return out


def test_cutout_holes_have_the_same_size_distribution():
    torch.manual_seed(0)
    ones = torch.ones(2000, 1, 16, 16)
    fast = cutout(ones, 8, torch.Generator().manual_seed(0))
    slow = torch.stack([reference_cutout(img, 8) for img in ones])
    zero_fast, zero_slow = (fast == 0).float().mean(), (slow == 0).float().mean()
    assert abs(float(zero_fast - zero_slow)) < 0.01
    assert 0.15 < float(zero_fast) < 0.25  # a 8x8 hole, clipped at borders, in a 16x16 image: ~ 0.19


def test_uint8_images_finished_on_the_device_equal_the_per_image_torchvision_chain():
    """The standard path sends uint8 images and their draws to the device and finishes them there; the numbers
    are bit for bit those of the per-image chain ToTensor → lighting → Normalize → Cutout that it replaced (written
    here with torchvision's own ToTensor and Normalize), for RGB and grey images, training and test."""
    from torchvision import transforms
    from harness.data.pipelines import _EIGVAL, _EIGVEC

    def chain(spec, mean, std, train):
        host = ImageTransform(spec, mean, std, (12, 12), train)

        def one(img):
            x = transforms.ToTensor()(transforms.Compose(host.pil.transforms[:-1])(img))  # PIL steps, then float
            if train and spec.lighting:
                shift = _EIGVEC @ (torch.randn(3) * spec.lighting * _EIGVAL)
                x = x + shift.view(3, 1, 1) if x.shape[0] == 3 else x
            x = transforms.Normalize(mean, std)(x)
            return reference_cutout(x, spec.cutout) if train and spec.cutout else x
        return one

    torch.manual_seed(0)
    for chans in (3, 1):
        images = torch.randint(0, 256, (9, chans, 12, 12), dtype=torch.uint8)
        mean, std = (0.5, 0.4, 0.3)[:chans], (0.25, 0.2, 0.3)[:chans]
        for spec in (AugmentSpec(crop_padding=2, flip=True, color_jitter=0.4, lighting=0.1, cutout=5),
                     AugmentSpec(random_resized_crop=True, train_size=8, lighting=0.1),
                     AugmentSpec(test_resize=10, test_crop=8)):
            for train in (True, False):
                tf = ImageTransform(spec, mean, std, (12, 12), train)
                batches = StandardBatches(ImageSet(images, torch.zeros(9), tf), 4, seed=3,
                                          device=torch.device("cpu"), channels_last=False)
                got = torch.cat([b.x for b in (batches.epoch(0) if train else batches.evaluate())])
                order = torch.cat([b.index for b in (batches.epoch(0) if train else batches.evaluate())])
                pairs = dict(iter(batches._loader(train)[0].order))
                reference = chain(spec, mean, std, train)
                expected = []
                for i in order.tolist():
                    torch.random.default_generator.manual_seed(pairs[i])
                    expected.append(reference(ImageSet(images, torch.zeros(9), tf).image(i)))
                assert got.dtype == torch.float32 and torch.equal(got, torch.stack(expected)), (chans, spec, train)


def test_standard_views_labels_indices():
    images, labels = pattern(30), torch.arange(30) % 3
    tf = ImageTransform(AugmentSpec(crop_padding=2), MEAN, STD, (8, 8), train=True)
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
    train = ImageTransform(augment, (0.5,) * 3, (0.25,) * 3, (16, 16), train=True)(img)
    test = ImageTransform(augment, (0.5,) * 3, (0.25,) * 3, (16, 16), train=False)(img)
    (train, shift, centre), (test, no_shift, no_centre) = train, test
    assert train.shape == (3, 16, 16) and test.shape == (3, 16, 16) and train.dtype == test.dtype == torch.uint8
    assert shift.shape == (3,) and centre is None and no_shift is None and no_centre is None


def test_standard_batches_do_not_depend_on_the_number_of_workers():
    """Each image's augmentation comes from its own seed drawn in the main process: 0 workers and 2 persistent
    workers give the same batches, epoch after epoch (and the global generator is left as it was)."""
    torch.manual_seed(0)
    images, labels = torch.randint(0, 256, (24, 3, 8, 8), dtype=torch.uint8), torch.arange(24) % 3
    spec = AugmentSpec(crop_padding=2, flip=True, color_jitter=0.4, cutout=3)
    tf = ImageTransform(spec, (0.5,) * 3, (0.25,) * 3, (8, 8), train=True)

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


def test_a_test_resize_of_two_sides_resizes_the_whole_image_before_the_centre_crop():
    """KDCL and TSB: test images "resized to 256×256" then centre-cropped to 224 (test_resize: [256, 256]); a number
    resizes the shorter side (torchvision's reference).  On a 300 × 500 image the two differ."""
    import numpy as np
    from PIL import Image
    from torchvision import transforms

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 500, 3), dtype=np.uint8))
    mean_std = ((0.5,) * 3, (0.25,) * 3)
    square = ImageTransform(AugmentSpec(test_resize=(256, 256), test_crop=224), *mean_std, (224, 224), train=False)
    shorter = ImageTransform(AugmentSpec(test_resize=256, test_crop=224), *mean_std, (224, 224), train=False)
    expected = transforms.PILToTensor()(transforms.CenterCrop(224)(image.resize((256, 256), Image.BILINEAR)))
    got = square(image)[0]
    assert got.shape == (3, 224, 224)
    assert (got.int() - expected.int()).abs().max() <= 1  # PIL's bilinear resize, as torchvision's on a PIL image
    assert (shorter(image)[0].int() - expected.int()).abs().float().mean() > 10
    assert AugmentSpec.model_validate({"test_resize": [256, 256]}).model_dump(mode="json")["test_resize"] == [256, 256]
