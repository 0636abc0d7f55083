"""What a cell costs, the one home of the cost model: the networks' parameters and multiply-adds (``networks``), the
GPU memory a training step needs (``memory``), whether a suite's cells fit the resources they ask for
(``capacity``), how many cells share a GPU under ``gpu: auto`` (``packing``), the GPU-hours and the measured or
assumed rate they are divided by (``rates``), and ``harness bench``, which measures speed and memory on the very
loop ``harness run`` trains with (``bench``).  A trial's own step cost is counted by the trainer
(``harness.training.step_cost``) and read back from its record here.

May import: harness.config, harness.data, harness.models, harness.results, harness.training, harness.registry.
"""
