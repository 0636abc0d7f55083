"""``--smoke``: any suite, scaled down so that it runs end to end on a CPU in minutes.

Every cell keeps its networks, method and hyper-parameters (except that a teacher trained in an earlier stage
uses the smoke recipe as well, and that early stops, warm-ups and ramp-ups end within it), only the suite's first seed is
run (a smoke run checks that every cell trains; its numbers mean nothing, so more seeds add only time), and
each cell trains 2 epochs in batches of 8 (learning rates scaled linearly from the paper's batch) on 20 images per
class (10 per class for testing); a dataset that is not on this machine is replaced by the embedded
Fashion-MNIST subset (with CIFAR-style augmentation, since ImageNet-style crops of 28×28 images mean
nothing).  Smoke cells have hashes of their own, and the report says in its title that it is a smoke run.  A smoke
cell whose loss term was zero on every step fails (``Runtime.require_every_term``): it exercised nothing of it.
"""
from __future__ import annotations

from dataclasses import replace

from harness.data.datasets import DatasetError, load_dataset
from harness.suite.spec import DatasetSpec, Suite

# Batches of 8: 50 steps in 2 epochs, enough for BatchNorm's running statistics to follow the weights.  With 14
# steps of 32, a smoke-trained ResNet-110 teacher's eval-mode features were ~1e8 (train mode ~0.05), and CC, VID and
# SemCKD students of it went NaN in their first step.
SMOKE_EPOCHS, SMOKE_TRAIN_PER_CLASS, SMOKE_TEST_PER_CLASS, SMOKE_BATCH = 2, 20, 10, 8
STAND_IN = "fashion_mnist_mini"
# hyper-parameters counted in epochs or images that must fit the smoke run: early stops (ESKD), earlier phases
# (FT's paraphraser), warm-ups and ramp-ups (TSB's 20 epochs without its KL terms, ONE's and FFL's 80-epoch
# ramp-ups: every loss term is on in the smoke run's last epoch), held-out images per class (KDCL-General's split)
SMOKE_CAPS = {"teacher_stop_epoch": SMOKE_EPOCHS - 1, "teacher_epochs": SMOKE_EPOCHS - 1,
              "kd_stop_epoch": SMOKE_EPOCHS - 1, "paraphraser_epochs": SMOKE_EPOCHS - 1,
              "warmup_epochs": SMOKE_EPOCHS - 1, "rampup_epochs": SMOKE_EPOCHS - 1,
              "val_per_class": SMOKE_TRAIN_PER_CLASS // 4}


def _available(dataset: dict, data_root: str | None) -> bool:
    """Whether the dataset is here (a smoke run never waits for a download: it trains on the stand-in instead)."""
    try:
        load_dataset({**dataset, "download": False, "train_per_class": 1, "test_per_class": 1}, data_root)
        return True
    except DatasetError:
        return False


def smoke_suite(suite: Suite, data_root: str | None = None) -> Suite:
    """A scaled-down copy of ``suite`` (see the module docstring); the original is left unchanged."""
    dataset = dict(suite.cells[0].dataset)
    stand_in = not _available(dataset, data_root)
    notes = [f"{SMOKE_EPOCHS} epochs in batches of {SMOKE_BATCH}", f"{SMOKE_TRAIN_PER_CLASS} training images per class",
             "1 seed"]
    if stand_in:
        notes.append(f"{STAND_IN} in place of {dataset['name']}")
        dataset = {"name": STAND_IN, "views": dataset.get("views", "shared")}
    dataset.update(train_per_class=SMOKE_TRAIN_PER_CLASS, test_per_class=SMOKE_TEST_PER_CLASS)

    cells = []
    for cell in (c for c in suite.cells if c.seed == suite.spec.seeds[0]):
        recipe = dict(cell.recipe, epochs=SMOKE_EPOCHS, warmup_epochs=0,
                      batch_size=min(cell.recipe["batch_size"], SMOKE_BATCH))
        if recipe["lr_scaling"] == "none":  # the paper's lr at batch 8 is 8-16 times the noise it was tuned for
            recipe.update(lr_scaling="linear", reference_batch_size=cell.recipe["batch_size"])
        if stand_in:
            recipe["augment"] = {"crop_padding": 2, "flip": True}
            recipe = _fill_augment(recipe)
        cells.append(replace(cell, dataset=dataset, recipe=recipe, hparams=smoke_hparams(cell.hparams),
                             suite=f"{suite.name}_smoke"))

    spec = suite.spec.model_copy(deep=True)
    spec.resources.cpu = 1  # a smoke trial is small; a suite's 4-8 CPUs per trial would not fit a laptop
    if spec.resources.replicas > 1:  # a batch of 8 split 8 ways would leave batch norm one image
        notes.append(f"1 worker in place of {spec.resources.workers} × {spec.resources.grad_accumulation}")
        spec.resources.workers = spec.resources.grad_accumulation = 1
    if not _has_gpu():  # a GPU suite scaled down runs on the CPU here, rather than waiting for a GPU forever
        spec.resources.gpu = 0
    spec.dataset = DatasetSpec.model_validate(dataset)
    spec.name = f"{suite.name}_smoke"
    spec.seeds = spec.seeds[:1]
    spec.title = f"SMOKE RUN ({', '.join(notes)}), not a reproduction — {suite.spec.title or suite.name}"
    return Suite(spec, suite.path, cells, overrides=suite.overrides)


def smoke_hparams(hparams: dict) -> dict:
    """Teachers of a smoke run train on the smoke recipe too; early stops, earlier phases, warm-ups and ramp-ups fall
    inside its 2 epochs (``SMOKE_CAPS``)."""
    out = dict(hparams)
    if out.get("teacher_recipe") is not None:
        out["teacher_recipe"] = None
    for key, cap in SMOKE_CAPS.items():
        if out.get(key) is not None:
            out[key] = min(out[key], cap)
    return out


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _fill_augment(recipe: dict) -> dict:
    from harness.config.recipe import Recipe

    return Recipe.model_validate(recipe).model_dump(mode="json")
