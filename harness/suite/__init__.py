"""The suite language: a YAML file validated all at once (every mistake on one line) and expanded into
cells, the plan of a run derived from them once (``plan``), their binding to the data found here (``binding``),
and its ``--smoke`` scale-down.

May import: harness.config, harness.costs, harness.data, harness.models, harness.papers, harness.results,
harness.tracking, harness.training, harness.registry.
"""
