"""What a finished trial leaves behind: the result store keyed by cell hash (records, checkpoints), the
weights files of stage cells, and the provenance (code, packages, hardware) recorded with each.

May import: harness.config, harness.models, harness.fetching, harness.registry.
"""
