"""Cells as Ray Tune trials: the runner (waves of stages, resume, resources, progress), the trainable that runs
the engine inside a trial, and the binding of a suite's cells to the data they will train on.

May import: harness.config, harness.data, harness.suite, harness.training, harness.results, harness._compat.
"""
