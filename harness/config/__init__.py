"""What one cell is made of: the :class:`Cell` whose hash names its result everywhere, and the typed
recipe (optimizer, schedule, augmentation) with the papers' presets in ``recipes.yaml``.

May import: harness.registry.
"""
