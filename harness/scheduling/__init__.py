"""Cells as Ray Tune trials: the runner (waves of stages, resume, resources, progress) and the
trainable that runs the engine inside a trial.

May import: harness.config, harness.suite, harness.training, harness.results, harness._compat.
"""
