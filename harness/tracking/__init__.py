"""Experiment trackers: every cell a run reports to W&B, MLflow, TensorBoard or a plug-in's tracker, through Ray
Tune's logger callbacks, tagged with its suite, hash, method, group, seed and code version (``trackers.py``: the
registry and the built-ins; ``cell_runs.py``: a Tune trial's cells as runs; one module per built-in callback, each
imported only where its tracker logs).

May import: harness.config, harness.registry.
"""
