"""Building blocks that several methods share (loss functions, the offline teacher-student base, the online
feature base, contrastive memory banks, factor-transfer modules); no method is registered here.

May import: harness.config, harness.data, harness.models, harness.training, harness.results.
"""
