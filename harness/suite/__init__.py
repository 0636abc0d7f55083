"""The suite language: a YAML file validated all at once (every mistake on one line) and expanded into
cells, and its ``--smoke`` scale-down.

May import: harness.config, harness.data, harness.models, harness.papers, harness.training, harness.registry.
"""
