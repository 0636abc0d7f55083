"""Images in, batches out: the dataset loaders (real on-disk formats, the embedded Fashion-MNIST subset),
the batch type every method receives, the fast (tensor) and standard (DataLoader) input pipelines, and
the one function that builds a cell's inputs from its recipe.

May import: harness.config, harness.registry, harness.fetching.
"""
