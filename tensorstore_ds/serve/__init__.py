"""PyTorch: a store served as a Dataset, from one shared copy in RAM or paged from disk.

``dataset`` picks the mode within a ``budget`` and gathers batches; ``shm``
holds RAM-mode copies in shared memory; ``ring`` and ``batch`` hand batches to
the training loop without copies; ``multi`` serves several stores as one;
``sampler`` orders samples chunk by chunk across ranks.

Rests on :mod:`tensorstore_ds.store` and :mod:`tensorstore_ds.format`; never
imports :mod:`tensorstore_ds.conversion`.
"""
