"""Training one cell in one process: the contract between the engine and a method (``Method`` and its
registry, the only door to ``methods/``), the stages a method declares, the engine's loop, and what
a training step costs.

May import: harness.config, harness.data, harness.models, harness.results, harness.registry; ``methods`` only in
``training/method.py``'s registry loader.
"""
