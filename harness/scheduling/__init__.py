"""Cells as Ray Tune trials: the runner (the plan's waves, resume, resources, progress), the typed trial, the
trainable that runs the engine's loop inside a trial and the life of a cell's record.

May import: harness.config, harness.data, harness.suite, harness.training, harness.results, harness.registry,
harness._compat.
"""
