"""Each cell's input pipeline built and drawn from once, before Ray starts.

A dataset and a recipe that do not go together (image files of different sizes without a crop size, a pipeline
the data cannot take, an image file that does not decode) would otherwise fail inside every trial, after a queue
and a cluster start.  Here each distinct (dataset, augmentation, held-out split, views, pipeline) builds its
inputs on the CPU at a batch of at most 8 and draws one training and one test batch: the same code paths as the
trial, at a few images' cost.  And each teacher from elsewhere (an ``https://`` URL, a timm or Hugging Face hub
name) is fetched and loaded here, once, on the driver: its trials find it in the cache (they run with the hub
offline), and a wrong hash, architecture or number of classes is one line before any trial starts."""
from __future__ import annotations

import json
from typing import Callable

import torch

from harness.config.recipe import Recipe
from harness.data.datasets import ImageData
from harness.data.inputs import build_inputs
from harness.suite.schema import Suite
from harness.training.method import load_methods

PROBE_BATCH = 8


def fetch_teachers(suite: Suite, data_of: Callable[[dict], ImageData], log=print) -> list[str]:
    """Fetch and load every stage checkpoint that is a URL or a hub name; one line per one that fails."""
    from harness.results.weights import StageError, is_hub, is_url, load_networks

    lines, seen = [], set()
    for cell in suite.plan.everything:
        for stage in suite.plan.stages[cell.hash].values():
            if not stage.checkpoint or not (is_url(stage.checkpoint) or is_hub(stage.checkpoint)):
                continue
            data = data_of(cell.dataset)
            key = (stage.checkpoint, stage.models, data.num_classes, data.in_chans)
            if key in seen:
                continue
            seen.add(key)
            try:
                _, provenance = load_networks(stage.checkpoint, stage.models, stage.sha256, data.num_classes,
                                              data.in_chans)
            except StageError as e:
                lines.append(f"{suite.path}: {cell.describe()}: {e}")
                continue
            log(f"teacher {stage.checkpoint}: ready (SHA-256 {str(provenance['sha256'])[:16]}…)")
    return lines


def input_errors(suite: Suite, data_of: Callable[[dict], ImageData]) -> list[str]:
    """One line per combination whose first batch cannot be drawn; ``data_of`` loads a dataset entry (cached)."""
    methods = load_methods()
    tried: dict[str, str | None] = {}
    lines = []
    for cell in suite.plan.everything:
        method = methods.get(cell.method)
        hp = method.HParams.model_validate(cell.hparams)
        views = method.views_of(hp, cell)
        held_out = method.held_out_per_class(hp)
        recipe = {**cell.recipe, "batch_size": min(cell.recipe["batch_size"], PROBE_BATCH)}
        key = json.dumps([cell.dataset, recipe.get("augment"), held_out, views], sort_keys=True)
        if key in tried:
            continue
        tried[key] = problem = _first_batches(data_of(cell.dataset), Recipe.model_validate(recipe),
                                              cell.dataset.get("pipeline", "auto"), views, held_out)
        if problem:
            lines.append(f"{suite.path}: {cell.describe()} cannot read its first batch: {problem}")
    return lines


def _first_batches(data: ImageData, recipe: Recipe, pipeline: str, views: int, held_out: int) -> str | None:
    try:
        inputs = build_inputs(data, recipe, 0, pipeline, views=views, held_out_per_class=held_out,
                              device=torch.device("cpu"), channels_last=False, eval_batch_size=PROBE_BATCH, workers=0)
        next(iter(inputs.train.epoch(0)))
        next(iter(inputs.test()))
    except StopIteration:
        return "it has no image to train or test on"
    except Exception as e:  # noqa: BLE001 — whatever a trial would die of, said once here
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return text[:300]
    return None
