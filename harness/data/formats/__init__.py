"""The on-disk formats of the datasets, one module each; importing one registers its datasets in
:data:`harness.data.datasets.DATASETS`."""
